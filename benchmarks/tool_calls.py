"""Tool-call validity: the same prompts, prompt-only vs grammar-constrained decoding.

    .venv/bin/lab run benchmarks.tool_calls                         # embedded SmolLM2-135M, 60 prompts
    .venv/bin/lab run benchmarks.tool_calls --set n_prompts=10      # a quick look (→ runs/)
    .venv/bin/lab run benchmarks.tool_calls --llm anthropic:claude-haiku-4-5 --out /tmp/bench

Seven tools with the schema features agents rely on (enums, required fields, bounded integers,
numbers, free strings) and 60 requests that each call for one of them, sent with
``tool_choice="required"``:

- ``prompt_only``: the tools are listed in the system prompt (Hermes format) and the reply is
  parsed; nothing stops the model from writing prose, an unknown tool or arguments that break the
  schema. This is how local models were driven before constrained decoding.
- ``constrained``: the same prompt, decoded under the grammar compiled from the tool schemas
  (``lab.llm.constrained``, xgrammar). Every reply is a call of a listed tool whose arguments
  validate, unless the token budget ends first (counted separately as ``cut off``).
- ``auto_constrained``: ``tool_choice="auto"``: the model may answer in text; how often it
  chooses to call a tool, and whether the calls it makes validate.

Validity = at least one call, every call names a listed tool and its arguments validate against
that tool's JSON schema (``jsonschema``). Correct tool = the first call names the expected tool.
Whether the *values* make sense is not measured here; the per-prompt table shows them. A hosted
``--llm`` runs one ``native`` mode (the provider's own tool calling) for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jsonschema import Draft202012Validator
from pydantic import BaseModel

from lab import Exercise, ExerciseConfig, RunContext
from lab.hashing import sha256_file
from lab.jsonl import NonEmptyStr, read_jsonl
from lab.llm import from_spec
from lab.llm.local import LocalLLM

PROMPTS = Path(__file__).resolve().parent / "data" / "tool_call_prompts.jsonl"
Mode = Literal["prompt_only", "constrained", "auto_constrained"]
MODES: tuple[Mode, ...] = ("prompt_only", "constrained", "auto_constrained")

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "input_schema": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (3 + 4) * 2"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
    {
        "name": "search_web",
        "description": "Search the web and return the top results.",
        "input_schema": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    {
        "name": "send_email",
        "description": "Send an email.",
        "input_schema": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "pattern": "^[a-z0-9._-]+@[a-z0-9.-]+\\.[a-z]{2,6}$"},
                "subject": {"type": "string", "maxLength": 80},
                "body": {"type": "string"},
            },
            "required": ["to", "subject", "body"],
            "additionalProperties": False,
        },
    },
    {
        "name": "convert_currency",
        "description": "Convert an amount between currencies.",
        "input_schema": {
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "from_currency": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]},
                "to_currency": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]},
            },
            "required": ["amount", "from_currency", "to_currency"],
            "additionalProperties": False,
        },
    },
    {
        "name": "set_reminder",
        "description": "Remind the user of something later.",
        "input_schema": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "minutes_from_now": {"type": "integer", "minimum": 1, "maximum": 10080},
            },
            "required": ["text", "minutes_from_now"],
            "additionalProperties": False,
        },
    },
    {
        "name": "kv_cache_size",
        "description": "KV cache memory of a model at a context length and batch size.",
        "input_schema": {
            "type": "object",
            "properties": {
                "model": {"type": "string", "enum": ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b"]},
                "context": {"type": "integer", "minimum": 1, "maximum": 131072},
                "batch": {"type": "integer", "minimum": 1, "maximum": 64},
            },
            "required": ["model", "context", "batch"],
            "additionalProperties": False,
        },
    },
]


class Config(ExerciseConfig):
    n_prompts: int = 60
    max_tokens: int = 128
    modes: tuple[Mode, ...] = MODES  # an unknown mode is a config error naming the field


class PromptRow(BaseModel):
    """One line of the prompt file: a request and the tool that serves it."""

    prompt: NonEmptyStr
    tool: Literal[tuple(t["name"] for t in TOOLS)]  # type: ignore[valid-type]  # one of TOOLS


def load_prompts(n: int) -> list[dict]:
    return [row.model_dump() for row in read_jsonl(PROMPTS, model=PromptRow)][:n]


def judge(reply, expected: str) -> tuple[bool, bool, str]:
    """(valid, correct tool, outcome) of one reply; the outcome names what went wrong."""

    schemas = {t["name"]: t["input_schema"] for t in TOOLS}
    if not reply.tool_calls:
        if reply.stop_reason == "max_tokens":
            return False, False, "cut off by the token budget"
        return (
            False,
            False,
            "no tool call" + (" (unparseable <tool_call> block)" if "<tool_call>" in reply.text else ""),
        )
    for call in reply.tool_calls:
        if call.name not in schemas:  # a hosted model may name a tool it was not offered
            return False, False, f"{call.name}: not a listed tool"
        errors = sorted(Draft202012Validator(schemas[call.name]).iter_errors(call.arguments), key=str)
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "arguments"
            return False, reply.tool_calls[0].name == expected, f"{call.name}: {where}: {errors[0].message[:80]}"
    return True, reply.tool_calls[0].name == expected, "valid"


def run(cfg: Config, ctx: RunContext) -> None:

    llm = from_spec(None)
    local = isinstance(llm, LocalLLM)
    modes = cfg.modes if local else ("native",)
    prompts = load_prompts(cfg.n_prompts)
    ctx.model(**llm.describe())
    ctx.dataset(
        "benchmarks/data/tool_call_prompts.jsonl", n=len(prompts), sha256=sha256_file(PROMPTS), tools=len(TOOLS)
    )
    llm.chat([{"role": "user", "content": "Hi"}], max_tokens=2)  # load before timing anything

    # modes alternate prompt by prompt, so a change in machine load hits every mode alike
    tally = {mode: dict(valid=0, correct=0, calls=0, tokens=0, seconds=0.0) for mode in modes}
    rows, constrained = [], getattr(llm, "constrained", None)
    try:
        for item in ctx.progress(prompts, "prompts"):
            for mode in modes:
                if local:
                    llm.constrained = mode != "prompt_only"
                choice = "auto" if mode == "auto_constrained" else "required"
                reply = llm.chat(
                    [{"role": "user", "content": item["prompt"]}],
                    tools=TOOLS,
                    tool_choice=choice,
                    max_tokens=cfg.max_tokens,
                )
                ok, right, outcome = judge(reply, item["tool"])
                t = tally[mode]
                t["valid"] += ok
                t["correct"] += right
                t["calls"] += bool(reply.tool_calls)
                t["tokens"] += reply.usage.output_tokens
                t["seconds"] += reply.latency_s
                first = reply.tool_calls[0] if reply.tool_calls else None
                rows.append(
                    [
                        mode,
                        item["prompt"],
                        item["tool"],
                        first.name if first else "—",
                        json.dumps(first.arguments)[:90] if first else reply.text[:90],
                        outcome,
                    ]
                )
    finally:
        if local:
            llm.constrained = constrained  # from_spec's client is shared by the process
    n, summary = len(prompts), []
    for mode, t in tally.items():
        rate = t["tokens"] / t["seconds"] if t["seconds"] else 0.0
        ctx.metric(f"validity_{mode}", t["valid"] / n, "fraction")
        ctx.metric(f"correct_tool_{mode}", t["correct"] / n, "fraction")
        ctx.metric(f"tool_call_rate_{mode}", t["calls"] / n, "fraction")
        ctx.metric(f"tokens_per_s_{mode}", rate, "tok/s")
        choice = "auto" if mode == "auto_constrained" else "required"
        summary.append([mode, choice, n, t["valid"] / n, t["correct"] / n, t["calls"] / n, rate])

    ctx.table(
        "summary",
        summary,
        ["mode", "tool_choice", "prompts", "valid", "correct tool", "called a tool", "tok/s"],
        title="Validity and correct-tool rate by decoding mode",
    )
    ctx.table(
        "replies", rows, ["mode", "prompt", "expected", "called", "arguments (or text)", "outcome"], title="Every reply"
    )
    m = ctx.metrics
    if "validity_constrained" in m and "validity_prompt_only" in m:
        fast, slow = m["tokens_per_s_prompt_only"]["value"], m["tokens_per_s_constrained"]["value"]
        overhead = (fast - slow) / fast * 100 if fast else 0.0
        ctx.metric("constraint_overhead_pct", overhead, "%", higher_is_better=False)
        ctx.finding(
            f"With tool_choice=required, {m['validity_constrained']['value']:.0%} of constrained replies were valid "
            f"calls vs {m['validity_prompt_only']['value']:.0%} prompt-only, on {len(prompts)} prompts. The grammar "
            f"guarantees the shape, not the judgement: the right tool was chosen "
            f"{m['correct_tool_constrained']['value']:.0%} of the time constrained "
            f"({m['correct_tool_prompt_only']['value']:.0%} prompt-only). Decoding speed: {slow:.1f} vs {fast:.1f} tok/s "
            f"({overhead:+.1f}% overhead)."
        )
    if "tool_call_rate_auto_constrained" in m:
        ctx.finding(
            f"With tool_choice=auto the model chose to call a tool on "
            f"{m['tool_call_rate_auto_constrained']['value']:.0%} of requests that needed one; "
            f"{m['validity_auto_constrained']['value']:.0%} of all requests ended in a valid call."
        )
    for mode in modes:
        failures = [r[5] for r in rows if r[0] == mode and r[5] != "valid"]
        for outcome in sorted(set(failures)):
            ctx.failure_mode(f"{mode}: {outcome} ({failures.count(outcome)} of {len(prompts)})")


EXERCISE = Exercise(
    id="benchmarks.tool_calls",
    title="Tool-call validity: prompt-only vs constrained decoding",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}},
    methods={"cpu": "own"},
    tiny={"n_prompts": 2, "max_tokens": 48},
    summary_metrics=(
        "validity_prompt_only",
        "validity_constrained",
        "correct_tool_constrained",
        "constraint_overhead_pct",
    ),
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
