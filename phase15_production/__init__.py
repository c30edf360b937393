"""Production agentic infrastructure."""

TITLE = "Production agentic infrastructure"
EXERCISES: tuple[str, ...] = (
    "phase15_production.tracing",
    "phase15_production.cost_model",
    "phase15_production.contention",
    "phase15_production.resilience",
    "phase15_production.injection",
)
# `lab traces [RUN_ID]`: a run's spans as a tree (lab.registry.phase_commands wires it)
COMMANDS = {"traces": "phase15_production.trace_view:cli"}
