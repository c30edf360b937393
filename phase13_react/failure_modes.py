"""13.4 Failure modes: every way a tool-using agent goes wrong, injected on purpose and counted.

Each scenario pairs a scripted model (``lab.llm.scripted_server``: an OpenAI-compatible HTTP
server that sends exactly the broken reply we want) with tools that raise, hang or return nothing,
runs the real loop (``phase13_react.loop.run_agent``) through the real client (``lab.llm``), and
checks that the failure was recorded under its name and handled as designed:

| outcome             | injected by                                  | handling                                   |
|---------------------|----------------------------------------------|--------------------------------------------|
| unknown_tool        | a call to a tool that was never offered      | error observation listing the real tools   |
| invalid_arguments   | arguments that are not JSON / miss a field   | error observation naming the field         |
| tool_error          | a tool that raises                           | error observation with the exception       |
| tool_timeout        | a tool that hangs past its timeout           | retried with backoff, then an observation  |
| repeated_action     | the same call forever                        | not re-run; the run stops after N repeats  |
| max_steps           | a new call every turn, never an answer       | the step budget stops the run              |
| empty_observation   | a tool that returns nothing                  | observation telling the model to change tack |

Two model-side extras show the same rule: garbage text in the ReAct text format is a
``parse_error`` step, and a model slower than the client's timeout is a ``model_error`` stop. In
every case the agent returns a run record; nothing raises.
"""

from __future__ import annotations

import time
from typing import Any

from lab import Exercise, ExerciseConfig, RunContext
from lab.llm.openai_client import OpenAILLM
from lab.llm.scripted_server import ScriptedServer, call, say
from phase13_react.loop import run_agent
from phase13_react.tools import Toolbox, tool

FAILURE_MODES = (
    "unknown_tool",
    "invalid_arguments",
    "tool_error",
    "tool_timeout",
    "repeated_action",
    "max_steps",
    "empty_observation",
)


class Config(ExerciseConfig):
    max_steps: int = 5
    max_repeats: int = 2
    tool_timeout_s: float = 0.3
    tool_retries: int = 1
    slow_model_s: float = 3.0  # the scripted model's delay in the slow-reply scenario
    client_timeout_s: float = 1.0


def failure_tools(cfg: Config) -> list:
    """The fault-injecting tools (and one that works)."""

    @tool
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @tool
    def broken_lookup(key: str) -> str:
        """Look a key up in a backend that is down."""
        raise RuntimeError(f"backend unavailable while looking up {key!r}")

    @tool(timeout_s=cfg.tool_timeout_s)
    def slow_search(query: str) -> str:
        """Search an index that hangs."""
        time.sleep(cfg.tool_timeout_s * 10)
        return "too late"

    @tool
    def empty_search(query: str) -> list:
        """Search an index that finds nothing."""
        return []

    return [add, broken_lookup, slow_search, empty_search]


def scenarios(cfg: Config) -> list[dict[str, Any]]:
    """(name, the scripted replies, loop mode, the outcome and stop reason expected)."""

    done = say("Done.")
    return [
        {
            "name": "unknown_tool",
            "script": [call("web_browse", {"url": "x"}), done],
            "expect": ("unknown_tool", "answer"),
        },
        {
            "name": "invalid_arguments",
            "script": [call("add", '{"a": 1, "b": '), call("add", {"a": 1}), done],
            "expect": ("invalid_arguments", "answer"),
        },
        {
            "name": "tool_error",
            "script": [call("broken_lookup", {"key": "k"}), done],
            "expect": ("tool_error", "answer"),
        },
        {
            "name": "tool_timeout",
            "script": [call("slow_search", {"query": "q"}), done],
            "expect": ("tool_timeout", "answer"),
        },
        {
            "name": "repeated_action",
            "script": [call("add", {"a": 1, "b": 2})],
            "expect": ("repeated_action", "repeated_action"),
        },
        {
            "name": "max_steps",
            "script": lambda body: call("add", {"a": len(body["messages"]), "b": 1}),
            "expect": ("max_steps", "max_steps"),
        },
        {
            "name": "empty_observation",
            "script": [call("empty_search", {"query": "q"}), done],
            "expect": ("empty_observation", "answer"),
        },
        {
            "name": "garbage_text",
            "script": [say("}}{{ lorem ipsum <tool_call> ???")],
            "mode": "text",
            "expect": ("parse_error", "max_steps"),
        },
        {
            "name": "slow_model",
            "script": [say("late", delay_s=cfg.slow_model_s)],
            "expect": ("model_error", "model_error"),
        },
    ]


def run_scenario(sc: dict[str, Any], cfg: Config) -> tuple[Any, int]:
    """Run one scenario end to end; returns (the AgentRun, requests the scripted model received)."""

    toolbox = Toolbox(failure_tools(cfg), retries=cfg.tool_retries, backoff_s=0.01)
    with ScriptedServer(sc["script"]) as srv:
        llm = OpenAILLM(
            "scripted", base_url=srv.openai_url, api_key="sk-scripted", max_attempts=1, timeout_s=cfg.client_timeout_s
        )
        run = run_agent(
            llm,
            "Use the tools to answer: what is 1 + 2?",
            toolbox,
            mode=sc.get("mode", "native"),
            max_steps=cfg.max_steps,
            max_repeats=cfg.max_repeats,
        )
        return run, len(srv.requests)


def run(cfg: Config, ctx: RunContext) -> None:
    rows, counted, handled, crashes = [], {}, 0, 0
    all_scenarios = scenarios(cfg)
    for sc in ctx.progress(all_scenarios, "failure scenarios"):
        expected_outcome, expected_stop = sc["expect"]
        try:
            agent_run, requests = run_scenario(sc, cfg)
        except Exception as exc:  # the one thing that must never happen; recorded, not hidden
            crashes += 1
            rows.append([sc["name"], "CRASH", f"{type(exc).__name__}: {exc}", "", "", "no"])
            continue
        counts = agent_run.outcome_counts()
        counted[sc["name"]] = counts.get(expected_outcome, 0)
        ok = counts.get(expected_outcome, 0) > 0 and agent_run.stop_reason == expected_stop
        handled += ok
        first = next((o for s in agent_run.steps for o in s.observations if o["outcome"] == expected_outcome), None)
        shown = first["content"] if first else next((s.feedback for s in agent_run.steps if s.feedback), "") or ""
        rows.append(
            [
                sc["name"],
                ", ".join(f"{k}×{v}" for k, v in sorted(counts.items())) or "none",
                agent_run.stop_reason,
                len(agent_run.steps),
                requests,
                "yes" if ok else "no",
                shown[:110],
            ]
        )
    for mode in FAILURE_MODES:
        ctx.metric(
            f"{mode}_count", counted.get(mode, 0), "events", description=f"{mode} outcomes recorded in its scenario"
        )
    ctx.metric("modes_detected", sum(counted.get(m, 0) > 0 for m in FAILURE_MODES), f"of {len(FAILURE_MODES)}")
    ctx.metric("scenarios_handled", handled, f"of {len(all_scenarios)}")
    ctx.metric("crashes", crashes, "runs", higher_is_better=False)
    ctx.table(
        "failure_modes",
        rows,
        [
            "scenario",
            "outcomes recorded",
            "stop reason",
            "steps",
            "model requests",
            "handled as designed",
            "what the model was shown",
        ],
        title="Each failure injected on purpose (scripted OpenAI-compatible model + fault-injecting tools)",
    )
    for name in FAILURE_MODES:
        ctx.failure_mode(
            f"{name}: injected and recorded {counted.get(name, 0)} time(s); see the table for the handling."
        )
    detected = sum(counted.get(m, 0) > 0 for m in FAILURE_MODES)
    ctx.finding(
        f"{detected} of {len(FAILURE_MODES)} named failure modes were recorded under their own name, "
        f"{handled} of {len(all_scenarios)} scenarios ended with the designed stop reason, and the agent "
        f"crashed {crashes} time(s): a broken model or tool yields a run record, not an exception."
    )
    rep = next((r for r in rows if r[0] == "repeated_action"), None)
    if rep and rep[1] != "CRASH":
        ctx.finding(
            f"The model that repeats one call forever was stopped after {rep[3]} steps ({rep[4]} model "
            f"requests) by loop detection (max_repeats={cfg.max_repeats}); the tool ran once, the repeats "
            "were answered from the first result."
        )


EXERCISE = Exercise(
    id="phase13.failure_modes",
    title="Failure modes of tool use, injected and counted: unknown tool, bad arguments, errors, timeouts, loops, budget, empty results",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {}},
    tiny={"slow_model_s": 1.5, "client_timeout_s": 0.5, "tool_timeout_s": 0.2},
    smoke={"slow_model_s": 1.5, "client_timeout_s": 0.5, "tool_timeout_s": 0.2},
    summary_metrics=("modes_detected", "scenarios_handled", "crashes"),
    methods={"cpu": "same", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
