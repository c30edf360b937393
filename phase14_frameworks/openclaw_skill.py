"""14.2 — OpenClaw, measured from the wire: what it sends the model, and a content-engine skill.

OpenClaw is an agent you configure rather than write: its system prompt, tool list and skill
catalog are built for you on every turn. ``openclaw_dissection.md`` reads the installed package to
explain how; this exercise measures it. The pinned OpenClaw runs headless
(``openclaw agent exec … --json``, ``openclaw_runner``), its model provider pointed at ``lab serve``
through a recording proxy (``model_recorder``), so every request it makes is kept: system prompt
size and tokens, tools offered, whether the ``content-engine`` skill's description reached the
prompt, and the tool calls the model answered with.

The skill (``skills/content-engine/``: SKILL.md + ``scripts/content_engine.py``) lets the agent
start a content-engine job and read its status over the engine's HTTP API. Whether its command
ran is not inferred from the model's words: the engine API counts the ``POST /jobs`` it received.
With ``engine_url`` unset that API is ``engine_double`` (the Phase 16 wire contract, recording;
Phase 14 may not import Phase 16); with ``engine_url`` it is a real engine you started.

Two agent configurations (``variants``), each given one turn per topic (``topics``) with every model
in ``llms`` (the tool-tuned agent model first, the base SmolLM2 beside it):

- ``default``: OpenClaw's own defaults for a headless run (the ``coding`` tool profile, every
  eligible bundled skill in the catalog) — what you get out of the box;
- ``narrow``: tool policy ``tools.allow: [read, exec]`` with Tool Search off (``tools.toolSearch:
  false``: no ``tool_search``/``tool_describe``/``tool_call`` meta-tools), OpenClaw's tool-loop guard on
  (``tools.loopDetection``: a turn of repeated calls is stopped, ``loop_stopped``) and the skill allowlist
  ``agents.defaults.skills: [content-engine]`` — a single-purpose content-engine agent.

OpenClaw is told the model's real window (8,192 tokens for SmolLM2). Its own estimate of a prompt is
not the model's tokenizer, and a first turn has no history to compact, so the default configuration's
first request can still be larger than the window: the server refuses it (413
``context_length_exceeded``) and that turn's outcome is ``context_overflow`` — counted per
configuration, never read as "the model did not use the skill". Skill use is a rate over the turns
that fit (first request inside the window, ``OUTCOMES``); a turn that fit and later outgrew the window
— the model's own calls and their results piling up — is ``history_overflow``, one of them.

And a control turn (``control``): the same path with a scripted OpenAI-wire "model" that follows
OpenClaw's skill instructions literally (``scripted_model``), so a failure of the real model is
told apart from a broken skill.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import statistics
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from lab import Exercise, ExerciseConfig, RunContext
from lab.results import redact_text
from lab.serve import openai_protocol as op
from lab.serve.background import serving
from lab.stats import record_rate
from phase13_react.served import A100_LLM, AGENT_SPEC, BASE_SPEC, agent_llm
from phase14_frameworks import openclaw_runner as runner
from phase14_frameworks.engine_double import EngineDouble
from phase14_frameworks.model_recorder import ModelRecorder
from phase14_frameworks.openclaw_runner import is_loopback, read_front_matter
from phase14_frameworks.scripted_model import scripted_model

SKILL = "content-engine"
HOSTED_CONTEXT_WINDOW = 200_000  # what OpenClaw is told for a hosted model whose window it cannot ask
TOPICS = (
    "vector databases",
    "KV caching",
    "LoRA fine-tuning",
    "retrieval-augmented generation",
    "mixture-of-experts routing",
    "speculative decoding",
    "4-bit quantization",
    "prompt injection defences",
    "LLM judges",
    "agent checkpoints",
)
# What one turn came to, checked in this order: the engine API received POST /jobs; the server refused the
# turn's FIRST request as larger than the model's window (the configuration does not fit); it refused a later
# one (the turn fit, then its history — tool calls and results — grew past the window); OpenClaw's tool-loop
# guard stopped the turn (calls repeated without progress); the turn ran out of time; OpenClaw reported another
# error; the turn finished without starting a job.
OUTCOMES = ("skill_ran", "context_overflow", "history_overflow", "loop_stopped", "timeout", "error", "no_job")
LOOP_GUARD = re.compile(r"tool[- ]loop|critical loop|repeated \d+ times with identical", re.I)
MODEL_SLUGS = {AGENT_SPEC: "agent", BASE_SPEC: "base"}


class Config(ExerciseConfig):
    topics: list[str] = list(TOPICS)  # one turn per topic, per configuration and model
    message: str = "Start a content-engine job about {topic}."
    variants: list[Literal["default", "narrow"]] = ["default", "narrow"]
    control: bool = True  # also run the scripted skill user (the path works without a real model)
    max_tokens: int = 256  # the model's output budget, as declared to OpenClaw
    context_window: int | None = None  # declared to OpenClaw; None: the local model's own, else 200k
    timeout_s: int = 600  # one turn's deadline (openclaw agent exec --timeout)
    engine_url: str | None = None  # a running content-engine API; None: the recording double
    strace: bool = True  # run turns under `strace -f -e trace=connect` (when strace exists)
    llms: list[str] | None = None  # lab.llm specs; None: ``llm`` alone, else the agent model and the base
    llm: str | None = None  # one model alone (--llm / $LAB_LLM; the a100 profile's served Llama)


def model_specs(cfg: Config) -> list[str]:
    """The models to run: ``llms``, else ``--llm``/``$LAB_LLM`` alone, else the tool-tuned agent model with
    the base SmolLM2 beside it (its row shows what the tuning changed)."""
    if cfg.llms:
        return list(cfg.llms)
    if cfg.llm or os.environ.get("LAB_LLM"):
        return [cfg.llm or os.environ["LAB_LLM"]]
    return [AGENT_SPEC, BASE_SPEC]


def model_slug(spec: str) -> str:
    """A model's name in metric names: ``agent`` and ``base`` for the embedded pair, else the spec made safe."""
    return MODEL_SLUGS.get(spec) or re.sub(r"\W+", "_", spec.split(":", 1)[-1].split("@")[0]).strip("_").lower()


def outcome(turn, exchanges, ran: bool) -> str:
    """One turn's outcome (``OUTCOMES``) from the engine's count, the recorded requests and OpenClaw's envelope."""
    if ran:
        return "skill_ran"
    if exchanges[:1] and exchanges[0].context_overflow:
        return "context_overflow"
    if any(ex.context_overflow for ex in exchanges) or re.search(
        r"context.{0,20}(window|length|overflow)", turn.error or "", re.I
    ):
        return "history_overflow" if exchanges else "context_overflow"
    if LOOP_GUARD.search(f"{turn.error or ''} {turn.reply or ''}"):
        return "loop_stopped"
    if turn.status == "timeout" or turn.exit_code in (2, 124):
        return "timeout"
    if turn.exit_code != 0 or turn.status != "ok":
        return "error"
    return "no_job"


def token_counter(llm):
    """Count an OpenAI request body with the served model's tokenizer, as ``lab serve`` renders it
    (None for hosted models: their tokenizers are not public)."""

    def count(body: dict[str, Any]) -> int | None:
        try:
            request = op.ChatCompletionRequest.model_validate(body)
            return llm.count_tokens(**op.to_chat_kwargs(request, 512))
        except Exception:  # a body lab serve itself would refuse: no count rather than a crash
            return None

    return count


def jobs_seen(engine, engine_url: str) -> int:
    """Jobs the engine API has been asked for: the double's recorded POSTs, a real engine's job list."""
    if engine is not None:
        return len(engine.posts)
    import httpx  # noqa: PLC0415 (httpx loads only on the path that uses it)

    return len(httpx.get(f"{engine_url}/jobs", timeout=30).raise_for_status().json())


def measure_configuration(
    ctx: RunContext,
    name: str,
    root: Path,
    *,
    model_url: str,
    api_key: str,
    model: str,
    cfg: Config,
    messages: list[str],
    context_window: int,
    engine,
    engine_url: str,
    narrow: bool,
    count_tokens=None,
) -> dict[str, Any]:
    """One OpenClaw configuration behind a recorder, one headless turn per message (each a fresh session):
    what its first request held, and per turn the run record, the tool calls and the outcome."""

    description = read_front_matter(runner.SKILLS_DIR / SKILL / "SKILL.md")["description"]
    recorder = ModelRecorder(model_url)
    turns: list[dict[str, Any]] = []
    with recorder:
        setup = runner.make_setup(
            root / name,
            base_url=recorder.url,
            api_key=api_key,
            model=model,
            context_window=context_window,
            max_tokens=cfg.max_tokens,
            narrow=narrow,
            env={"CONTENT_ENGINE_URL": engine_url},
        )
        listed = {s["name"]: s for s in runner.skills_list(setup)}
        skill_md = str(setup.workspace / "skills" / SKILL / "SKILL.md")
        for i, message in enumerate(messages):
            first, posts_before = len(recorder.exchanges), jobs_seen(engine, engine_url)
            strace_log = setup.root / f"connect-{i}.strace" if cfg.strace and shutil.which("strace") else None
            turn = runner.run_turn(setup, message, timeout_s=cfg.timeout_s, strace_log=strace_log)
            exchanges = recorder.exchanges[first:]
            calls = [c for ex in exchanges for c in ex.reply_tool_calls]
            ran = jobs_seen(engine, engine_url) > posts_before
            turns.append(
                {
                    "message": message,
                    "turn": turn,
                    "outcome": outcome(turn, exchanges, ran),
                    "requests": len(exchanges),
                    "model_calls": [c["name"] for c in calls],
                    "read_skill_file": any(c["name"] == "read" and skill_md in c["arguments"] for c in calls),
                    "connects": sorted(set(runner.connect_destinations(strace_log))) if strace_log else None,
                }
            )
    rows = recorder.summary(count_tokens, needles={"skill_name": f"<name>{SKILL}</name>", "description": description})
    first = rows[0] if rows else {}
    if recorder.exchanges:
        prompt = recorder.exchanges[0].system_prompt.replace(str(setup.root), "<root>")
        ctx.artifact(f"system_prompt_{name}.txt").write_text(redact_text(prompt), encoding="utf-8")
    return {
        "name": name,
        "turns": turns,
        "skill_eligible": bool(listed.get(SKILL, {}).get("eligible")),
        "skills_in_catalog": sum(1 for s in listed.values() if s.get("eligible") and s.get("modelVisible")),
        "system_prompt_chars": first.get("system_prompt_chars"),
        "system_prompt_tokens": first.get("system_prompt_tokens"),
        "prompt_tokens": first.get("prompt_tokens"),
        "tools_offered": first.get("tools_offered"),
        "tool_names": first.get("tool_names") or [],
        "tools_json_chars": first.get("tools_json_chars"),
        "skill_name_in_prompt": bool(first.get("in_system_prompt", {}).get("skill_name")),
        "description_in_prompt": bool(first.get("in_system_prompt", {}).get("description")),
        "context_window": context_window,
    }


def run(cfg: Config, ctx: RunContext) -> None:

    try:
        versions = runner.versions()
    except runner.OpenClawMissing as exc:
        ctx.skip(str(exc))
    ctx.table(
        "toolchain",
        [["openclaw", versions["openclaw"]], ["node", versions["node"]]],
        columns=["program", "version"],
        title="The pinned toolchain this run used",
    )
    if not cfg.topics:
        raise ValueError("topics: at least one topic (one turn per topic)")
    messages = [cfg.message.format(topic=t) for t in cfg.topics]
    with ExitStack() as servers:  # a served model's server (the a100 profile's) found or started for the run
        llms = [servers.enter_context(agent_llm(ctx, spec))[0] for spec in model_specs(cfg)]
        run_turns(cfg, ctx, llms, messages)


def run_turns(cfg: Config, ctx: RunContext, llms: list, messages: list[str]) -> None:
    """Every configuration x model turn against ``lab serve``, then the scripted control."""

    engine = None if cfg.engine_url else EngineDouble()
    if engine is not None:
        ctx.set_method(
            "substitute: the content-engine API is engine_double, a recording double of the Phase 16 "
            "wire contract (POST /jobs, GET /jobs/{id}); pass engine_url to drive a real engine"
        )
    api_key = f"sk-lab-{secrets.token_hex(8)}"
    root = Path(tempfile.mkdtemp(prefix="openclaw-skill-"))
    results: list[dict[str, Any]] = []
    try:
        with (
            serving(llms, api_key=api_key) as lab_url,
            engine.serving() if engine is not None else _given(cfg.engine_url) as engine_url,
        ):
            runs = [(v, llm) for v in cfg.variants for llm in llms]
            for variant, llm in ctx.progress(runs, "OpenClaw configurations x models against lab serve"):
                window = cfg.context_window or llm.context_window or HOSTED_CONTEXT_WINDOW
                r = measure_configuration(
                    ctx,
                    f"{variant}_{model_slug(llm.spec)}",
                    root,
                    model_url=lab_url,
                    api_key=api_key,
                    model=llm.model,
                    cfg=cfg,
                    messages=messages,
                    context_window=window,
                    engine=engine,
                    engine_url=engine_url,
                    narrow=variant == "narrow",
                    count_tokens=token_counter(llm),
                )
                results.append({**r, "variant": variant, "model": llm.spec, "slug": model_slug(llm.spec)})
            control = None
            if cfg.control:
                with scripted_model(SKILL) as scripted:
                    control = measure_configuration(
                        ctx,
                        "control",
                        root,
                        model_url=scripted.url,
                        api_key=api_key,
                        model="scripted",
                        cfg=cfg,
                        messages=messages[:1],
                        context_window=HOSTED_CONTEXT_WINDOW,
                        engine=engine,
                        engine_url=engine_url,
                        narrow=True,
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(ctx, results, control)


class _given:
    """``with _given(url) as u`` — a URL someone else serves, in the shape of ``serving()``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


def calls_made(turns: list[dict[str, Any]], top: int = 3) -> str:
    """The tools the model called most in ``turns``: "exec x35, read x35" (or "no tool")."""
    calls = Counter(c for t in turns for c in t["model_calls"])
    return ", ".join(f"{name} x{k}" for name, k in calls.most_common(top)) or "no tool"


def tally(result: dict[str, Any]) -> dict[str, int]:
    """Turns per outcome (every outcome present, zeros included)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for t in result["turns"]:
        counts[t["outcome"]] += 1
    return counts


def report(ctx: RunContext, results: list[dict[str, Any]], control: dict[str, Any] | None) -> None:
    """Per configuration and model: outcome counts, skill use over the turns that fit (n, 95% interval);
    the first request's sizes; tables of turns; findings."""

    rows, turn_rows = [], []
    for r in results:
        key, counts = r["name"], tally(r)
        fit = len(r["turns"]) - counts["context_overflow"]
        ctx.metric(f"turns_{key}", len(r["turns"]), "turns")
        ctx.metric(
            f"context_overflow_{key}",
            counts["context_overflow"],
            "turns",
            higher_is_better=False,
            description=f"turns whose first request the server refused as larger than the {r['context_window']}-"
            f"token window (the configuration does not fit), of {len(r['turns'])}",
        )
        ctx.metric(
            f"history_overflow_{key}",
            counts["history_overflow"],
            "turns",
            higher_is_better=False,
            description=f"turns that fit, then a later request of the turn passed the {r['context_window']}-token "
            "window (history grown by the model's calls and their results)",
        )
        record_rate(
            ctx,
            f"skill_use_{key}",
            counts["skill_ran"],
            fit,
            f"turns that fit the window in which the engine API received POST /jobs ({r['variant']}, {r['model']})",
        )
        ctx.metric(f"system_prompt_chars_{key}", r["system_prompt_chars"], "chars", higher_is_better=False)
        ctx.metric(f"tools_offered_{key}", r["tools_offered"], "tools")
        if r["prompt_tokens"] is not None:
            ctx.metric(
                f"prompt_tokens_{key}",
                r["prompt_tokens"],
                "tokens",
                higher_is_better=False,
                description="first request of the configuration, counted with the served model's tokenizer",
            )
        latencies = [t["turn"].latency_s for t in r["turns"]]
        ctx.metric(
            f"turn_latency_s_{key}",
            round(statistics.median(latencies), 2),
            "s",
            higher_is_better=False,
            description=f"median over {len(latencies)} turns",
        )
        rows.append(
            [
                r["variant"],
                r["model"],
                len(r["turns"]),
                *[counts[o] for o in OUTCOMES],
                fit,
                f"{counts['skill_ran']}/{fit}" if fit else "n/a (0 fit)",
                r["system_prompt_chars"],
                r["prompt_tokens"],
                r["context_window"],
                r["tools_offered"],
                r["skills_in_catalog"],
                r["description_in_prompt"],
                round(statistics.median(latencies), 1),
            ]
        )
    for r in results + ([control] if control else []):
        for t in r["turns"]:
            turn = t["turn"]
            turn_rows.append(
                [
                    r["name"],
                    t["message"],
                    t["outcome"],
                    turn.exit_code,
                    turn.status,
                    t["requests"],
                    ", ".join(t["model_calls"]) or "none",
                    t["read_skill_file"],
                    round(turn.latency_s, 1),
                    (turn.error or turn.reply)[:160],
                ]
            )
    ctx.table(
        "configurations",
        rows,
        columns=[
            "configuration",
            "model",
            "turns",
            *OUTCOMES,
            "turns that fit",
            "skill used (of fit)",
            "system prompt chars",
            "first request tokens",
            "window declared",
            "tools offered",
            "skills in catalog",
            "description in prompt",
            "median latency s",
        ],
        title="Outcomes per configuration and model (one fresh headless turn per topic)",
    )
    ctx.table(
        "turns",
        turn_rows,
        columns=[
            "run",
            "message",
            "outcome",
            "exit",
            "status",
            "model requests",
            "tool calls",
            "read SKILL.md",
            "latency s",
            "error or reply (160 chars)",
        ],
        title="Every OpenClaw turn",
    )
    ctx.table(
        "tools_offered",
        [[r["name"], ", ".join(r["tool_names"]), r["tools_json_chars"]] for r in results],
        columns=["run", "tools offered on the first request", "tool schemas chars"],
        title="The tool list OpenClaw sends (after tool policy)",
    )
    if control is not None:
        ran = int(control["turns"][0]["outcome"] == "skill_ran")
        ctx.metric(
            "control_skill_command_ran",
            ran,
            "bool",
            higher_is_better=True,
            description="the scripted model's turn (a control: never pooled with a real model)",
        )
    head = results[0] if results else control
    if head is None:
        return
    ctx.metric(
        "system_prompt_chars",
        head["system_prompt_chars"],
        "chars",
        higher_is_better=False,
        description=f"first request of the {head['name']} run",
    )
    for field in ("system_prompt_tokens", "prompt_tokens"):
        if head[field] is not None:
            ctx.metric(
                field,
                head[field],
                "tokens",
                higher_is_better=False,
                description=f"first request of the {head['name']} run",
            )
    ctx.metric("tools_offered", head["tools_offered"], "tools")
    ctx.metric(
        "skill_visible",
        int(head["skill_name_in_prompt"] and head["description_in_prompt"]),
        "bool",
        higher_is_better=True,
        description="skill name and full description in the system prompt",
    )
    ctx.metric(
        "turn_latency_s",
        round(statistics.median(t["turn"].latency_s for t in head["turns"]), 2),
        "s",
        higher_is_better=False,
        description=f"median turn of the {head['name']} run",
    )
    connects = sorted(
        {d for r in results + ([control] if control else []) for t in r["turns"] for d in t["connects"] or []}
    )
    if any(t["connects"] is not None for r in results for t in r["turns"]):
        off_machine = [d for d in connects if not is_loopback(d)]
        ctx.metric("non_loopback_connects", len(off_machine), "connects", higher_is_better=False)
        ctx.finding(
            f"Under strace, OpenClaw's process trees made connect() calls to {len(connects)} distinct "
            f"destinations, {len(off_machine)} of them off this machine"
            + (
                f" ({', '.join(off_machine)})."
                if off_machine
                else ": only the loopback model proxy, the engine API and local sockets."
            )
        )
    findings(ctx, results, control)


def findings(ctx: RunContext, results: list[dict[str, Any]], control: dict[str, Any] | None) -> None:
    by_variant: dict[str, dict[str, Any]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], r)  # the first model's run of each configuration
    if "default" in by_variant and "narrow" in by_variant:
        d, n = by_variant["default"], by_variant["narrow"]
        ctx.finding(
            f"Out of the box a headless OpenClaw turn sends a {d['system_prompt_chars']}-character system "
            f"prompt and {d['tools_offered']} tools ({d['tools_json_chars']} characters of schemas), with "
            f"{d['skills_in_catalog']} skills in the catalog; tool policy (read, exec) and a one-skill "
            f"allowlist cut that to {n['system_prompt_chars']} characters, {n['tools_offered']} tools and "
            f"{n['skills_in_catalog']} skill(s)."
        )
    for r in results:
        counts, n = tally(r), len(r["turns"])
        tokens = f"{r['prompt_tokens']} tokens" if r["prompt_tokens"] is not None else "its size unknown"
        if counts["context_overflow"]:
            ctx.failure_mode(
                f"{r['name']}: context_overflow in {counts['context_overflow']} of {n} turns — the first "
                f"request ({tokens}) does not fit the {r['context_window']}-token window OpenClaw was "
                "told; OpenClaw's own estimate let it through and a first turn has no history to "
                "compact, so the server refused it (413 context_length_exceeded). These turns say "
                "nothing about the model's skill use and are left out of its rate."
            )
        if counts["history_overflow"]:
            grown = [t for t in r["turns"] if t["outcome"] == "history_overflow"]
            made = calls_made(grown)
            ctx.failure_mode(
                f"{r['name']}: history_overflow in {counts['history_overflow']} of {n} turns — the first request "
                f"({tokens}) fit the {r['context_window']}-token window, then after a median of "
                f"{statistics.median(t['requests'] for t in grown):.0f} model requests (calls: {made}) the "
                "turn's history outgrew it. These turns count as skill misses: the model had the window."
            )
        if not r["description_in_prompt"]:
            ctx.failure_mode(
                f"{r['name']}: the skill's full description was not in the system prompt "
                "(OpenClaw shortens skill descriptions when the prompt is large for the declared "
                "context window)."
            )
        if counts["loop_stopped"]:
            stopped = [t for t in r["turns"] if t["outcome"] == "loop_stopped"]
            made = calls_made(stopped)
            ctx.failure_mode(
                f"{r['name']}: loop_stopped in {counts['loop_stopped']} of {n} turns — OpenClaw's tool-loop guard "
                f"(tools.loopDetection) ended the turn after a median of "
                f"{statistics.median(t['requests'] for t in stopped):.0f} model requests that repeated calls "
                f"without progress ({made}), never the skill's command."
            )
        if counts["no_job"]:
            made = calls_made([t for t in r["turns"] if t["outcome"] == "no_job"], top=5)
            ctx.failure_mode(
                f"{r['name']}: no job in {counts['no_job']} of {n} turns that ended normally; the model "
                f"called {made} (OpenClaw's tool-search tools included), never the skill's command."
            )
        fit = n - counts["context_overflow"]
        if fit:
            others = ", ".join(f"{o} {counts[o]}" for o in OUTCOMES[2:] if counts[o])
            ctx.finding(
                f"{r['variant']} configuration, {r['model']}: the engine received POST /jobs in "
                f"{counts['skill_ran']} of the {fit} turns that fit the window"
                + (f" (the rest: {others})." if others else ".")
            )
    if control is not None:
        t = control["turns"][0]
        verdict = "received" if t["outcome"] == "skill_ran" else "did NOT receive"
        ctx.finding(
            f"Control: a scripted model that follows OpenClaw's skill instructions literally called "
            f"{', '.join(t['model_calls']) or 'no tool'} and the engine API {verdict} POST /jobs, "
            f"in {t['turn'].latency_s:.1f} s — the skill path itself "
            f"{'works' if t['outcome'] == 'skill_ran' else 'is broken'}, so a real model's miss is the model's."
        )


EXERCISE = Exercise(
    id="phase14.openclaw_skill",
    title="OpenClaw measured at the wire, extended with a content-engine skill",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},  # agent model + base SmolLM2 through lab serve: 10 turns x (default, narrow) each, + control
        "a100": {"llm": A100_LLM},  # same turns on Llama 3.1 8B behind vLLM / lab serve (or --llm another)
    },
    # the smallest run that shows both behaviours: one overflowing default turn, one narrow turn, the control
    tiny={"topics": ["vector databases"], "llms": [AGENT_SPEC], "max_tokens": 8, "control": True},
    smoke={"topics": ["vector databases"], "variants": ["narrow"], "max_tokens": 8, "control": True},
    # the base model's row is in the result's tables; the tiny run (agent model only) emits these
    summary_metrics=(
        "skill_use_narrow_agent",
        "context_overflow_default_agent",
        "system_prompt_chars",
        "tools_offered",
        "turn_latency_s",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
