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

Two agent configurations (``variants``):

- ``default``: OpenClaw's own defaults for a headless run (the ``coding`` tool profile, every
  eligible bundled skill in the catalog) — what you get out of the box;
- ``narrow``: tool policy ``tools.allow: [read, exec]`` and the skill allowlist
  ``agents.defaults.skills: [content-engine]`` — a single-purpose content-engine agent.

And a control turn (``control``): the same path with a scripted OpenAI-wire "model" that follows
OpenClaw's skill instructions literally (``scripted_model``), so a failure of the real model is
told apart from a broken skill. ``llm`` picks the model (None → ``--llm``/``$LAB_LLM``, else the
embedded SmolLM2-135M); every model is served through ``lab serve``, so OpenClaw always talks to it.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from lab import Exercise, ExerciseConfig, RunContext
from phase13_react.served import A100_LLM

SKILL = "content-engine"
HOSTED_CONTEXT_WINDOW = 200_000  # what OpenClaw is told for a hosted model whose window it cannot ask


class Config(ExerciseConfig):
    message: str = "Start a content-engine job about vector databases."
    variants: list[Literal["default", "narrow"]] = ["default", "narrow"]
    control: bool = True  # also run the scripted skill user (the path works without a real model)
    max_tokens: int = 256  # the model's output budget, as declared to OpenClaw
    context_window: int | None = None  # declared to OpenClaw; None: the local model's own, else 200k
    timeout_s: int = 600  # one turn's deadline (openclaw agent exec --timeout)
    engine_url: str | None = None  # a running content-engine API; None: the recording double
    strace: bool = True  # run turns under `strace -f -e trace=connect` (when strace exists)
    llm: str | None = None  # lab.llm spec; None: --llm / $LAB_LLM, else the embedded SmolLM2


def token_counter(llm):
    """Count an OpenAI request body with the served model's tokenizer, as ``lab serve`` renders it
    (None for hosted models: their tokenizers are not public)."""
    from lab.serve import openai_protocol as op

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
    import httpx

    return len(httpx.get(f"{engine_url}/jobs", timeout=30).raise_for_status().json())


def measure_turn(ctx: RunContext, name: str, root: Path, *, model_url: str, api_key: str, model: str,
                 cfg: Config, context_window: int, engine, engine_url: str, narrow: bool,
                 count_tokens=None) -> dict[str, Any]:
    """One OpenClaw turn behind a recorder: the run record plus what the requests held."""
    from phase14_frameworks import openclaw_runner as runner
    from phase14_frameworks.model_recorder import ModelRecorder
    from phase14_frameworks.openclaw_runner import read_front_matter

    skill_dir = runner.SKILLS_DIR / SKILL
    description = read_front_matter(skill_dir / "SKILL.md")["description"]
    recorder = ModelRecorder(model_url)
    posts_before = jobs_seen(engine, engine_url)
    with recorder.serving() as url:
        setup = runner.make_setup(root / name, base_url=url, api_key=api_key, model=model,
                                  context_window=context_window, max_tokens=cfg.max_tokens, narrow=narrow,
                                  env={"CONTENT_ENGINE_URL": engine_url})
        listed = {s["name"]: s for s in runner.skills_list(setup)}
        strace_log = setup.root / "connect.strace" if cfg.strace and shutil.which("strace") else None
        turn = runner.run_turn(setup, cfg.message, timeout_s=cfg.timeout_s, strace_log=strace_log)
    rows = recorder.summary(count_tokens, needles={"skill_name": f"<name>{SKILL}</name>", "description": description})
    skill_md = str(setup.workspace / "skills" / SKILL / "SKILL.md")
    calls = [c for ex in recorder.exchanges for c in ex.reply_tool_calls]
    first = rows[0] if rows else {}
    destinations = sorted(set(runner.connect_destinations(strace_log))) if strace_log else None
    if recorder.exchanges:
        prompt = recorder.exchanges[0].system_prompt.replace(str(setup.root), "<root>")
        ctx.artifact(f"system_prompt_{name}.txt").write_text(prompt, encoding="utf-8")
    return {
        "name": name,
        "turn": turn,
        "requests": rows,
        "skill_eligible": bool(listed.get(SKILL, {}).get("eligible")),
        "skill_model_visible": bool(listed.get(SKILL, {}).get("modelVisible")),
        "skills_in_catalog": sum(1 for s in listed.values() if s.get("eligible") and s.get("modelVisible")),
        "system_prompt_chars": first.get("system_prompt_chars"),
        "system_prompt_tokens": first.get("system_prompt_tokens"),
        "prompt_tokens": first.get("prompt_tokens"),
        "tools_offered": first.get("tools_offered"),
        "tool_names": first.get("tool_names") or [],
        "tools_json_chars": first.get("tools_json_chars"),
        "skill_name_in_prompt": bool(first.get("in_system_prompt", {}).get("skill_name")),
        "description_in_prompt": bool(first.get("in_system_prompt", {}).get("description")),
        "model_calls": [c["name"] for c in calls],
        "read_skill_file": any(c["name"] == "read" and skill_md in c["arguments"] for c in calls),
        "skill_command_ran": jobs_seen(engine, engine_url) > posts_before,
        "connects": destinations,
    }


def run(cfg: Config, ctx: RunContext) -> None:
    from phase13_react.served import agent_llm
    from phase14_frameworks import openclaw_runner as runner

    try:  # before any model server starts: without OpenClaw there is nothing to serve
        versions = runner.versions()
    except runner.OpenClawMissing as exc:
        ctx.skip(str(exc))
    ctx.table("toolchain", [["openclaw", versions["openclaw"]], ["node", versions["node"]]],
              columns=["program", "version"], title="The pinned toolchain this run used")
    with agent_llm(ctx, cfg.llm) as (llm, _):
        run_turns(cfg, ctx, llm)


def run_turns(cfg: Config, ctx: RunContext, llm) -> None:
    from lab.serve.background import serving
    from lab.serve.background import serving_app
    from phase14_frameworks.engine_double import EngineDouble
    from phase14_frameworks.scripted_model import scripted_app

    context_window = cfg.context_window or getattr(llm, "context_window", None) or HOSTED_CONTEXT_WINDOW
    ctx.metric("context_window_declared", context_window, "tokens", description="the model's window as told to OpenClaw")

    engine = None if cfg.engine_url else EngineDouble()
    if engine is not None:
        ctx.set_method("substitute: the content-engine API is engine_double, a recording double of the Phase 16 "
                       "wire contract (POST /jobs, GET /jobs/{id}); pass engine_url to drive a real engine")
    api_key = f"sk-lab-{secrets.token_hex(8)}"
    root = Path(tempfile.mkdtemp(prefix="openclaw-skill-"))
    results: list[dict[str, Any]] = []
    try:
        with serving(llm, api_key=api_key) as lab_url, \
                (engine.serving() if engine is not None else _given(cfg.engine_url)) as engine_url:
            for variant in ctx.progress(cfg.variants, "OpenClaw turns against lab serve"):
                results.append(measure_turn(ctx, variant, root, model_url=lab_url, api_key=api_key, model=llm.model,
                                            cfg=cfg, context_window=context_window, engine=engine,
                                            engine_url=engine_url, narrow=variant == "narrow",
                                            count_tokens=token_counter(llm)))
            control = None
            if cfg.control:
                with serving_app(scripted_app(SKILL), name="scripted-model") as scripted_url:
                    control = measure_turn(ctx, "control", root, model_url=scripted_url, api_key=api_key,
                                           model="scripted", cfg=cfg, context_window=HOSTED_CONTEXT_WINDOW,
                                           engine=engine, engine_url=engine_url, narrow=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(ctx, cfg, results, control, llm.spec)


class _given:
    """``with _given(url) as u`` — a URL someone else serves, in the shape of ``serving()``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


def report(ctx: RunContext, cfg: Config, results: list[dict[str, Any]], control: dict[str, Any] | None,
           model: str) -> None:
    """Metrics (the first variant under plain names, every run under its own prefix), tables, findings."""
    rows = []
    for r in results + ([control] if control else []):
        t = r["turn"]
        prefix = r["name"]
        ctx.metric(f"{prefix}_system_prompt_chars", r["system_prompt_chars"], "chars", higher_is_better=False)
        ctx.metric(f"{prefix}_tools_offered", r["tools_offered"], "tools")
        ctx.metric(f"{prefix}_skill_command_ran", int(bool(r["skill_command_ran"])), "bool", higher_is_better=True)
        ctx.metric(f"{prefix}_turn_latency_s", round(t.latency_s, 2), "s", higher_is_better=False)
        rows.append([prefix, "scripted" if prefix == "control" else model, t.exit_code, t.status,
                     r["system_prompt_chars"], r["system_prompt_tokens"], r["prompt_tokens"], r["tools_offered"],
                     r["skills_in_catalog"], r["description_in_prompt"], len(r["requests"]),
                     ", ".join(r["model_calls"]) or "none", r["read_skill_file"], r["skill_command_ran"],
                     round(t.latency_s, 1)])
    ctx.table("turns", rows, columns=["run", "model", "exit", "status", "system prompt chars", "system prompt tokens",
                                      "prompt tokens", "tools offered", "skills in catalog", "description in prompt",
                                      "model requests", "tool calls", "read SKILL.md", "skill command ran",
                                      "latency s"],
              title="One OpenClaw turn per run: what it sent the model and what happened")
    ctx.table("tools_offered", [[r["name"], ", ".join(r["tool_names"]), r["tools_json_chars"]] for r in results],
              columns=["run", "tools offered on the first request", "tool schemas chars"],
              title="The tool list OpenClaw sends (after tool policy)")
    ctx.table("replies", [[r["name"], r["turn"].reply[:300], r["turn"].error or ""] for r in results],
              columns=["run", "final reply (first 300 chars)", "error"], title="What the agent answered")

    head = results[0] if results else control
    if head is None:
        return
    ctx.metric("system_prompt_chars", head["system_prompt_chars"], "chars", higher_is_better=False,
               description=f"first request of the {head['name']} run")
    if head["system_prompt_tokens"] is not None:
        ctx.metric("system_prompt_tokens", head["system_prompt_tokens"], "tokens", higher_is_better=False)
    if head["prompt_tokens"] is not None:
        ctx.metric("prompt_tokens", head["prompt_tokens"], "tokens", higher_is_better=False)
    ctx.metric("tools_offered", head["tools_offered"], "tools")
    ctx.metric("skill_visible", int(head["skill_name_in_prompt"] and head["description_in_prompt"]), "bool",
               higher_is_better=True, description="skill name and full description in the system prompt")
    ctx.metric("skill_command_ran", int(any(r["skill_command_ran"] for r in results)), "bool", higher_is_better=True,
               description="the engine API received POST /jobs during a real-model turn")
    ctx.metric("turn_latency_s", round(head["turn"].latency_s, 2), "s", higher_is_better=False)
    connects = sorted({d for r in results + ([control] if control else []) for d in r["connects"] or []})
    if any(r["connects"] is not None for r in results):
        from phase14_frameworks.openclaw_runner import is_loopback

        off_machine = [d for d in connects if not is_loopback(d)]
        ctx.metric("non_loopback_connects", len(off_machine), "connects", higher_is_better=False)
        ctx.finding(f"Under strace, OpenClaw's process tree made connect() calls to {len(connects)} distinct "
                    f"destinations, {len(off_machine)} of them off this machine"
                    + (f" ({', '.join(off_machine)})." if off_machine else ": only the loopback model proxy, "
                       "the engine API and local sockets."))
    findings(ctx, results, control)


def findings(ctx: RunContext, results: list[dict[str, Any]], control: dict[str, Any] | None) -> None:
    by = {r["name"]: r for r in results}
    if "default" in by and "narrow" in by:
        d, n = by["default"], by["narrow"]
        ctx.finding(f"Out of the box a headless OpenClaw turn sends a {d['system_prompt_chars']}-character system "
                    f"prompt and {d['tools_offered']} tools ({d['tools_json_chars']} characters of schemas), with "
                    f"{d['skills_in_catalog']} skills in the catalog; tool policy (read, exec) and a one-skill "
                    f"allowlist cut that to {n['system_prompt_chars']} characters, {n['tools_offered']} tools and "
                    f"{n['skills_in_catalog']} skill(s).")
    for r in results:
        t = r["turn"]
        window_note = ""
        if r["prompt_tokens"] is not None:
            window_note = f" The first request was {r['prompt_tokens']} prompt tokens."
        if not r["description_in_prompt"]:
            ctx.failure_mode(f"{r['name']}: the skill's full description was not in the system prompt "
                             "(OpenClaw shortens skill descriptions when the prompt is large for the declared "
                             "context window)." + window_note)
        if not r["skill_command_ran"]:
            used = ", ".join(r["model_calls"]) or "no tool"
            ctx.failure_mode(f"{r['name']}: the model did not start a job (it called {used}; exit {t.exit_code}, "
                             f"status {t.status}; reply begins {t.reply[:120]!r}).{window_note}")
    if control is not None:
        verdict = "received" if control["skill_command_ran"] else "did NOT receive"
        ctx.finding(f"Control: a scripted model that follows OpenClaw's skill instructions literally called "
                    f"{', '.join(control['model_calls']) or 'no tool'} and the engine API {verdict} POST /jobs, "
                    f"in {control['turn'].latency_s:.1f} s — the skill path itself "
                    f"{'works' if control['skill_command_ran'] else 'is broken'}, so a real model's miss is the model's.")


EXERCISE = Exercise(
    id="phase14.openclaw_skill",
    title="OpenClaw measured at the wire, extended with a content-engine skill",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},  # embedded SmolLM2-135M through lab serve: default + narrow + control turns
        "a100": {"llm": A100_LLM},  # same turns on Llama 3.1 8B behind vLLM / lab serve (or --llm another)
    },
    tiny={"variants": ["narrow"], "max_tokens": 8, "control": True},  # two turns: 135M + scripted control
    smoke={"variants": ["narrow"], "max_tokens": 8, "control": True},
    summary_metrics=("system_prompt_chars", "tools_offered", "skill_visible", "skill_command_ran", "turn_latency_s"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
