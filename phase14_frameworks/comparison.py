"""14.4 — The same research tasks through raw Phase 13 code, LangGraph, CrewAI (and OpenClaw's numbers).

Every framework call goes to one model behind one meter (``metered``): the raw loop calls it
in-process, LangGraph and CrewAI reach it through ``lab serve``. So LLM calls, tokens, prompt size
and wall time are counted the same way for each, and the differences are the frameworks'. Lines of
code are counted from the adapter modules themselves (non-blank lines that are not comments or
docstrings), not typed in. OpenClaw's column comes from the committed ``phase14.openclaw_skill``
result (one headless turn against ``lab serve``), since a turn costs ~20 s of its own.

The capability rows (crash recovery, checkpoint/resume, human in the loop, observability, prompt
control) name what each offers, with the measured evidence where this repo has it. "When to choose
each" is computed from the table's numbers.
"""

from __future__ import annotations

import io
import json
import time
import tokenize
import uuid
from pathlib import Path
from statistics import mean

from lab import Exercise, ExerciseConfig, RunContext
from phase13_react.served import A100_LLM

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-lab-p14-compare"
ADAPTERS = {  # what was written to run the agent in each way
    "raw Phase 13": ["phase13_react/loop.py"],
    "LangGraph": ["phase14_frameworks/langgraph_research.py"],
    "CrewAI": ["phase14_frameworks/crew.py"],
    "OpenClaw": ["phase14_frameworks/openclaw_runner.py"],
}
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
    "OpenClaw": {
        "crash recovery": "sessions kept by the gateway as transcripts; a turn in flight is lost",
        "checkpoint/resume": "session transcripts, compaction",
        "human in the loop": "chat channels (the human is the other side of the conversation)",
        "observability": "--json turn envelope, gateway logs",
        "prompt control": "low: OpenClaw builds the system prompt; skills and workspace files add to it",
    },
}


class Config(ExerciseConfig):
    llm: str | None = None  # lab.llm spec; default $LAB_LLM or the embedded SmolLM2
    tasks: str | None = None  # Phase 13 task file (JSONL); default: the Phase 13 research task set
    n_tasks: int = 3
    tools: list[str] = []  # Phase 13 research tools offered ([] = all)
    max_steps: int = 5
    max_tokens: int = 192
    frameworks: list[str] = ["raw Phase 13", "LangGraph", "CrewAI"]
    openclaw_result: str = "results/phase14/openclaw_skill/cpu/result.json"
    langgraph_result: str = "results/phase14/langgraph_agent/cpu/result.json"


def code_lines(path: Path) -> int:
    """Non-blank lines holding code: comments, docstrings and blank lines do not count."""
    source = path.read_text(encoding="utf-8")
    lines: set[int] = set()
    previous = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            if tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                previous = tok.type
            continue
        is_docstring = tok.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        previous = tok.type
        if not is_docstring:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines)


def metrics_of(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return {k: v["value"] for k, v in json.loads(path.read_text(encoding="utf-8"))["metrics"].items()}


def run(cfg: Config, ctx: RunContext) -> None:
    from phase13_react.served import agent_llm

    with agent_llm(ctx, cfg.llm) as (llm, _):
        compare(cfg, ctx, llm)


def compare(cfg: Config, ctx: RunContext, model) -> None:
    from lab.hashing import sha256_file
    from lab.serve.background import serving
    from phase13_react.loop import run_agent
    from phase13_react.research_tools import RESEARCH_TOOLS
    from phase13_react.tasks import TASKS_FILE, check, load_tasks
    from phase13_react.tools import Toolbox
    from phase14_frameworks import langgraph_research as lr
    from phase14_frameworks.crew import as_crewai_tools, crew_llm, isolated_home, research_crew
    from phase14_frameworks.metered import MeteredLLM

    unknown = [f for f in cfg.frameworks if f not in ADAPTERS or f == "OpenClaw"]
    if unknown:
        raise ValueError(f"frameworks: {unknown} not runnable here; choose from {[f for f in ADAPTERS if f != 'OpenClaw']}")
    tasks = load_tasks(cfg.tasks)
    chosen = tasks[:cfg.n_tasks] if cfg.n_tasks else tasks
    ctx.dataset(cfg.tasks or "phase13_react/data/research_tasks.jsonl", n=len(chosen),
                sha256=sha256_file(Path(cfg.tasks or TASKS_FILE)))
    toolbox = Toolbox([t for t in RESEARCH_TOOLS if not cfg.tools or t.name in cfg.tools])
    metered = MeteredLLM(model)
    measured: dict[str, list[dict]] = {f: [] for f in cfg.frameworks}

    def measure(framework: str, task, go) -> None:
        mark, started = metered.mark(), time.perf_counter()
        try:
            answer, error = go(task), None
        except Exception as exc:  # a framework that fails on a task is a measured outcome
            answer, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        calls = metered.since(mark)
        measured[framework].append({"ok": check(task, answer), "wall": time.perf_counter() - started,
                                    "error": error, **metered.totals(mark),
                                    "prompt_chars": mean(c.prompt_chars for c in calls) if calls else 0})

    with serving(metered, api_key=API_KEY) as url:
        saver = lr.open_saver(lr.database_url())
        graph = lr.build_graph(lr.chat_model(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens), toolbox,
                               checkpointer=saver)
        runners = {
            "raw Phase 13": lambda t: run_agent(metered, t.question, toolbox, tool_choice="required",
                                                max_steps=cfg.max_steps, max_tokens=cfg.max_tokens).answer,
            "LangGraph": lambda t: lr.run_thread(graph, f"p14-cmp-{t.id}-{uuid.uuid4().hex[:6]}",
                                                 lr.initial_state(t.question, cfg.max_steps)).get("answer"),
        }
        with isolated_home():
            llm = crew_llm(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens)
            runners["CrewAI"] = lambda t: research_crew(llm, t.question, as_crewai_tools(toolbox)).kickoff().raw
            for task in ctx.progress(chosen, "tasks × frameworks"):
                for framework in cfg.frameworks:
                    measure(framework, task, runners[framework])
        saver.conn.close()

    lg = metrics_of(ROOT / cfg.langgraph_result)
    oc = metrics_of(ROOT / cfg.openclaw_result)
    rows, summary = [], {}
    for framework in ADAPTERS:
        loc = sum(code_lines(ROOT / p) for p in ADAPTERS[framework] if (ROOT / p).is_file())
        caps = CAPABILITIES[framework]
        runs = measured.get(framework)
        if runs:
            s = {"loc": loc, "success": sum(r["ok"] for r in runs) / len(runs), "calls": mean(r["calls"] for r in runs),
                 "tokens": mean(r["input_tokens"] + r["output_tokens"] for r in runs),
                 "wall": mean(r["wall"] for r in runs), "prompt_chars": mean(r["prompt_chars"] for r in runs),
                 "errors": sum(r["error"] is not None for r in runs)}
            summary[framework] = s
            slug = framework.split()[0].lower()
            for key in ("success", "calls", "tokens", "wall", "prompt_chars"):
                ctx.metric(f"{key}_{slug}", s[key], {"success": "fraction", "calls": "calls/task",
                           "tokens": "tokens/task", "wall": "s/task", "prompt_chars": "chars/call"}[key],
                           {"success": True, "prompt_chars": None}.get(key, False))
            ctx.metric(f"loc_{slug}", loc, "lines", False)
            for r in runs:
                if r["error"]:
                    ctx.failure_mode(f"{framework}: {r['error']}")
            cells = [len(runs), loc, round(s["success"], 2), round(s["calls"], 1), round(s["tokens"]),
                     round(s["wall"], 1), round(s["prompt_chars"])]
        elif framework == "OpenClaw" and oc:
            ctx.metric("loc_openclaw", loc, "lines", False)
            cells = [0, loc, None, None, oc.get("prompt_tokens"), oc.get("turn_latency_s"), oc.get("system_prompt_chars")]  # its system prompt alone
            ctx.finding(f"OpenClaw: not run on the task set here; its column is one headless turn from "
                        f"{cfg.openclaw_result} ({oc.get('system_prompt_chars')} system-prompt chars, "
                        f"{oc.get('tools_offered')} tools offered, {oc.get('turn_latency_s')} s).")
        else:
            why = "its result JSON is missing" if framework == "OpenClaw" else "not in this run's frameworks"
            ctx.failure_mode(f"{framework}: not measured ({why})")
            cells = [0, loc or None, None, None, None, None, None]
        crash = caps["crash recovery"]
        if framework == "LangGraph" and lg and lg.get("nodes_reexecuted_after_crash") is not None:
            crash += f" (measured: {lg['nodes_reexecuted_after_crash']} finished nodes re-run after SIGKILL)"
        rows.append([framework, *cells, crash, caps["checkpoint/resume"], caps["human in the loop"],
                     caps["observability"], caps["prompt control"]])
    ctx.table("comparison", rows, ["framework", "tasks", "lines of code", "success", "LLM calls/task", "tokens/task",
                                   "wall s/task", "prompt chars/call", "crash recovery", "checkpoint/resume",
                                   "human in the loop", "observability", "prompt control"],
              title="One research task set, four ways (numbers counted at the same model server)")
    if summary:
        when_to_choose(ctx, summary, lg)


def when_to_choose(ctx: RunContext, s: dict[str, dict], lg: dict | None) -> None:
    """Findings from the table's numbers only."""
    cheapest = min(s, key=lambda f: s[f]["tokens"])
    smallest = min(s, key=lambda f: s[f]["loc"])
    best = max(s, key=lambda f: (s[f]["success"], -s[f]["tokens"]))
    ctx.finding(f"Fewest tokens per task: {cheapest} ({s[cheapest]['tokens']:.0f}, "
                + ", ".join(f"{f} {v['tokens']:.0f}" for f, v in s.items() if f != cheapest) + ").")
    ctx.finding(f"Least code to write: {smallest} ({s[smallest]['loc']} lines, "
                + ", ".join(f"{f} {v['loc']}" for f, v in s.items() if f != smallest) + ").")
    if len({v["success"] for v in s.values()}) == 1:
        ctx.finding(f"Success does not separate them: every framework scored {s[best]['success']:.0%} on these tasks.")
    else:
        ctx.finding(f"Highest success: {best} ({s[best]['success']:.0%}); "
                    + ", ".join(f"{f} {v['success']:.0%}" for f, v in s.items() if f != best) + ".")
    if "CrewAI" in s and "raw Phase 13" in s and s["raw Phase 13"]["prompt_chars"]:
        ratio = s["CrewAI"]["prompt_chars"] / s["raw Phase 13"]["prompt_chars"]
        ctx.finding(f"Prompt size: CrewAI's prompts averaged {s['CrewAI']['prompt_chars']:.0f} chars per call, "
                    f"{ratio:.1f}× the raw loop's {s['raw Phase 13']['prompt_chars']:.0f} (its frame is text you do "
                    "not write).")
    if "LangGraph" in s and "raw Phase 13" in s:
        extra = s["LangGraph"]["loc"] - s["raw Phase 13"]["loc"]
        proof = (f"{lg['nodes_reexecuted_after_crash']} nodes re-run after SIGKILL, "
                 f"{lg['checkpoints_per_run']:.1f} checkpoints/run" if lg else "see phase14.langgraph_agent")
        ctx.finding(f"Choose LangGraph when a run must survive its process or wait for a human: "
                    f"{extra:+d} lines vs the raw loop buy checkpoints, resume and interrupts ({proof}).")
    ctx.finding("Choose the raw loop when you need every prompt and every step under your hand and can "
                "persist steps yourself; choose CrewAI for quick role pipelines whose prompt frame you "
                "accept; OpenClaw when the agent lives in chat channels with its own tools and sessions.")


EXERCISE = Exercise(
    id="phase14.comparison",
    title="Raw Phase 13 vs LangGraph vs CrewAI vs OpenClaw on one research task set",
    run=run,
    config_cls=Config,
    profiles={"cpu": {"n_tasks": 2, "max_steps": 4}, "a100": {"n_tasks": 0, "max_steps": 8, "max_tokens": 512, "llm": A100_LLM}},
    tiny={"n_tasks": 1, "max_steps": 2, "max_tokens": 32, "tools": ["calculator"]},
    summary_metrics=("success_raw", "success_langgraph", "success_crewai", "tokens_raw", "tokens_langgraph",
                     "tokens_crewai"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
