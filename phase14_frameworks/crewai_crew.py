"""14.3 — A CrewAI crew (Researcher → Writer → Editor) writing a short post from the repo's notes.

CrewAI's promise is that roles, goals and backstories plus a process ("sequential") are enough to
get a pipeline of agents. What it hides is the prompt: each agent's system prompt is assembled from
its role, goal and backstory, each task from its description, expected output and the previous
task's output, and — when the model is not trusted with native function calls — a ReAct text
format whose ``Final Answer:`` marker the reply must carry. This lesson runs the same crew both
ways (the Researcher holds Phase 13 tools, which is what brings the text format in) against ``lab serve`` and counts everything at the server (``metered``): calls and tokens per
agent, the reply each agent produced, and how the replies fared against CrewAI's format. CrewAI's
own token count is recorded beside the server's, because a framework's accounting is a claim.

CrewAI runs with its telemetry off and its HOME in a temporary folder (``crew.isolated_home``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

from lab import Exercise, ExerciseConfig, RunContext
from lab.serve.background import serving
from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.served import A100_LLM, agent_llm
from phase13_react.tools import Toolbox
from phase14_frameworks.crew import as_crewai_tools, content_crew, crew_llm, isolated_home, text_format_report
from phase14_frameworks.metered import RecordingLLM

API_KEY = "sk-lab-p14-crew"
ROLES = ("Researcher", "Writer", "Editor")


class Config(ExerciseConfig):
    llm: str | None = None  # lab.llm spec served through lab serve; default $LAB_LLM or the embedded SmolLM2
    note: str = "phase12_rag_storage/notes/phase08_architecture.md"
    topic: str = "the KV cache"
    note_chars: int = 1500  # excerpt of the note given to the Researcher
    max_tokens: int = 256
    formats: list[Literal["native", "text"]] = ["native", "text"]
    researcher_tools: list[str] = ["search_notes", "read_chunk"]  # Phase 13 research tools for the Researcher


def excerpt(path: Path, topic: str, limit: int) -> str:
    """The note's paragraphs that mention the topic's words (else its opening), up to ``limit`` chars."""
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    words = [w for w in re.findall(r"\w+", topic.lower()) if len(w) > 3]
    hits = [p for p in paragraphs if any(w in p.lower() for w in words)] or paragraphs
    return "\n\n".join(hits)[:limit]


def role_of(call) -> str:
    """Which agent a recorded call came from: CrewAI's system prompt starts with "You are <role>."."""
    match = re.match(r"You are (\w+)", call.system or "")
    return match.group(1) if match else "?"


def run(cfg: Config, ctx: RunContext) -> None:

    with agent_llm(ctx, cfg.llm) as (llm, _):
        run_crew(cfg, ctx, llm)


def run_crew(cfg: Config, ctx: RunContext, model) -> None:

    note = Path(cfg.note) if Path(cfg.note).is_absolute() else Path(__file__).parents[1] / cfg.note
    if not note.is_file():
        raise FileNotFoundError(f"note {note} does not exist (config field 'note')")
    notes = excerpt(note, cfg.topic, cfg.note_chars)
    ctx.dataset(cfg.note, n=1, sha256=None, excerpt_chars=len(notes), topic=cfg.topic)
    unknown = set(cfg.researcher_tools) - {t.name for t in RESEARCH_TOOLS}
    if unknown:
        raise ValueError(f"researcher_tools: unknown {sorted(unknown)}; known: {[t.name for t in RESEARCH_TOOLS]}")
    toolbox = Toolbox([t for t in RESEARCH_TOOLS if t.name in cfg.researcher_tools])
    metered = RecordingLLM(model)
    rows, outputs = [], []
    with serving(metered, api_key=API_KEY) as url, isolated_home():
        import crewai  # noqa: PLC0415 (crewai loads only on the path that uses it)

        ctx.finding(f"CrewAI {crewai.__version__}, telemetry off, HOME isolated in a temporary folder.")
        for fmt in ctx.progress(cfg.formats, "crew runs"):
            llm = crew_llm(f"{url}/v1", API_KEY, metered.model, cfg.max_tokens, text_format=fmt == "text")
            mark, started = metered.mark(), time.perf_counter()
            error = None
            try:
                result = content_crew(llm, cfg.topic, notes, as_crewai_tools(toolbox)).kickoff()
                task_outputs = [o.raw or "" for o in result.tasks_output]
                crewai_tokens = result.token_usage.total_tokens
            except Exception as exc:  # a crew that fails is a result, not a crash of the lesson
                error, task_outputs, crewai_tokens = f"{type(exc).__name__}: {exc}", [], None
            wall = time.perf_counter() - started
            calls, used = metered.since(mark), metered.totals(mark)
            server_tokens = used["input_tokens"] + used["output_tokens"]
            ctx.metric(f"llm_calls_{fmt}", used["calls"], "calls", False)
            ctx.metric(f"tokens_{fmt}", server_tokens, "tokens", False, "counted at lab serve")
            ctx.metric(f"wall_s_{fmt}", wall, "s", False)
            ctx.metric(f"crewai_reported_tokens_{fmt}", crewai_tokens, "tokens", None, "CrewAI's own token_usage")
            ctx.metric(f"empty_outputs_{fmt}", sum(not o.strip() for o in task_outputs), "agents", False)
            for i, role in enumerate(ROLES):
                mine = [c for c in calls if role_of(c) == role]
                text = task_outputs[i] if i < len(task_outputs) else ""
                rows.append(
                    [
                        fmt,
                        role,
                        len(mine),
                        sum(c.input_tokens for c in mine),
                        sum(c.output_tokens for c in mine),
                        len(text),
                        text[:300],
                    ]
                )
                outputs.append((fmt, role, text))
            if error:
                ctx.failure_mode(f"{fmt} format: the crew failed: {error[:300]}")
            if crewai_tokens is not None and crewai_tokens != server_tokens:
                ctx.failure_mode(
                    f"{fmt} format: CrewAI reported {crewai_tokens} tokens, the server counted "
                    f"{server_tokens} over {used['calls']} calls"
                )
            if fmt == "text":
                report = text_format_report(calls)
                for key, value in report.items():
                    ctx.metric(f"text_{key}", value, "replies", None)
                if report["format_misses"]:
                    ctx.failure_mode(
                        f"text format: {report['format_misses']}/{report['format_prompts']} replies carried neither "
                        f"'Final Answer:' nor 'Action:'; CrewAI sent {report['format_retry']} format retries and "
                        f"{report['forced_final_answer']} forced-final-answer prompts, and took the rest as answers"
                    )
            ctx.finding(
                f"{fmt} format: {used['calls']} LLM calls, {server_tokens} tokens at the server, "
                f"{wall:.1f} s; outputs of {', '.join(f'{r} {len(t)} chars' for f, r, t in outputs if f == fmt)}."
            )
    ctx.table(
        "agents",
        rows,
        ["format", "agent", "LLM calls", "input tokens", "output tokens", "output chars", "output (first 300 chars)"],
        title="Each agent's work, counted at lab serve",
    )
    with open(ctx.artifact("posts.md"), "w", encoding="utf-8") as f:
        for fmt, role, text in outputs:
            f.write(f"## {fmt} format — {role}\n\n{text or '_(empty)_'}\n\n")


EXERCISE = Exercise(
    id="phase14.crewai_crew",
    title="A CrewAI crew (Researcher → Writer → Editor) against lab serve: calls, tokens, format failures",
    run=run,
    config_cls=Config,
    profiles={"cpu": {"max_tokens": 160}, "a100": {"max_tokens": 512, "llm": A100_LLM}},
    tiny={"max_tokens": 24, "note_chars": 300, "formats": ["native", "text"], "researcher_tools": ["calculator"]},
    smoke={"max_tokens": 24, "note_chars": 300, "formats": ["native", "text"], "researcher_tools": ["calculator"]},
    summary_metrics=("llm_calls_native", "tokens_native", "llm_calls_text", "text_format_misses"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
