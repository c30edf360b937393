"""14.4 — The same tool-using tasks through raw Phase 13 code, LangGraph and CrewAI, per model.

Every framework call goes to one model behind one meter (``metered``): the raw loop calls it
in-process, LangGraph and CrewAI reach it through ``lab serve``. So LLM calls, tokens, prompt size
and wall time are counted the same way for each, and the differences are the frameworks'. Each
model (the tuned agent model, the cpu default, and the base SmolLM2 beside it) runs every task in
every framework in this one run; every rate carries its n and a 95% Wilson interval, every mean a
95% t interval, and a "when to choose" finding is written only where the intervals do not overlap.

Tasks: Phase 13's research set (questions about committed results) plus ``comparison_tasks``
(tool questions derived from formulas); ``--set tasks=FILE.jsonl`` runs any Phase 13 task file instead.

Lines of code are counted on the adapter code that does the same job in each — turn a model
endpoint, the Phase 13 toolbox and a question into an answer — as listed in ``ADAPTERS`` (top-level
definitions by name; non-blank lines that are not comments or docstrings). Measurement, crash-test
and demo code in the same files is left out, and so is the shared toolbox every adapter wraps.

OpenClaw has no column: ``OPENCLAW_ABSENT`` says why (the run records it as a finding).
"""

from __future__ import annotations

import ast
import io
import os
import time
import tokenize
import uuid
from pathlib import Path
from statistics import mean

from lab import Exercise, ExerciseConfig, RunContext
from lab.errors import ConfigError
from lab.hashing import sha256_file
from lab.serve.background import serving
from lab.stats import mean_interval, rate_note, record_rate
from phase13_react.loop import run_agent
from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.served import A100_LLM, AGENT_SPEC, BASE_SPEC, agent_llm
from phase13_react.tasks import TASKS_FILE, check, load_tasks
from phase13_react.tools import Toolbox
from phase14_frameworks import langgraph_research as lr
from phase14_frameworks.comparison_tasks import TASKS_FILE as MORE
from phase14_frameworks.crew import as_crewai_tools, crew_llm, isolated_home, research_crew
from phase14_frameworks.metered import RecordingLLM

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-lab-p14-compare"
MODELS = {"agent": AGENT_SPEC, "base": BASE_SPEC}  # label -> lab.llm spec
SLUGS = {"raw Phase 13": "raw", "LangGraph": "langgraph", "CrewAI": "crewai"}
STEP_CAPPED = ("raw Phase 13", "LangGraph")  # one model call per step, capped at max_steps (CrewAI: its own max_iter)
ADAPTERS = {  # framework -> {file: top-level definitions that turn (endpoint, toolbox, question) into an answer}
    "raw Phase 13": {
        "phase13_react/loop.py": [
            "FINAL_ANSWER",
            "FINAL_ANSWER_TOOL",
            "final_answer_tool",
            "NATIVE_SYSTEM",
            "action_key",
            "messages_from",
            "run_agent",
            "_finish",
            "_ask",
            "_decide",
        ]
    },
    "LangGraph": {
        "phase14_frameworks/langgraph_research.py": [
            "ResearchState",
            "chat_model",
            "as_langchain_tools",
            "FINAL_ANSWER_TOOL_OPENAI",
            "build_graph",
            "initial_state",
            "thread",
            "run_thread",
        ]
    },
    "CrewAI": {"phase14_frameworks/crew.py": ["FINAL_MARKER", "crew_llm", "as_crewai_tools", "research_crew"]},
}
OPENCLAW_ABSENT = (
    "OpenClaw: no column. Its agent acts only through its own tools (read, exec, skills), so the Phase "
    "13 research tools would reach it only through a skill that shells out to them — a different "
    "adapter doing a different job; and its headless turn carries OpenClaw's own system prompt and tool "
    "schemas before the task, which alone do not fit the 8,192-token window of the models compared "
    "here (phase14.openclaw_skill measures its turn on its own)."
)
CAPABILITIES = {  # what each offers, as read from the code in this repo
    "raw Phase 13": {
        "crash recovery": "steps you persist yourself (phase13 AgentStateStore, one row per step) replay on resume",
        "checkpoint/resume": "prior_steps= replays stored steps; nothing else is kept",
        "human in the loop": "write it yourself (stop the loop, store, resume)",
        "observability": "on_step callback; every step is a record",
        "prompt control": "total: you write every message",
    },
    "LangGraph": {
        "crash recovery": "PostgresSaver checkpoint after every node; a new process continues the thread",
        "checkpoint/resume": "any checkpoint, by thread id; get_state_history + replay (time travel)",
        "human in the loop": "interrupt() + Command(resume=...), across processes",
        "observability": "stream modes, LangChain callbacks, the checkpoint history itself",
        "prompt control": "total: nodes are your functions",
    },
    "CrewAI": {
        "crash recovery": "none mid-crew: a killed kickoff starts again (replay(task_id) re-runs from a task)",
        "checkpoint/resume": "task outputs of the last kickoff in a local SQLite file",
        "human in the loop": "human_input=True on a task (console prompt, same process)",
        "observability": "event bus, step/task callbacks",
        "prompt control": "partial: role/goal/backstory/task text; the frame and format are CrewAI's",
    },
}


class Config(ExerciseConfig):
    models: list[str] = list(MODELS)  # labels of MODELS; + "hosted" whenever --llm / $LAB_LLM names another model
    specs: dict[str, str] = dict(MODELS)  # lab.llm spec of each label (a served model may stand in)
    llm: str | None = None  # lab.llm spec of a hosted or served model; default $LAB_LLM
    tasks: str | None = None  # a Phase 13 task file (JSONL); default: Phase 13's research set + comparison_tasks
    n_tasks: int = 0  # >0: the first N tasks only (smoke runs); 0 = all
    tools: list[str] = []  # Phase 13 research tools offered ([] = all)
    max_steps: int = 4
    max_tokens: int = 160
    frameworks: list[str] = list(SLUGS)


def code_line_numbers(source: str) -> set[int]:
    """Line numbers holding code: comments, docstrings and blank lines do not count."""
    lines: set[int] = set()
    previous = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            if tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                previous = tok.type
            continue
        is_docstring = tok.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        previous = tok.type
        if not is_docstring:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def adapter_lines(path: Path, names: list[str]) -> int:
    """Code lines of the named top-level definitions (functions, classes, assignments) of ``path``;
    a name the file does not define is an error, so the count cannot silently shrink."""
    source = path.read_text(encoding="utf-8")
    code = code_line_numbers(source)
    spans: dict[str, range] = {}
    for node in ast.parse(source).body:
        targets = (
            [node.name]
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))
            else [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
        )
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        for name in targets:
            spans[name] = range(first, node.end_lineno + 1)
    missing = [n for n in names if n not in spans]
    if missing:
        raise ValueError(f"{path}: ADAPTERS names {missing}, which it does not define at top level")
    return len(code & set().union(*(set(spans[n]) for n in names)))


def default_tasks():

    return load_tasks(TASKS_FILE) + load_tasks(MORE), [TASKS_FILE, MORE]


def _models(cfg: Config) -> dict[str, str]:
    chosen = {label: cfg.specs[label] for label in cfg.models}
    hosted = cfg.llm or os.environ.get("LAB_LLM")
    if hosted and hosted not in chosen.values():
        chosen["hosted"] = hosted
    return chosen


def run(cfg: Config, ctx: RunContext) -> None:

    unknown = sorted(set(cfg.frameworks) - set(SLUGS)) + sorted(set(cfg.models) - set(cfg.specs))
    if unknown:
        raise ConfigError(
            f"frameworks/models: {unknown} not runnable here; frameworks are {list(SLUGS)}, models "
            f"{list(MODELS)} (OpenClaw: see OPENCLAW_ABSENT)"
        )
    tasks, files = (load_tasks(cfg.tasks), [Path(cfg.tasks)]) if cfg.tasks else default_tasks()
    chosen = tasks[: cfg.n_tasks] if cfg.n_tasks else tasks
    for f in files:
        ctx.dataset(
            str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f), n=len(load_tasks(f)), sha256=sha256_file(f)
        )
    toolbox = Toolbox([t for t in RESEARCH_TOOLS if not cfg.tools or t.name in cfg.tools])
    measured: dict[tuple[str, str], list[dict]] = {}
    for label, spec in _models(cfg).items():
        with agent_llm(ctx, spec, role=label) as (llm, _):  # a served model's server found or started
            measured.update(run_model(cfg, ctx, label, llm, chosen, toolbox))
    report(ctx, cfg, measured, len(chosen))


def run_model(cfg: Config, ctx: RunContext, label: str, llm, tasks: list, toolbox) -> dict:
    """Every task through every framework against one model behind one meter."""

    metered = RecordingLLM(llm)
    measured: dict[tuple[str, str], list[dict]] = {(f, label): [] for f in cfg.frameworks}

    def measure(framework: str, task, go) -> None:
        mark, started = metered.mark(), time.perf_counter()
        try:
            answer, error = go(task), None
        except Exception as exc:  # a framework that fails on a task is a measured outcome
            answer, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        calls = metered.since(mark)
        measured[framework, label].append(
            {
                "task": task.id,
                "ok": check(task, answer),
                "answered": bool(answer and str(answer).strip()),
                "wall": time.perf_counter() - started,
                "error": error,
                **metered.totals(mark),
                "prompt_chars": mean(c.prompt_chars for c in calls) if calls else 0,
            }
        )

    with serving(metered, api_key=API_KEY) as url:
        saver = lr.open_saver(lr.database_url()) if "LangGraph" in cfg.frameworks else None
        runners = {
            "raw Phase 13": lambda t: (
                run_agent(
                    metered,
                    t.question,
                    toolbox,
                    tool_choice="required",
                    max_steps=cfg.max_steps,
                    max_tokens=cfg.max_tokens,
                ).answer
            )
        }
        if saver is not None:
            graph = lr.build_graph(
                lr.chat_model(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens), toolbox, checkpointer=saver
            )
            runners["LangGraph"] = lambda t: lr.run_thread(
                graph, f"p14-cmp-{t.id}-{uuid.uuid4().hex[:6]}", lr.initial_state(t.question, cfg.max_steps)
            ).get("answer")
        with isolated_home():
            llm = crew_llm(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens)
            runners["CrewAI"] = lambda t: research_crew(llm, t.question, as_crewai_tools(toolbox)).kickoff().raw
            for task in ctx.progress(tasks, f"{label}: tasks × frameworks"):
                for framework in cfg.frameworks:
                    measure(framework, task, runners[framework])
        if saver is not None:
            saver.conn.close()
    return measured


def report(ctx: RunContext, cfg: Config, measured: dict, n_tasks: int) -> None:

    loc = {f: sum(adapter_lines(ROOT / path, names) for path, names in files.items()) for f, files in ADAPTERS.items()}
    stats: dict[tuple[str, str], dict] = {}
    rows = []
    for (framework, label), runs in measured.items():
        slug = SLUGS[framework]
        n = len(runs)
        s = {
            "success": record_rate(
                ctx,
                f"success_{slug}_{label}",
                sum(r["ok"] for r in runs),
                n,
                f"{label} through {framework}: tasks answered correctly",
            ),
            "answered": record_rate(
                ctx,
                f"answered_{slug}_{label}",
                sum(r["answered"] for r in runs),
                n,
                f"{label} through {framework}: tasks that ended with an answer (not the step cap or an error)",
            ),
        }
        for key, unit in (("calls", "calls/task"), ("tokens", "tokens/task"), ("wall", "s/task")):
            values = [r["input_tokens"] + r["output_tokens"] if key == "tokens" else r[key] for r in runs]
            ctx.metric(f"{key}_{slug}_{label}", mean(values), unit, False, f"{label} through {framework}: mean of {n}")
            low, high = mean_interval(values)
            s[key] = (mean(values), max(0.0, low), high)  # counts and seconds are never negative
        ctx.metric(f"prompt_chars_{slug}_{label}", mean(r["prompt_chars"] for r in runs), "chars/call", None)
        if framework in STEP_CAPPED:
            ctx.metric(
                f"calls_at_step_cap_{slug}_{label}",
                sum(r["calls"] >= cfg.max_steps for r in runs),
                "tasks",
                None,
                f"tasks whose model calls reached max_steps ({cfg.max_steps}) of {n}",
            )
        stats[framework, label] = s
        errors = [r for r in runs if r["error"]]
        if errors:
            ctx.failure_mode(f"{framework} ({label}): {len(errors)} of {n} tasks raised, e.g. {errors[0]['error']}")
        rows.append(
            [
                framework,
                label,
                n,
                loc[framework],
                rate_note(sum(r["ok"] for r in runs), n),
                rate_note(sum(r["answered"] for r in runs), n),
            ]
            + [f"{s[k][0]:.1f} [{s[k][1]:.1f}, {s[k][2]:.1f}]" for k in ("calls", "tokens", "wall")]
            + [round(mean(r["prompt_chars"] for r in runs)), *CAPABILITIES[framework].values()]
        )
    for framework in {f for f, _ in measured}:
        ctx.metric(f"n_tasks_{SLUGS[framework]}", n_tasks, "tasks", None, f"tasks each model ran through {framework}")
    for framework, lines in loc.items():
        ctx.metric(
            f"loc_{SLUGS[framework]}",
            lines,
            "lines",
            False,
            "code lines of the adapter definitions in ADAPTERS (comments, docstrings, blank lines excluded)",
        )
    ctx.table(
        "comparison",
        rows,
        [
            "framework",
            "model",
            "tasks",
            "adapter lines",
            "correct (k of n, 95% CI)",
            "answered (k of n, 95% CI)",
            "LLM calls/task [95% CI]",
            "tokens/task [95% CI]",
            "wall s/task [95% CI]",
            "prompt chars/call",
            *next(iter(CAPABILITIES.values())),
        ],
        title="One task set through each framework, per model (numbers counted at the same model server)",
    )
    ctx.table(
        "adapter_code",
        [
            [f, path, ", ".join(names), adapter_lines(ROOT / path, names)]
            for f, files in ADAPTERS.items()
            for path, names in files.items()
        ],
        ["framework", "file", "definitions counted", "code lines"],
        title="Lines of code: the definitions that turn (endpoint, toolbox, question) into an answer",
    )
    ctx.finding(
        "Lines of code count only the adapter definitions that do the same job in each framework (table "
        "adapter_code): measurement, crash-test, approval-demo and test-isolation code is left out, and so is "
        "the shared Phase 13 toolbox. " + ", ".join(f"{f} {n}" for f, n in loc.items()) + " lines."
    )
    ctx.finding(OPENCLAW_ABSENT)
    when_to_choose(ctx, stats)


def when_to_choose(ctx: RunContext, stats: dict) -> None:
    """A finding only where one framework's 95% interval lies wholly apart from another's, per model."""
    labels = sorted({label for _, label in stats})
    words = {
        "success": ("answered more tasks correctly than", True),
        "answered": ("ended with an answer more often than", True),
        "calls": ("made fewer LLM calls per task than", False),
        "tokens": ("used fewer tokens per task than", False),
        "wall": ("took less wall time per task than", False),
    }
    separated = 0
    for label in labels:
        fws = [f for f, m in stats if m == label]
        for key, (phrase, higher) in words.items():
            for a in fws:
                for b in fws:
                    sa, sb = stats[a, label][key], stats[b, label][key]
                    if sa is None or sb is None or a == b:
                        continue
                    lo_a, hi_a = sa[-2:]
                    lo_b, hi_b = sb[-2:]
                    if (higher and lo_a > hi_b) or (not higher and hi_a < lo_b):
                        separated += 1
                        ctx.finding(
                            f"{label}: {a} {phrase} {b} — 95% intervals [{lo_a:.2f}, {hi_a:.2f}] vs "
                            f"[{lo_b:.2f}, {hi_b:.2f}] do not overlap."
                        )
    for label in labels:
        rates = {f: stats[f, m]["success"] for f, m in stats if m == label}
        if all(r is not None for r in rates.values()) and all(
            a[0] <= b[1] and b[0] <= a[1] for a in rates.values() for b in rates.values()
        ):
            ctx.finding(
                f"{label}: success does not separate the frameworks (every pair of 95% intervals overlaps): "
                "choose on the capability rows, not on this model's success."
            )
    if not separated:
        ctx.finding("No measured quantity separates the frameworks on these tasks (all 95% intervals overlap).")


EXERCISE = Exercise(
    id="phase14.comparison",
    title="Raw Phase 13 vs LangGraph vs CrewAI on one task set, per model (OpenClaw: why it has no column)",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"n_tasks": 0, "max_steps": 3, "max_tokens": 128},
        "a100": {"n_tasks": 0, "max_steps": 8, "max_tokens": 512, "models": [], "llm": A100_LLM},
    },
    tiny={"n_tasks": 1, "max_steps": 2, "max_tokens": 32, "tools": ["calculator"], "models": ["agent"]},
    smoke={"n_tasks": 1, "max_steps": 2, "max_tokens": 32, "tools": ["calculator"]},
    summary_metrics=(
        "success_raw_agent",
        "success_langgraph_agent",
        "success_crewai_agent",
        "tokens_raw_agent",
        "tokens_langgraph_agent",
        "tokens_crewai_agent",
        "n_tasks_raw",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
