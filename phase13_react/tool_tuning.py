"""13.5 Teaching the 135M model to act: base vs tool-tuned, on cases the training never saw.

Constrained decoding made every call the embedded model writes *valid*; it did not make the model
*decide*. Offered a fitting tool with ``tool_choice="auto"``, SmolLM2-135M answers in prose. This
exercise measures what Phase 9's technique (LoRA SFT) does about it: the base model against
``smollm2-135m-agent``, the same weights plus the tool-use adapter trained on
``phase13_react.tool_use_data`` (``phase13_react.tool_adapter``), both under the same grammar, on the
held-out splits only:

- **decisions** (``tool_choice="auto"``, one reply each): requests in a wording family training never
  used (``heldout_template``), functions training never showed (``heldout_function``), chat written
  apart (``heldout_chat``), a project tool training never showed (``heldout_tool``). Scored: did it
  call when a tool fits and not when none does; the exact call; each argument.
- **multi-step tasks** (``heldout_multistep``): questions over the project's real tools in unseen
  wordings, run end to end by the Phase 13 loop (each step one action under one grammar: a tool call
  or ``final_answer``); solved when the answer states the number the tools produce.

Every rate comes with its n and a 95% Wilson interval (``lab.stats``); the training curve is the
published adapter's log; the failure table lists the tuned model's misses.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lab import Exercise, ExerciseConfig, RunContext
from lab.llm import from_spec
from lab.models import AGENT_LLM, EMBEDDED_LLM
from lab.stats import interval_text, rate_interval, record_rate
from phase13_react.loop import run_agent
from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.served import AGENT_SPEC, BASE_SPEC
from phase13_react.tasks import Task, check
from phase13_react.tool_adapter import PUBLISHED, check_published
from phase13_react.tool_use_data import generate
from phase13_react.tools import Toolbox

DECISION_SPLITS = ("heldout_template", "heldout_function", "heldout_chat", "heldout_tool")
MEASURES = (  # (key, metric name, what the table calls it)
    ("decision", "decision_accuracy", "decision accuracy"),
    ("exact", "exact_call_accuracy", "exact-call accuracy"),
    ("args", "argument_accuracy", "argument accuracy"),
    ("irrelevance", "irrelevance_accuracy", "irrelevance accuracy"),
    ("precision", "irrelevance_precision", "irrelevance precision"),
    ("multistep", "multistep_success", "multi-step task success"),
)
DESCRIPTIONS = {
    "decision": "call when a tool fits, no call when none does (tool_choice auto)",
    "exact": "the right tool with exactly the gold arguments",
    "args": "gold arguments given with the gold value (per argument; a wrong tool counts all its arguments wrong)",
    "irrelevance": "no call when no offered tool fits",
    "precision": "of the replies without a call, those where no tool fitted",
    "multistep": "held-out multi-step tasks answered with the number the tools give",
}


class Config(ExerciseConfig):
    base_llm: str = BASE_SPEC
    tuned_llm: str = AGENT_SPEC
    seed: int = 0  # the data generator's seed (the held-out splits are drawn from it)
    max_cases_per_split: int = 0  # 0 = every held-out case
    max_tasks: int = 0  # multi-step tasks; 0 = all
    max_steps: int = 5
    max_tokens: int = 96


def same_value(gold: Any, got: Any) -> bool:
    """Argument equality as a caller would accept it: numbers by value, strings ignoring case and edge
    spaces, lists and objects element by element."""
    if isinstance(gold, bool) or isinstance(got, bool):
        return gold is got
    if isinstance(gold, (int, float)) and isinstance(got, (int, float)):
        return abs(gold - got) < 1e-9
    if isinstance(gold, str) and isinstance(got, str):
        return gold.strip().casefold() == got.strip().casefold()
    if isinstance(gold, list) and isinstance(got, list):
        return len(gold) == len(got) and all(same_value(a, b) for a, b in zip(gold, got))
    if isinstance(gold, dict) and isinstance(got, dict):
        return gold.keys() == got.keys() and all(same_value(gold[k], got[k]) for k in gold)
    return False


def score_decision(example, reply) -> dict[str, Any]:
    """One held-out decision: what was expected, what the model did, and how each measure scores it."""
    gold = example.gold.get("call")
    call = reply.tool_calls[0] if reply.tool_calls else None
    row = {
        "id": example.id,
        "split": example.split,
        "kind": example.kind,
        "should_call": gold is not None,
        "called": call is not None,
        "got": (f"{call.name}({json.dumps(call.arguments)})" if call else f"text: {reply.text[:80]!r}"),
        "tokens": reply.usage.input_tokens + reply.usage.output_tokens,
    }
    row["decision_ok"] = row["called"] == row["should_call"]
    if gold is not None:
        name_ok = call is not None and call.name == gold["name"]
        args = call.arguments if name_ok else {}
        row.update(
            expected=f"{gold['name']}({json.dumps(gold['arguments'])})",
            name_ok=name_ok,
            args_total=len(gold["arguments"]),
            args_ok=sum(k in args and same_value(v, args[k]) for k, v in gold["arguments"].items()),
            exact=name_ok and same_value(gold["arguments"], args),
        )
    else:
        row.update(expected="no call (text)", name_ok=None, args_total=0, args_ok=0, exact=None)
    return row


def run_multistep(llm, task, max_steps: int, max_tokens: int) -> dict[str, Any]:
    """One held-out task through the Phase 13 loop with the real tools."""

    toolbox = Toolbox([t for t in RESEARCH_TOOLS if t.name in task.tools], retries=0)
    agent = run_agent(llm, task.question, toolbox, tool_choice="required", max_steps=max_steps, max_tokens=max_tokens)
    gold = float(task.contains[0])
    solved = check(Task(task.id, task.question, gold, "number", tolerance=max(abs(gold) * 0.01, 1e-9)), agent.answer)
    trail = " → ".join(c["name"] for s in agent.steps for c in s.tool_calls) or "none"
    return {
        "id": task.id,
        "question": task.question,
        "gold": task.contains[0],
        "answer": agent.answer or "",
        "solved": solved,
        "stop": agent.stop_reason,
        "steps": len(agent.steps),
        "trail": trail,
        "tokens": agent.input_tokens + agent.output_tokens,
    }


def training_curve(ctx: RunContext, log: dict[str, Any]) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(log["loss_steps"], log["losses"], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title(f"Tool-use LoRA on {EMBEDDED_LLM.label}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(ctx.artifact("training_curve.png"), dpi=110)
    plt.close(fig)


def run(cfg: Config, ctx: RunContext) -> None:

    data = generate(seed=cfg.seed)
    cases = [
        e
        for split in DECISION_SPLITS
        for e in (data.heldout[split][: cfg.max_cases_per_split] if cfg.max_cases_per_split else data.heldout[split])
    ]
    tasks = data.multistep[: cfg.max_tasks] if cfg.max_tasks else data.multistep
    ctx.dataset(
        "phase13_react.tool_use_data (held-out splits)",
        len(cases) + len(tasks),
        None,
        seed=cfg.seed,
        train_sha256=data.sha256(),
        decision_cases=len(cases),
        multistep_tasks=len(tasks),
    )
    tuned_is_published = cfg.tuned_llm == AGENT_SPEC
    if tuned_is_published:
        record = check_published()
        ctx.metric(
            "adapter_recipe",
            record["recipe_sha256"][:12],
            "",
            description=f"recipe sha256 of the published {AGENT_LLM} adapter (phase13_react/published/)",
        )
        log = json.loads((PUBLISHED / "training_log.json").read_text())
        training_curve(ctx, log)
        ctx.metric("train_steps", log["steps"], "steps")
        ctx.metric("train_loss_first", log["losses"][0], "loss", False)
        ctx.metric("train_loss_final", log["losses"][-1], "loss", False)
        ctx.metric("train_time_s", log["train_time_s"], "s", False, "one epoch on 2 CPU cores (published log)")

    results: dict[str, dict[str, Any]] = {}
    for label, spec in (("base", cfg.base_llm), ("tuned", cfg.tuned_llm)):
        llm = from_spec(spec)
        ctx.model(**llm.describe())
        decisions = [
            score_decision(
                e,
                llm.chat(
                    e.messages,
                    system=e.system,
                    tools=e.tools,
                    tool_choice="auto",
                    parallel_tool_calls=False,
                    max_tokens=cfg.max_tokens,
                ),
            )
            for e in ctx.progress(cases, f"{label}: held-out decisions")
        ]
        multistep = [
            run_multistep(llm, t, cfg.max_steps, cfg.max_tokens)
            for t in ctx.progress(tasks, f"{label}: held-out multi-step tasks")
        ]
        results[label] = {"decisions": decisions, "multistep": multistep}

    counts: dict[str, dict[str, tuple[int, int]]] = {}
    rows = []
    for label, res in results.items():
        d, m = res["decisions"], res["multistep"]
        calls = [r for r in d if r["should_call"]]
        none_fits = [r for r in d if not r["should_call"]]
        declined = [r for r in d if not r["called"]]
        counts[label] = {
            "decision": (sum(r["decision_ok"] for r in d), len(d)),
            "exact": (sum(bool(r["exact"]) for r in calls), len(calls)),
            "args": (sum(r["args_ok"] for r in calls), sum(r["args_total"] for r in calls)),
            "irrelevance": (sum(not r["called"] for r in none_fits), len(none_fits)),
            "precision": (sum(not r["should_call"] for r in declined), len(declined)),
            "multistep": (sum(r["solved"] for r in m), len(m)),
        }
        for key, name, _ in MEASURES:
            record_rate(ctx, f"{name}_{label}", *counts[label][key], f"{label}: {DESCRIPTIONS[key]}")
        tokens = sum(r["tokens"] for r in m) / len(m) if m else None
        ctx.metric(
            f"tokens_per_task_{label}",
            tokens,
            "tokens",
            False,
            f"{label}: prompt + output tokens per multi-step task, all steps",
        )
        for split in DECISION_SPLITS:
            part = [r for r in d if r["split"] == split]
            if part:
                rows.append(
                    [
                        label,
                        split,
                        interval_text(sum(r["decision_ok"] for r in part), len(part)),
                        _share([r for r in part if r["should_call"]], "exact"),
                    ]
                )
    ctx.table(
        "decisions_by_split",
        rows,
        ["model", "held-out split", "decision accuracy [95% CI] (n)", "exact calls"],
        title="Decisions with tool_choice auto, per held-out split",
    )
    ctx.table(
        "base_vs_tuned",
        [[title, *(interval_text(*counts[label][key]) for label in ("base", "tuned"))] for key, _, title in MEASURES],
        ["measure", f"base {EMBEDDED_LLM.label}", f"tuned ({AGENT_LLM})"],
        title="Held-out before/after: rate [95% Wilson CI] (n)",
    )

    separate = {k: _separate(counts["base"][k], counts["tuned"][k]) for k in ("decision", "multistep")}
    ctx.metric(
        "decision_intervals_separate",
        separate["decision"],
        "",
        description="the tuned model's decision-accuracy interval lies wholly above the base model's",
    )
    ctx.metric(
        "multistep_intervals_separate",
        separate["multistep"],
        "",
        description="the tuned model's multi-step interval lies wholly above the base model's",
    )

    misses = [
        [r["split"], r["id"], r["expected"], r["got"]]
        for r in results["tuned"]["decisions"]
        if not r["decision_ok"] or r.get("exact") is False
    ]
    misses += [
        ["heldout_multistep", r["id"], r["gold"], f"{r['trail']} → {r['answer'][:60]!r} ({r['stop']})"]
        for r in results["tuned"]["multistep"]
        if not r["solved"]
    ]
    ctx.table(
        "tuned_misses",
        misses[:60],
        ["split", "case", "expected", "tuned model did"],
        title=f"The tuned model's misses ({len(misses)} in all; first 60)",
    )
    ctx.table(
        "multistep_tasks",
        [
            [label, r["id"], r["gold"], r["answer"][:50], "yes" if r["solved"] else "no", r["trail"], r["stop"]]
            for label, res in results.items()
            for r in res["multistep"]
        ],
        ["model", "task", "gold", "answer", "solved", "tool calls", "stop"],
        title="Held-out multi-step tasks",
    )
    for label in ("base", "tuned"):
        kinds = Counter(
            "missed call" if r["should_call"] else "call when none fits"
            for r in results[label]["decisions"]
            if not r["decision_ok"]
        )
        for kind, count in sorted(kinds.items()):
            ctx.failure_mode(f"{label}: {kind} on {count} held-out decision(s)")

    b, t = (ctx.metrics[f"decision_accuracy_{x}"]["value"] for x in ("base", "tuned"))
    mb, mt = (ctx.metrics[f"multistep_success_{x}"]["value"] for x in ("base", "tuned"))
    ctx.finding(
        f"On {len(cases)} held-out decisions with tool_choice auto, decision accuracy went from {b:.2f} "
        f"(base) to {t:.2f} (tuned); the 95% intervals {'do not overlap' if separate['decision'] else 'overlap'}."
    )
    if tasks:
        ctx.finding(
            f"On {len(tasks)} held-out multi-step tasks over the real tools, {mb:.2f} (base) vs {mt:.2f} "
            f"(tuned) were answered with the right number; the intervals "
            f"{'do not overlap' if separate['multistep'] else 'overlap'}."
        )


def _share(rows: list[dict[str, Any]], key: str) -> str:
    return f"{sum(bool(r[key]) for r in rows)}/{len(rows)}" if rows else "—"


def _separate(base: tuple[int, int], tuned: tuple[int, int]) -> bool | None:
    """Does the tuned model's 95% interval lie wholly above the base model's? (None without cases)"""

    if not base[1] or not tuned[1]:
        return None
    return rate_interval(*tuned)[0] > rate_interval(*base)[1]


EXERCISE = Exercise(
    id="phase13.tool_tuning",
    title=f"Tool-use tuning of the {EMBEDDED_LLM.size_label} model: base vs tuned on held-out decisions and multi-step "
    "tasks",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}},
    tiny={"max_cases_per_split": 2, "max_tasks": 1, "max_steps": 3, "max_tokens": 48},
    summary_metrics=(
        "decision_accuracy_base",
        "decision_accuracy_tuned",
        "multistep_success_base",
        "multistep_success_tuned",
        "exact_call_accuracy_tuned",
    ),
    methods={"cpu": "substitute: a technique the seed does not train (Phase 9 LoRA SFT applied to tool use)"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
