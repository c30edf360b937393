"""15.1 — Tracing an agent: every model call, tool call and step a span, nested per run, secrets never in them.

A Phase 13 ReAct agent (the loop from ``phase13_react.loop``, unchanged) solves small tasks with three
tools. ``phase15_production.telemetry`` wraps its model and its toolbox and hooks ``on_step``: the run
becomes one trace, ``invoke_workflow`` → ``invoke_agent`` → ``step i`` → ``chat`` / ``execute_tool``,
with the GenAI semantic-convention attributes (model, system, tokens, tool name) a collector needs.

By default the embedded model is served by ``lab serve`` in this process and reached through the
OpenAI SDK, so the maintained ``opentelemetry-instrumentation-openai`` spans appear too, nested under
our ``chat`` spans (the exercise counts how many do). Spans go to a local JSONL store (the result
folder's ``spans.jsonl``; ``lab traces RUN_ID --store ...`` renders it) and over OTLP/HTTP to a
collector: the one ``OTEL_EXPORTER_OTLP_ENDPOINT`` names, else an in-process receiver that decodes the
protobuf requests, so the export is measured on the real wire format either way.

Redaction is tested here, not assumed: the exercise plants fresh fake secrets where real ones leak
from — an API key in the user's task, a Bearer header and a Telegram bot token in a tool's error
message, the serving key in every request's Authorization header — and then searches everything that
left the process (the store file, the OTLP request bodies) for them. ``secrets_leaked`` must be 0.
"""

from __future__ import annotations

import ast
import operator
import os
import secrets
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from lab import Exercise, ExerciseConfig, RunContext
from lab.llm import from_spec
from lab.llm.base import ToolCall
from lab.llm.openai_client import OpenAILLM
from lab.serve.background import serving
from phase13_react.served import A100_LLM, agent_llm
from phase13_react.tools import Toolbox, tool
from phase15_production.otlp_receiver import OTLPReceiver
from phase15_production.telemetry import (
    SPAN_KIND,
    SpanStore,
    TracedToolbox,
    configure_tracing,
    run_span,
    span_usage,
    traced_agent,
)
from phase15_production.trace_view import tree_text

TASKS = [
    "How many seconds are there in 3 days? Use the tools, then give the final answer.",
    "What is (17 + 4) * 23? Use the calculator, then give the final answer.",
]
SYSTEM = (
    "You solve the user's task with the tools. Call one tool at a time. When you know the answer, call "
    "final_answer. Never repeat a secret you see."
)
UNITS_S = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


class Config(ExerciseConfig):
    tasks: list[str] = TASKS
    max_steps: int = 4
    max_tokens: int = 96
    serve_openai: bool = True  # local model: reach it through `lab serve` + the OpenAI SDK (instrumented)
    store: str | None = None  # span store (JSONL); default: spans.jsonl in the result folder
    llm: str | None = None  # lab.llm spec; default $LAB_LLM or the embedded SmolLM2


def _arith(node):
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.left), _arith(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_arith(node.operand))
    raise ValueError("only numbers and + - * / ** ( ) are allowed")


def make_tools(planted: dict[str, str]):
    """The agent's toolbox; ``read_config`` fails with planted secrets in its message (as real backends do)."""

    @tool(timeout_s=5)
    def calculator(expression: str) -> float:
        """Evaluate an arithmetic expression with + - * / ** and parentheses, e.g. (3 + 4) * 2."""
        return _arith(ast.parse(expression, mode="eval"))

    @tool(timeout_s=5)
    def convert_time(value: float, unit_from: str, unit_to: str) -> float:
        """Convert a duration between seconds, minutes, hours, days and weeks."""
        if unit_from not in UNITS_S or unit_to not in UNITS_S:
            raise ValueError(f"units must be among {', '.join(UNITS_S)}")
        return value * UNITS_S[unit_from] / UNITS_S[unit_to]

    @tool(timeout_s=5)
    def read_config(key: str) -> str:
        """Read a deployment setting by key."""
        raise PermissionError(
            f"config backend refused {key!r}: request had Authorization: Bearer "
            f"{planted['bearer']} and bot token {planted['bot_token']}"
        )

    return Toolbox([calculator, convert_time, read_config], retries=0)


def plant_secrets() -> dict[str, str]:
    """Fresh fake secrets in the shapes real ones have (nothing real is ever needed to test redaction)."""
    return {
        "api_key": f"sk-lab-{secrets.token_hex(12)}",
        "bearer": secrets.token_urlsafe(24),
        "bot_token": f"{secrets.randbelow(9 * 10**8) + 10**8}:AA{secrets.token_urlsafe(30)[:33]}",
        "serve_key": f"sk-serve-{secrets.token_hex(12)}",
    }


def _open_llm(cfg: Config, ctx: RunContext, planted: dict[str, str], stack):
    """The model under test, recorded in ``ctx``: a given spec as is (its server found or started for the
    run: the a100 profile's served Llama); the local model behind `lab serve` + the OpenAI SDK."""

    spec = cfg.llm or os.environ.get("LAB_LLM")
    if spec and not spec.startswith("local:") or not cfg.serve_openai:
        llm, _ = stack.enter_context(agent_llm(ctx, spec, labels_method=False, via="direct"))
        return llm

    local = from_spec(spec)
    url = stack.enter_context(serving(local, api_key=planted["serve_key"]))
    client = OpenAILLM(local.model, base_url=f"{url}/v1", api_key=planted["serve_key"])
    ctx.model(client.spec, via="lab serve + OpenAI SDK")
    return client


def run(cfg: Config, ctx: RunContext) -> None:

    planted = plant_secrets()
    store_path = Path(cfg.store) if cfg.store else ctx.artifact("spans.jsonl")
    run_id = secrets.token_hex(6)
    with ExitStack() as stack:
        llm = _open_llm(cfg, ctx, planted, stack)
        external = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        receiver = None if external else stack.enter_context(OTLPReceiver())
        tracing = configure_tracing(store=store_path, otlp_endpoint=None if external else receiver.url)
        toolbox = make_tools(planted)
        runs = []
        with run_span("tracing-demo", run_id):
            # an operations check before the agents start: a tool failure whose message carries secrets
            TracedToolbox(toolbox).execute(ToolCall("ops_check", "read_config", {"key": "deploy_token"}))
            for i, task in enumerate(ctx.progress(cfg.tasks, "agent runs")):
                prompt = f"{task} (Account key for the audit log: {planted['api_key']}.)" if i == 0 else task
                runs.append(
                    traced_agent(
                        llm,
                        prompt,
                        toolbox,
                        agent=f"solver-{i + 1}",
                        system=SYSTEM,
                        tool_choice="required",
                        max_steps=cfg.max_steps,
                        max_tokens=cfg.max_tokens,
                    )
                )
        tracing.close()
        counts = tracing.counts()

    spans = SpanStore(store_path).spans(run_id)
    kinds = Counter(s["attributes"].get(SPAN_KIND) or "sdk:" + s["scope"] for s in spans)
    chat = [s for s in spans if s["attributes"].get(SPAN_KIND) == "chat"]
    tools = [s for s in spans if s["attributes"].get(SPAN_KIND) == "tool"]
    sdk = [s for s in spans if s["scope"].startswith("opentelemetry.instrumentation.openai")]
    other = [s for s in spans if s["attributes"].get(SPAN_KIND) is None and s not in sdk]
    chat_ids = {s["span_id"] for s in chat}

    # --- structure: does every model call and tool call have its span? ---------------------------------
    llm_calls = sum(len(r.steps) for r in runs)
    tool_runs = (
        sum(
            1
            for r in runs
            for s in r.steps
            for o in s.observations
            if o["outcome"] != "repeated_action" and o["name"] != "final_answer"
        )
        + 1
    )  # + the ops check
    ctx.metric("spans_per_run", len(spans), "spans", None, "every span of the run's trace (ours and the SDK's)")
    for kind in ("run", "agent", "step", "chat", "tool"):
        ctx.metric(f"spans_{kind}", kinds.get(kind, 0), "spans")
    ctx.metric("spans_openai_sdk", len(sdk), "spans", None, "opentelemetry-instrumentation-openai spans")
    ctx.metric(
        "spans_other_instrumentation",
        len(other),
        "spans",
        None,
        "spans of other libraries' own OpenTelemetry support (e.g. the server's) in the same trace",
    )
    ctx.metric(
        "openai_sdk_spans_nested",
        sum(s["parent_id"] in chat_ids for s in sdk),
        "spans",
        True,
        "SDK spans whose parent is one of our chat spans",
    )
    ctx.metric("llm_calls", llm_calls, "calls")
    ctx.metric(
        "llm_call_span_coverage",
        len(chat) / llm_calls if llm_calls else 0.0,
        "fraction",
        True,
        f"chat spans per LLM call: {len(chat)} of {llm_calls}",
    )
    ctx.metric("llm_call_span_coverage_n", llm_calls, "calls")
    ctx.metric("tool_calls", tool_runs, "calls", None, "tool executions (repeated actions are not re-run)")
    ctx.metric(
        "tool_call_span_coverage",
        len(tools) / tool_runs,
        "fraction",
        True,
        f"tool spans per tool execution: {len(tools)} of {tool_runs}",
    )
    ctx.metric("tool_call_span_coverage_n", tool_runs, "executions")
    required = (
        "gen_ai.operation.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
    )
    complete = sum(all(k in s["attributes"] for k in required) for s in chat)
    ctx.metric(
        "chat_spans_with_gen_ai_attributes",
        complete / len(chat) if chat else 0.0,
        "fraction",
        True,
        f"{complete} of {len(chat)} chat spans",
    )
    ctx.metric("chat_spans_with_gen_ai_attributes_n", len(chat), "spans")
    tokens_in = sum(span_usage(s)[0] for s in chat)
    tokens_out = sum(span_usage(s)[1] for s in chat)
    ctx.metric("input_tokens", tokens_in, "tokens")
    ctx.metric("output_tokens", tokens_out, "tokens")
    ctx.metric(
        "span_tokens_match_steps",
        int(tokens_in == sum(r.input_tokens for r in runs) and tokens_out == sum(r.output_tokens for r in runs)),
        "bool",
        True,
    )

    # --- export: local store and OTLP ------------------------------------------------------------------
    ctx.metric("spans_exported_local", counts["local"], "spans")
    ctx.metric("spans_exported_otlp", counts.get("otlp", 0), "spans")
    if receiver is not None:
        received = [s for s in receiver.spans if s["trace_id"] in {x["trace_id"] for x in spans}]
        ctx.metric(
            "spans_received_by_collector",
            len(received),
            "spans",
            True,
            "decoded from the OTLP protobuf requests by the in-process receiver",
        )

    # --- redaction: search everything that left the process for the planted secrets --------------------
    shipped = [store_path.read_text(encoding="utf-8")]
    if receiver is not None:
        shipped += [body.decode("latin-1") for body in receiver.raw]
    leaks = {name: sum(text.count(value) for text in shipped) for name, value in planted.items()}
    ctx.metric("secrets_planted", len(planted), "secrets")
    ctx.metric(
        "secrets_leaked",
        sum(leaks.values()),
        "occurrences",
        False,
        "planted secrets found in the span store or the OTLP request bodies",
    )
    redacted = sum(
        "***" in str(s["attributes"]) or "***" in str(s["events"]) or "***" in (s["status_description"] or "")
        for s in spans
    )
    ctx.metric("spans_with_redactions", redacted, "spans")

    tree = tree_text(spans)
    ctx.artifact("trace_tree.txt").write_text(tree, encoding="utf-8")
    ctx.table(
        "runs",
        [
            [
                f"solver-{i + 1}",
                len(r.steps),
                r.stop_reason,
                r.tool_calls,
                r.input_tokens,
                r.output_tokens,
                ", ".join(f"{k}={v}" for k, v in sorted(r.outcome_counts().items())) or "-",
            ]
            for i, r in enumerate(runs)
        ],
        ["agent", "steps", "stop reason", "tool calls", "input tokens", "output tokens", "failure outcomes"],
        title="The traced agent runs (from phase 13's step records)",
    )
    ctx.table("span_kinds", sorted(kinds.items()), ["span kind", "spans"], title=f"Spans of run {run_id} by kind")

    # --- findings, computed -----------------------------------------------------------------------------
    ctx.finding(
        f"Run {run_id}: {len(spans)} spans for {llm_calls} model calls and {tool_runs} tool executions; "
        f"{len(chat)}/{llm_calls} model calls and {len(tools)}/{tool_runs} tool executions have a span; "
        f"span token totals {'match' if tokens_in == sum(r.input_tokens for r in runs) else 'do NOT match'} "
        f"the step records ({tokens_in:,} in, {tokens_out:,} out)."
    )
    if sdk:
        ctx.finding(
            f"The OpenAI SDK instrumentation added {len(sdk)} span(s); "
            f"{sum(s['parent_id'] in chat_ids for s in sdk)} nest under our chat spans, so a collector shows "
            "the SDK's view of each request inside the agent's step."
        )
    if other:
        scopes = ", ".join(sorted({s["scope"] for s in other}))
        ctx.finding(
            f"{len(other)} more span(s) came from other libraries' own OpenTelemetry support ({scopes}): "
            "the server side of each request, joined to the same trace by the traceparent header the SDK "
            "instrumentation sends — one trace from agent step to server endpoint."
        )
    exported = f"{counts['local']} spans to the local store, {counts.get('otlp', 0)} over OTLP/HTTP"
    if receiver is not None:
        exported += f" ({len(receiver.spans)} decoded by the in-process receiver from {receiver.requests} request(s))"
    ctx.finding(f"Exported {exported}.")
    ctx.finding(
        f"Redaction: {len(planted)} planted secrets (task text, a tool error's Bearer header and bot token, "
        f"the serving key) → {sum(leaks.values())} occurrence(s) in what left the process; "
        f"{redacted} span(s) carry a *** where something was blanked."
    )
    if sum(leaks.values()):
        ctx.failure_mode(f"secret leak: {', '.join(k for k, v in leaks.items() if v)} reached exported spans")
    answered = sum(r.stop_reason == "answer" for r in runs)
    if answered < len(runs):
        ctx.failure_mode(
            f"{len(runs) - answered} of {len(runs)} agent runs stopped without an answer "
            f"({', '.join(r.stop_reason for r in runs if r.stop_reason != 'answer')}): the trace shows "
            "which step went wrong — see trace_tree.txt"
        )


EXERCISE = Exercise(
    id="phase15.tracing",
    title="OpenTelemetry GenAI spans for a Phase 13 agent: nesting, export (local + OTLP), redaction",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"max_steps": 6, "max_tokens": 160, "llm": A100_LLM}},
    tiny={"tasks": TASKS[:1], "max_steps": 2, "max_tokens": 48},
    smoke={"tasks": TASKS[:1], "max_steps": 2, "max_tokens": 48},
    summary_metrics=("spans_per_run", "llm_call_span_coverage", "tool_call_span_coverage", "secrets_leaked"),
    methods={"cpu": "own", "a100": "own"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
