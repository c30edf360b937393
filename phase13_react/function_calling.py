"""13.1 Function calling with no framework: the raw round trip, on both wire formats, side by side.

One set of tool definitions (typed Python functions, ``phase13_react.research_tools``) becomes two
wire shapes:

- Anthropic Messages: ``tools=[{name, description, input_schema}]``; the model answers with a
  ``tool_use`` content block (``id``, ``name``, ``input``); we run the tool and send back a *user*
  turn holding a ``tool_result`` block (``tool_use_id``, ``content``, ``is_error``).
- OpenAI Chat Completions: ``tools=[{type: function, function: {name, description, parameters}}]``;
  the model answers with ``message.tool_calls`` (``id``, ``function.name``, ``function.arguments`` —
  a JSON *string* the model wrote, which may not parse); we send back a ``role: tool`` message with
  ``tool_call_id``.

Each task is two requests: (1) the question plus the tools → a tool request, which we validate and
execute; (2) the conversation with the result → the model's final answer. The exact request and
response bodies are saved in ``wire_transcripts.json`` next to the result.

cpu: the embedded SmolLM2-135M behind ``lab serve`` (OpenAI- and Anthropic-compatible HTTP), called
with the official ``openai`` and ``anthropic`` SDKs; ``tool_choice`` "required" (Anthropic ``any``)
makes the server decode the call under a grammar, so it parses by construction. Hosted:
``--llm anthropic:<model>`` sends the Anthropic wire straight to Anthropic (and the OpenAI wire
through ``lab serve`` wrapping the same model); ``--llm openai:<model>@<url>`` the converse.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from typing import Any

from lab import ConfigError, Exercise, ExerciseConfig, RunContext
from lab.llm.base import ToolCall
from lab.llm.prices import cost_usd
from lab.serve.background import serving
from phase13_react.research_tools import calculator, kv_cache_gb, read_result_metric
from phase13_react.served import A100_LLM, agent_llm
from phase13_react.tasks import numbers_in
from phase13_react.tools import Toolbox

TASKS = (  # (question, the tool that answers it)
    ("How many GB of KV cache does Llama 3.1 8B need for one sequence of 32768 tokens?", "kv_cache_gb"),
    ("What is 1234 * 5678?", "calculator"),
    ("What is the value of the metric kv_bytes_per_token in the exercise phase08.kv_cache?", "read_result_metric"),
    ("How many GB of KV cache does Llama 3.1 70B need for 4 sequences of 8192 tokens each?", "kv_cache_gb"),
    ("What is (17.2 - 4.3) / 4.3?", "calculator"),
    ("What is the value of the metric kept_pairs in the exercise phase09.dataset?", "read_result_metric"),
)
WIRES = ("anthropic", "openai")


class Config(ExerciseConfig):
    llm: str | None = None  # lab.llm spec; default $LAB_LLM or the embedded SmolLM2
    n_tasks: int = 3
    tool_choice: str = "required"  # required | auto ("required" = Anthropic "any")
    max_tokens: int = 96


# --- one tool list, two wire formats ----------------------------------------------------------------
def anthropic_tools(schemas: list[dict]) -> list[dict]:
    return [{"name": s["name"], "description": s["description"], "input_schema": s["input_schema"]} for s in schemas]


def openai_tools(schemas: list[dict]) -> list[dict]:
    return [
        {
            "type": "function",
            "function": {"name": s["name"], "description": s["description"], "parameters": s["input_schema"]},
        }
        for s in schemas
    ]


def _body(response) -> dict:
    return response.model_dump(mode="json", exclude_none=True)


def _run_tool(toolbox, call_id: str, name: str, arguments: Any):
    """Validate and execute one requested call; the observation names what went wrong, if anything."""

    if isinstance(arguments, str):  # the OpenAI wire: arguments are a JSON string the model wrote
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            parsed = None
        call = (
            ToolCall(call_id, name, parsed, None)
            if isinstance(parsed, dict)
            else ToolCall(call_id, name, {}, arguments)
        )
    else:
        call = ToolCall(call_id, name, dict(arguments or {}))
    return toolbox.execute(call)


def anthropic_round_trip(client, model: str, question: str, toolbox, cfg: Config) -> dict:
    tools = anthropic_tools(toolbox.schemas())
    choice = {"type": "any", "disable_parallel_tool_use": True} if cfg.tool_choice == "required" else {"type": "auto"}
    request = {
        "model": model,
        "max_tokens": cfg.max_tokens,  # no temperature: SDK 2.x dropped it (servers decode greedily here)
        "messages": [{"role": "user", "content": question}],
        "tools": tools,
        "tool_choice": choice,
    }
    started = time.perf_counter()
    first = client.messages.create(**request)
    exchanges = [{"request": request, "response": _body(first), "latency_s": time.perf_counter() - started}]
    uses = [b for b in first.content if b.type == "tool_use"]
    observations = [_run_tool(toolbox, b.id, b.name, b.input) for b in uses]
    if uses:
        follow = {
            **request,
            "tool_choice": {"type": "none"},
            "messages": request["messages"]
            + [
                {"role": "assistant", "content": [b.model_dump(mode="json", exclude_none=True) for b in first.content]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": b.id,
                            "content": o.content,
                            "is_error": o.outcome != "ok",
                        }
                        for b, o in zip(uses, observations)
                    ],
                },
            ],
        }
        started = time.perf_counter()
        final = client.messages.create(**follow)
        exchanges.append({"request": follow, "response": _body(final), "latency_s": time.perf_counter() - started})
    answer = "".join(b.text for b in (final if uses else first).content if b.type == "text")
    usage = [(e["response"]["usage"]["input_tokens"], e["response"]["usage"]["output_tokens"]) for e in exchanges]
    return {
        "calls": [(b.name, o.outcome) for b, o in zip(uses, observations)],
        "observations": observations,
        "answer": answer,
        "exchanges": exchanges,
        "usage": usage,
    }


def openai_round_trip(client, model: str, question: str, toolbox, cfg: Config) -> dict:
    request = {
        "model": model,
        "max_tokens": cfg.max_tokens,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": question}],
        "tools": openai_tools(toolbox.schemas()),
        "tool_choice": cfg.tool_choice,
        "parallel_tool_calls": False,
    }
    started = time.perf_counter()
    first = client.chat.completions.create(**request)
    exchanges = [{"request": request, "response": _body(first), "latency_s": time.perf_counter() - started}]
    message = first.choices[0].message
    calls = message.tool_calls or []
    observations = [_run_tool(toolbox, c.id, c.function.name, c.function.arguments) for c in calls]
    if calls:
        follow = {
            **request,
            "tool_choice": "none",
            "messages": request["messages"]
            + [
                {
                    "role": "assistant",
                    "content": message.content,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                        }
                        for c in calls
                    ],
                },
                *({"role": "tool", "tool_call_id": c.id, "content": o.content} for c, o in zip(calls, observations)),
            ],
        }
        started = time.perf_counter()
        final = client.chat.completions.create(**follow)
        exchanges.append({"request": follow, "response": _body(final), "latency_s": time.perf_counter() - started})
    answer = ((final if calls else first).choices[0].message.content) or ""
    usage = [(e["response"]["usage"]["prompt_tokens"], e["response"]["usage"]["completion_tokens"]) for e in exchanges]
    return {
        "calls": [(c.function.name, o.outcome) for c, o in zip(calls, observations)],
        "observations": observations,
        "answer": answer,
        "exchanges": exchanges,
        "usage": usage,
    }


# --- where each wire goes ---------------------------------------------------------------------------
def endpoints(llm, stack: ExitStack) -> dict[str, tuple[str | None, str, str]]:
    """``wire -> (base_url, api_key, model)``. A hosted provider is called on its own wire directly;
    the other wire (and both, for the local model) goes through ``lab serve`` wrapping the same model."""

    served: dict[str, str] = {}

    def serve() -> str:
        if "url" not in served:
            served["url"] = stack.enter_context(serving(llm, api_key=served.setdefault("key", "sk-lab-local")))
        return served["url"]

    out = {}
    for wire in WIRES:
        if llm.provider == wire:
            key = getattr(llm, "api_key", None) or "EMPTY"
            out[wire] = (getattr(llm, "base_url", None), key, llm.model)
        elif wire == "anthropic":
            out[wire] = (serve(), served["key"], llm.model)
        else:
            out[wire] = (f"{serve()}/v1", served["key"], llm.model)
    return out


def run(cfg: Config, ctx: RunContext) -> None:
    import anthropic  # noqa: PLC0415 (anthropic loads only on the path that uses it)
    import openai  # noqa: PLC0415 (openai loads only on the path that uses it)

    if cfg.tool_choice not in ("required", "auto"):
        raise ConfigError(f"tool_choice {cfg.tool_choice!r}: choose required or auto")
    spec = cfg.llm or os.environ.get("LAB_LLM") or ""
    if spec.startswith("anthropic:") and not os.environ.get("ANTHROPIC_API_KEY"):
        ctx.skip(
            "ANTHROPIC_API_KEY is not set: the hosted run sends the Anthropic wire to api.anthropic.com; "
            "export the key, or drop --llm to run the embedded model through lab serve"
        )
    toolbox = Toolbox([kv_cache_gb, calculator, read_result_metric], retries=0)
    tasks = TASKS[: cfg.n_tasks]
    transcripts, rows = [], []
    per_wire: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        llm, _ = stack.enter_context(agent_llm(ctx, cfg.llm))
        where = endpoints(llm, stack)
        clients = {
            "anthropic": anthropic.Anthropic(
                base_url=where["anthropic"][0], api_key=where["anthropic"][1], max_retries=1
            ),
            "openai": openai.OpenAI(base_url=where["openai"][0], api_key=where["openai"][1], max_retries=1),
        }
        trip = {"anthropic": anthropic_round_trip, "openai": openai_round_trip}
        for wire in WIRES:
            stats = per_wire[wire] = {
                "calls": 0,
                "ok": 0,
                "right_tool": 0,
                "tasks_with_call": 0,
                "in": 0,
                "out": 0,
                "latency": [],
                "grounded": 0,
            }
            for question, expected in ctx.progress(tasks, f"{wire} wire"):
                rec = trip[wire](clients[wire], where[wire][2], question, toolbox, cfg)
                stats["calls"] += len(rec["calls"])
                stats["ok"] += sum(outcome == "ok" for _, outcome in rec["calls"])
                stats["right_tool"] += sum(name == expected for name, _ in rec["calls"][:1])
                stats["tasks_with_call"] += bool(rec["calls"])
                stats["in"] += sum(i for i, _ in rec["usage"])
                stats["out"] += sum(o for _, o in rec["usage"])
                stats["latency"] += [e["latency_s"] for e in rec["exchanges"]]
                values = [o.value for o in rec["observations"] if o.outcome == "ok"]
                grounded = any(_mentions(rec["answer"], v) for v in values)
                stats["grounded"] += grounded
                transcripts.append(
                    {"wire": wire, "question": question, "expected_tool": expected, "exchanges": rec["exchanges"]}
                )
                rows.append(
                    [
                        wire,
                        question[:60],
                        ", ".join(f"{n} ({o})" for n, o in rec["calls"]) or "none",
                        rec["answer"][:80].replace("\n", " "),
                        "yes" if grounded else "no",
                    ]
                )

    provider = llm.provider
    total_calls = sum(s["calls"] for s in per_wire.values())
    for wire, s in per_wire.items():
        ctx.metric(f"calls_{wire}", s["calls"], "calls")
        ctx.metric(f"valid_call_rate_{wire}", s["ok"] / s["calls"] if s["calls"] else 0.0, "fraction")
        ctx.metric(f"correct_tool_rate_{wire}", s["right_tool"] / len(tasks), "fraction")
        ctx.metric(
            f"grounded_answer_rate_{wire}",
            s["grounded"] / len(tasks),
            "fraction",
            description="final answers that repeat the tool's result",
        )
        ctx.metric(f"tokens_{wire}", s["in"] + s["out"], "tokens", higher_is_better=False)
        ctx.metric(
            f"latency_s_{wire}",
            sum(s["latency"]) / max(len(s["latency"]), 1),
            "s",
            higher_is_better=False,
            description="mean per request",
        )
    ctx.metric("calls", total_calls, "calls")
    ctx.metric(
        "valid_call_rate", sum(s["ok"] for s in per_wire.values()) / total_calls if total_calls else 0.0, "fraction"
    )
    ctx.metric("tokens", sum(s["in"] + s["out"] for s in per_wire.values()), "tokens", higher_is_better=False)
    latencies = [x for s in per_wire.values() for x in s["latency"]]
    ctx.metric("latency_s", sum(latencies) / max(len(latencies), 1), "s", higher_is_better=False)
    cost = cost_usd(
        provider, llm.model, sum(s["in"] for s in per_wire.values()), sum(s["out"] for s in per_wire.values())
    )
    ctx.metric("cost_usd", cost, "USD", higher_is_better=False)
    ctx.dataset("phase13.function_calling.tasks", len(tasks), None)
    ctx.table(
        "round_trips",
        rows,
        ["wire", "question", "tool calls (outcome)", "final answer", "repeats result"],
        title=f"Round trips ({llm.spec}, tool_choice={cfg.tool_choice})",
    )
    ctx.artifact("wire_transcripts.json").write_text(json.dumps(transcripts, indent=1, ensure_ascii=False))

    a, o = per_wire["anthropic"], per_wire["openai"]
    ctx.finding(
        f"Same {len(toolbox.schemas())} tool definitions, two wires: {a['calls']} tool_use blocks on the "
        f"Anthropic wire and {o['calls']} tool_calls on the OpenAI wire over {len(tasks)} tasks each; "
        f"{a['ok'] + o['ok']} of {total_calls} calls validated and ran "
        f"({'every one' if total_calls and a['ok'] + o['ok'] == total_calls else 'not all'})."
    )
    ctx.finding(
        f"Right tool for the question: {a['right_tool']}/{len(tasks)} (Anthropic wire), "
        f"{o['right_tool']}/{len(tasks)} (OpenAI wire); final answers repeating the tool result: "
        f"{a['grounded']}/{len(tasks)} and {o['grounded']}/{len(tasks)}. "
        + (
            "A valid call is not a useful one: the grammar guarantees the shape, not the choice or the "
            "answer that follows."
            if provider == "local"
            else ""
        )
    )
    ctx.finding(
        f"Tokens per wire: {a['in'] + a['out']} (Anthropic) vs {o['in'] + o['out']} (OpenAI) for the same "
        f"tasks — each provider renders the tool list into its own prompt; mean request latency "
        f"{sum(a['latency']) / max(len(a['latency']), 1):.2f} s vs {sum(o['latency']) / max(len(o['latency']), 1):.2f} s."
    )


def _mentions(answer: str, value: Any) -> bool:
    """Does the answer repeat a numeric tool result (to 3 significant figures)?"""

    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return any(abs(x - value) <= max(abs(value) * 0.005, 1e-9) for x in numbers_in(answer))


EXERCISE = Exercise(
    id="phase13.function_calling",
    title="Function calling with no framework: Anthropic tool_use / tool_result and OpenAI tool_calls, side by side",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"n_tasks": 2},
        "a100": {"n_tasks": 6, "tool_choice": "auto", "max_tokens": 256, "llm": A100_LLM},
    },
    tiny={"n_tasks": 1},
    smoke={"n_tasks": 1, "max_tokens": 64},  # the a100 path against a served tiny stand-in
    summary_metrics=("calls", "valid_call_rate", "tokens", "latency_s", "cost_usd"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
