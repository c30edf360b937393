"""13.2 ReAct from scratch: Thought → Action → Observation, the same loop driven two ways.

The loop itself is ``phase13_react.loop.run_agent`` (read it top to bottom: a step budget, stop
conditions — an answer, ``max_steps``, the same action repeated, a provider error — and a record of
every step). This exercise runs it on one task set twice:

- native tool calling (``tools=`` on the provider; ``tool_choice="required"`` plus a ``final_answer``
  tool, so a local model's every turn is a grammar-constrained, valid call), and
- the text ReAct format (``Thought:`` / ``Action:`` / ``Action Input:`` / ``Final Answer:``) parsed
  out of free text, which nothing constrains.

It reports, per mode and per model (the tool-tuned agent model, the base model's row beside it):
valid-step rate (steps the loop could act on as asked), task success (the research checker), each
with its n and 95% interval, steps, tokens — and keeps every step's trace (``trace.json``).
"""

from __future__ import annotations

import json
from collections import Counter

from lab import ConfigError, Exercise, ExerciseConfig, RunContext
from lab.stats import interval_text, record_rate
from phase13_react.loop import run_agent
from phase13_react.research_tools import calculator, kv_cache_gb, read_result_metric
from phase13_react.served import A100_LLM, BASE_SPEC, agent_llm, model_rows
from phase13_react.tasks import check, load_tasks
from phase13_react.tools import Toolbox

MODES = ("native", "text")


class Config(ExerciseConfig):
    llm: str | None = None  # the agent model (lab.llm spec); default $LAB_LLM, else lab.models.AGENT_SPEC
    baseline_llm: str | None = None  # the row beside it (cpu: the base chat model); None = the agent model alone
    tasks: str | None = None  # a tasks JSONL (default: the research task set)
    task_ids: list[str] = []  # [] = every task
    n_tasks: int = 0  # 0 = all selected
    max_steps: int = 4
    max_tokens: int = 128


def run(cfg: Config, ctx: RunContext) -> None:

    tasks = load_tasks(cfg.tasks)
    if cfg.task_ids:
        by_id = {t.id: t for t in tasks}
        missing = [i for i in cfg.task_ids if i not in by_id]
        if missing:
            raise ConfigError(f"task_ids {missing} are not in the tasks file (ids: {', '.join(by_id)})")
        tasks = [by_id[i] for i in cfg.task_ids]
    tasks = tasks[: cfg.n_tasks] if cfg.n_tasks else tasks
    ctx.dataset(str(cfg.tasks or "phase13_react/data/research_tasks.jsonl"), len(tasks), None)
    toolbox = Toolbox([kv_cache_gb, calculator, read_result_metric], retries=0)

    trace, rows, table, findings = [], [], [], []
    for label, spec in model_rows(cfg.llm, cfg.baseline_llm):
        with agent_llm(ctx, spec) as (llm, _served):
            tool_choice = "required" if llm.provider == "local" else "auto"
            summary = {}
            for mode in MODES:
                runs = []
                for task in ctx.progress(tasks, f"{label}: {mode} ReAct"):
                    agent_run = run_agent(
                        llm,
                        task.question,
                        toolbox,
                        mode=mode,
                        tool_choice=tool_choice,
                        max_steps=cfg.max_steps,
                        max_tokens=cfg.max_tokens,
                    )
                    runs.append((task, agent_run))
                    trace.append({"model": spec, "mode": mode, "task": task.id, **agent_run.to_dict()})
                    for s in agent_run.steps:
                        action = ", ".join(f"{c['name']}({json.dumps(c['arguments'])[:50]})" for c in s.tool_calls)
                        rows.append(
                            [
                                label,
                                mode,
                                task.id,
                                s.index + 1,
                                s.model_text[:70].replace("\n", " "),
                                action or ("answer" if s.answer is not None else ""),
                                ", ".join(s.outcomes()) or "ok",
                                (s.answer or "")[:40],
                            ]
                        )
                steps = [st for _, r in runs for st in r.steps]
                solved = sum(check(t, r.answer) for t, r in runs)
                valid = sum(st.valid for st in steps)
                record_rate(
                    ctx,
                    f"valid_step_rate_{mode}_{label}",
                    valid,
                    len(steps),
                    f"{spec}, {mode}: steps the loop could act on as asked (n = steps)",
                )
                record_rate(
                    ctx, f"success_{mode}_{label}", solved, len(runs), f"{spec}, {mode}: tasks answered correctly"
                )
                ctx.metric(f"steps_{mode}_{label}", len(steps) / len(runs), "steps/task", higher_is_better=False)
                tokens = sum(r.input_tokens + r.output_tokens for _, r in runs) / len(runs)
                ctx.metric(f"tokens_{mode}_{label}", tokens, "tokens/task", higher_is_better=False)
                stops = Counter(r.stop_reason for _, r in runs)
                summary[mode] = (valid, len(steps), solved, len(runs), len(steps) / len(runs), tokens)
                table.append(
                    [
                        label,
                        spec,
                        mode,
                        interval_text(valid, len(steps)),
                        interval_text(solved, len(runs)),
                        round(len(steps) / len(runs), 2),
                        round(tokens),
                        ", ".join(f"{k}×{v}" for k, v in sorted(stops.items())),
                    ]
                )
                for reason, count in sorted(stops.items()):
                    if reason != "answer":
                        ctx.failure_mode(f"{label} ({spec}), {mode}: {count} of {len(runs)} tasks stopped by {reason}")
            n, t = summary["native"], summary["text"]
            findings.append(
                f"{label} ({spec}): valid steps {n[0]}/{n[1]} native vs {t[0]}/{t[1]} text ReAct; tasks "
                f"solved {n[2]}/{n[3]} vs {t[2]}/{t[3]}; {n[4]:.1f} vs {t[4]:.1f} steps and {n[5]:.0f} vs "
                f"{t[5]:.0f} tokens per task."
            )
    ctx.metric("n_tasks", len(tasks), "tasks")
    ctx.table(
        "modes",
        table,
        [
            "row",
            "model",
            "mode",
            "valid-step rate [95% CI] (n steps)",
            "success [95% CI] (n tasks)",
            "steps/task",
            "tokens/task",
            "stop reasons",
        ],
        title=f"Native tool calls vs text ReAct (max {cfg.max_steps} steps; local models: tool_choice=required)",
    )
    ctx.table(
        "trace",
        rows,
        ["row", "mode", "task", "step", "model text", "action", "outcomes", "answer"],
        title="Every step (Thought → Action → Observation)",
    )
    ctx.artifact("trace.json").write_text(json.dumps(trace, indent=1, ensure_ascii=False, default=str))
    for text in findings:
        ctx.finding(text)
    ctx.finding(
        "Native calls on a local model are decoded under a grammar (valid by construction); the text format "
        "is free text the model must get right by itself. Validity is not success: a valid call with the "
        "wrong arguments still answers nothing."
    )


EXERCISE = Exercise(
    id="phase13.react_loop",
    title="ReAct from scratch: native tool calls vs the text Thought/Action/Observation format",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"baseline_llm": BASE_SPEC, "max_steps": 3},
        "a100": {"task_ids": [], "max_steps": 6, "max_tokens": 256, "llm": A100_LLM},
    },
    tiny={"n_tasks": 1, "max_steps": 2, "max_tokens": 48},
    smoke={"n_tasks": 1, "max_steps": 2, "max_tokens": 48},
    summary_metrics=(
        "valid_step_rate_native_agent",
        "valid_step_rate_text_agent",
        "success_native_agent",
        "success_text_agent",
        "success_native_base",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
