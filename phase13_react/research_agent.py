"""13.3 A stateful research agent: plan → search → read → compute → answer with citations, its state in
PostgreSQL after every step, resumable after a crash.

The tools are earlier phases' work (``phase13_react.research_tools``): the Phase 12 retriever over
this repo's notes and committed result reports, the Phase 8 KV-cache formula, a reader of committed
``result.json`` metrics, a calculator. The questions (``data/research_tasks.jsonl``) are answered by
numbers in those results, so success is checkable (``phase13_react.tasks.check``), and a citation is
correct when it points at the chunk that holds the answer (the task's ``evidence``).

Every step is written to the agent state store (``AgentStateStore``: the embedded PostgreSQL, or
``LAB_DATABASE_URL``) before the next starts. Kill the process mid-run and run it again with
``--set resume=<run_id>`` (the id is in the result and the log): finished steps are loaded, not
redone; ``resumed_steps`` and ``tool_executions`` in the result show it.
"""

from __future__ import annotations

import uuid

from lab import Exercise, ExerciseConfig, RunContext
from lab.stats import interval_text, record_rate
from phase13_react.research import STEPS, research
from phase13_react.research_tools import RESEARCH_TOOLS, notes_index
from phase13_react.served import A100_LLM, BASE_SPEC, agent_llm, model_rows
from phase13_react.state_store import AgentStateStore
from phase13_react.tasks import check, cites_evidence, load_tasks
from phase13_react.tools import Toolbox


class Config(ExerciseConfig):
    llm: str | None = None  # the agent model (lab.llm spec); default $LAB_LLM, else lab.models.AGENT_SPEC
    baseline_llm: str | None = None  # the row beside it (cpu: the base chat model); None = the agent model alone
    tasks: str | None = None  # a tasks JSONL (default: phase13_react/data/research_tasks.jsonl)
    n_tasks: int = 0  # 0 = every task in the file
    resume: str | None = None  # a run id printed by an earlier (killed) run: continue it
    max_tokens: int = 160


def run(cfg: Config, ctx: RunContext) -> None:

    tasks = load_tasks(cfg.tasks)
    tasks = tasks[: cfg.n_tasks] if cfg.n_tasks else tasks
    ctx.dataset(str(cfg.tasks or "phase13_react/data/research_tasks.jsonl"), len(tasks), None)
    store = AgentStateStore()
    base = cfg.resume or f"p13-research-{uuid.uuid4().hex[:10]}"
    ctx.log(f"agent run id {base} (resume with --set resume={base})")
    ctx.metric("run_id", base, "")
    ctx.metric("n_tasks", len(tasks), "tasks")
    index = notes_index()
    toolbox = Toolbox(RESEARCH_TOOLS, retries=1)
    summary = []
    for label, spec in model_rows(cfg.llm, cfg.baseline_llm):
        with agent_llm(ctx, spec) as (llm, _served):
            rows, solved, cited, with_evidence, resumed, executions = [], 0, 0, 0, 0, 0
            steps = calls = tokens = 0
            costs: list[float] = []
            for task in ctx.progress(tasks, f"{label}: research tasks"):
                res = research(
                    llm,
                    task.question,
                    toolbox,
                    store,
                    f"{base}-{label}-{task.id}",
                    max_tokens=cfg.max_tokens,
                    meta={"task_id": task.id, "model": spec},
                )
                ok = check(task, res.run.answer)
                good_cite = any(
                    cites_evidence(task, c, index.chunks[c].text) for c in res.citations if c in index.chunks
                )
                solved += ok
                with_evidence += task.evidence is not None
                cited += good_cite
                resumed += res.run.resumed_from
                executions += res.tool_executions
                steps += len(res.run.steps)
                calls += res.run.tool_calls
                tokens += res.run.input_tokens + res.run.output_tokens
                if res.run.cost_usd is not None:
                    costs.append(res.run.cost_usd)
                trail = " → ".join(
                    f"{s.tool_calls[0]['name']}({s.observations[0]['outcome']})"
                    if s.tool_calls
                    else (s.error or "json")
                    for s in res.run.steps
                )
                rows.append(
                    [
                        task.id,
                        task.answer,
                        (res.run.answer or "")[:60],
                        "yes" if ok else "no",
                        ", ".join(res.citations)[:80] or "none",
                        "yes" if good_cite else "no",
                        trail,
                    ]
                )

            n = len(tasks)
            record_rate(ctx, f"task_success_{label}", solved, n, f"{spec}: research tasks answered correctly")
            record_rate(
                ctx,
                f"citation_accuracy_{label}",
                cited,
                with_evidence,
                f"{spec}: tasks whose citations include the chunk holding the answer",
            )
            ctx.metric(f"steps_per_task_{label}", steps / n, "steps", higher_is_better=False)
            ctx.metric(f"tool_calls_per_task_{label}", calls / n, "calls")
            ctx.metric(f"tokens_per_task_{label}", tokens / n, "tokens", higher_is_better=False)
            ctx.metric(f"cost_usd_{label}", sum(costs) if costs else None, "USD", higher_is_better=False)
            ctx.metric(
                f"resumed_steps_{label}", resumed, "steps", description="steps loaded from the store, not redone"
            )
            ctx.metric(f"tool_executions_{label}", executions, "calls", description="tools run by this process")
            ctx.table(
                f"tasks_{label}",
                rows,
                [
                    "task",
                    "gold",
                    "agent's answer",
                    "correct",
                    "citations",
                    "cites evidence",
                    " → ".join(s.name for s in STEPS),
                ],
                title=f"Research tasks ({label}: {spec})",
            )
            summary.append(
                [
                    label,
                    spec,
                    interval_text(solved, n),
                    interval_text(cited, with_evidence),
                    round(steps / n, 2),
                    round(tokens / n),
                ]
            )
            ctx.finding(
                f"{label} ({spec}): {solved} of {n} tasks answered correctly and {cited} of {with_evidence} "
                f"cited the chunk holding the answer, over {steps} persisted steps ({calls} tool calls, "
                f"{tokens} tokens)."
            )
            if n - solved:
                ctx.failure_mode(
                    f"{label} ({spec}): {n - solved} of {n} tasks answered wrongly or not at all (see tasks_{label})"
                )
            if resumed:
                ctx.finding(
                    f"Resumed run {base} ({label}): {resumed} stored steps were loaded from PostgreSQL and not "
                    f"redone; this process ran {executions} tool calls."
                )
    ctx.table(
        "models",
        summary,
        ["row", "model", "task success [95% CI] (n)", "citation accuracy [95% CI] (n)", "steps/task", "tokens/task"],
        title="Research agent, per model",
    )


EXERCISE = Exercise(
    id="phase13.research_agent",
    title="A stateful 5-step research agent (plan, search, read, compute, cited answer), persisted and resumable",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"baseline_llm": BASE_SPEC},
        "a100": {"llm": A100_LLM, "max_tokens": 256},
    },
    tiny={"n_tasks": 1, "max_tokens": 64},
    smoke={"n_tasks": 1, "max_tokens": 64},
    summary_metrics=(
        "task_success_agent",
        "task_success_base",
        "citation_accuracy_agent",
        "steps_per_task_agent",
        "tokens_per_task_agent",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
