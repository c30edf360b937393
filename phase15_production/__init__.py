"""Production agentic infrastructure."""

TITLE = "Production agentic infrastructure"
EXERCISES: tuple[str, ...] = (
    "phase15_production.tracing",
    "phase15_production.cost_model",
    "phase15_production.contention",
    "phase15_production.resilience",
    "phase15_production.injection",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase15_production.telemetry": "configure_tracing, run_span, TracedLLM: OpenTelemetry spans the capstone's jobs are traced with",
    "phase15_production.resilient_calls": "ResilientLLM: retry + circuit breaker + provider fallback, what the capstone's --fallback runs behind",
    "phase15_production.state": "run_transaction: one transaction re-run on serialization failure, the job store's writes",
    "phase15_production.defence": "Defence, contains_canary: the prompt-injection defence wired into the capstone",
    "phase15_production.attack_set": "load_attacks: the attack set the capstone plants in its corpus",
    "phase15_production.adversary": "ObedientAdversary: the labelled worst-case model the capstone's injection check runs",
    "phase15_production.injection": "stratified: how lesson 15.5 samples attacks, reused so Phase 16 samples the same way",
}
# `lab traces [RUN_ID]`: a run's spans as a tree (lab.registry.phase_commands wires it)
COMMANDS = {"traces": "phase15_production.trace_view:cli"}
