"""16.1 — One job through the whole engine: Researcher → Writer ⇄ Editor → Publisher, measured.

What a single autonomous post costs and how it went: per stage wall time, LLM calls, tokens and
dollars; how many revisions the Editor asked for and what the gate said each time (Phase 11 rubric
judge + ``editor_gate.decide``); how much of the post is cited, two ways — ``citation_coverage_model``
(sentences carrying a marker the MODEL wrote whose chunk lexically supports the sentence: see
``writer.py``) and ``citation_coverage`` (any valid marker, including the ``[n?]`` the code appends to a
paragraph the model left uncited); whether the judge passed calibration in this run (``reviewed``: an
uncalibrated judge's APPROVE publishes the post marked UNREVIEWED, see ``editor.py``); and the outcome —
published, or escalated to a human after the revision limit. Everything goes through the real job store (embedded PostgreSQL +
pgvector by default), so the numbers include the transactions the durability costs.

On the embedded defaults a 135M model writes, judges and retrieves. It is weak: expect thin
prose and low judge scores; the gate is what stops a bad draft from being published, and
ESCALATED is a correct outcome. ``--llm`` swaps in any served or hosted model unchanged. The
tiny config runs the same engine against a scripted OpenAI-compatible server (``scripted_llm``).
The corpus is embedded once into pgvector (the first run on a corpus pays for it: reported apart
as ``corpus_embed_s``, never folded into the Researcher's time).
"""

from __future__ import annotations

import tempfile
import time
import uuid

from lab import Exercise, ExerciseConfig, RunContext
from lab.llm import from_spec
from lab.stats import interval_text, record_rate
from phase12_rag_storage.corpus import corpus_sha256
from phase13_react.served import A100_LLM, agent_llm
from phase16_capstone.engine import Engine, EngineSettings, deploy_for, setting
from phase16_capstone.job_store import JobStore
from phase16_capstone.scripted_llm import scripted_server
from phase16_capstone.writer import marker_counts, model_citations

STAGES = ("researching", "writing", "editing", "publishing")


class Config(ExerciseConfig):
    topic: str = "How does HyDE retrieval help a RAG pipeline find the right chunks?"
    corpus: str | None = setting("corpus")  # default: the repo's notes, READMEs, results overview
    llm: str | None = None  # lab.llm spec; None = --llm / $LAB_LLM / the tuned agent model (served.agent_llm)
    scripted: bool = False  # run against the scripted OpenAI-compatible server (tiny, tests)
    scripted_reject_first: int = 1  # scripted judge: REJECT this many drafts per topic first
    # the engine's settings (EngineSettings): its defaults, the engine as it ships
    k: int = setting("k")
    hyde_max_tokens: int = setting("hyde_max_tokens")
    writer_max_tokens: int = setting("writer_max_tokens")
    max_revisions: int = setting("max_revisions")
    calibration_items: int | None = setting("calibration_items")
    site: str | None = None  # site folder (default: a temporary one)


def run_one(cfg: Config, ctx: RunContext, llm) -> None:

    store = JobStore(namespace=f"p16x_{uuid.uuid4().hex[:8]}")
    site = cfg.site or tempfile.mkdtemp(prefix="phase16-site-")
    settings = EngineSettings.from_config(cfg)
    progress = []
    engine = Engine(store, llm, deploy_for(site), settings, on_event=lambda kind, info: progress.append((kind, info)))
    try:
        started = time.perf_counter()
        index = engine.index(cfg.corpus)
        corpus_s = time.perf_counter() - started
        ctx.dataset(
            cfg.corpus or "repo notes + phase READMEs + results overview",
            n=len(index.docs),
            sha256=corpus_sha256(index.docs),
            chunks=index.n_chunks,
            embedded_now=index.embedded_now,
        )
        job, _ = store.create_job(cfg.topic, "cli", corpus=cfg.corpus)
        started = time.perf_counter()
        engine.work(job_id=job.id)
        job_s = time.perf_counter() - started
        report(ctx, store, engine, job.id, job_s, corpus_s, index)
        calibration = engine.calibration
        ctx.metric(
            "judge_calibration_r",
            calibration.r,
            "r",
            True,
            f"the Editor's judge on {calibration.n} Phase 11 reference-scored responses, this run; approvals "
            f"count as reviews at r >= {calibration.pass_r}" + (f" ({calibration.note})" if calibration.note else ""),
        )
    finally:
        store.drop()
        store.close()


def report(ctx: RunContext, store, engine, job_id: str, job_s: float, corpus_s: float, index) -> None:
    job = store.get(job_id)
    runs = [r for r in store.stage_runs(job_id) if r["status"] == "done"]
    reviews = store.reviews(job_id)
    drafts = store.drafts(job_id)
    rows = []
    for stage in STAGES:
        mine = [r for r in runs if r["stage"] == stage]
        costs = [r["cost_usd"] for r in mine]
        rows.append(
            [
                stage,
                len(mine),
                round(sum(r["seconds"] for r in mine), 3),
                sum(r["detail"].get("llm_calls", 0) for r in mine),
                sum(r["tokens_in"] for r in mine),
                sum(r["tokens_out"] for r in mine),
                None if any(c is None for c in costs) else round(sum(costs), 6),
            ]
        )
    ctx.table(
        "stages",
        rows,
        ["stage", "runs", "seconds", "llm calls", "tokens in", "tokens out", "cost usd"],
        title="Per stage: wall time, LLM calls, tokens, cost (all runs of the stage summed)",
    )

    evidence = {e["n"]: e["text"] for e in store.evidence(job_id)}
    body_of = {d["revision"]: d["body"] for d in drafts}
    ctx.table(
        "revisions",
        [
            [
                r["revision"],
                r["verdict"],
                {True: "yes", False: "no (uncalibrated judge)"}.get(r["reviewed"], "-"),
                *(
                    r["scores"].get(d)
                    for d in ("technical_accuracy", "calibration", "mechanistic_depth", "audience_calibration")
                ),
                r["mean"],
                interval_text(*model_citations(body_of.get(r["revision"], ""), evidence)),
                next((d["coverage"] for d in drafts if d["revision"] == r["revision"]), None),
                marker_counts(body_of.get(r["revision"], ""))["added"],
                "; ".join(r["reasons"])[:240],
            ]
            for r in reviews
        ],
        [
            "revision",
            "verdict",
            "APPROVE counted as review",
            "technical_accuracy",
            "calibration",
            "mechanistic_depth",
            "audience_calibration",
            "mean",
            "model citations supported [95% CI] (n sentences)",
            "coverage incl. code-added",
            "[n?] added by code",
            "reasons",
        ],
        title="Every Editor pass: judge scores, the gate's verdict, whose citations are whose",
    )
    total_in = sum(r[4] for r in rows)
    total_out = sum(r[5] for r in rows)
    costs = [r[6] for r in rows]
    coverage = drafts[-1]["coverage"] if drafts else 0.0
    final = drafts[-1]["body"] if drafts else ""
    supported, n_sentences = model_citations(final, evidence)
    markers = marker_counts(final)
    ctx.metric("outcome", job.state, description="terminal state of the job")
    ctx.metric("revisions", job.revisions, "revisions", description="Writer passes after the first draft")
    record_rate(
        ctx,
        "citation_coverage_model",
        supported,
        n_sentences,
        "final draft: sentences carrying a citation the model wrote whose chunk supports the sentence "
        "(lexical support: >= half the sentence's content words occur in the chunk; token overlap, not "
        "embeddings)",
    )
    ctx.metric(
        "citation_coverage",
        coverage,
        "fraction",
        True,
        f"final draft ({n_sentences} sentences): sentences with any valid marker, including the "
        f"{markers['added']} [n?] the code appended to paragraphs the model left uncited",
    )
    ctx.metric("markers_model", markers["model"], "markers", None, "final draft: [n] markers the model wrote (valid)")
    ctx.metric(
        "markers_added_by_code",
        markers["added"],
        "markers",
        False,
        "final draft: [n?] markers the Writer's code appended (the model cited nothing there)",
    )
    last_review = reviews[-1] if reviews else {}
    ctx.metric(
        "reviewed",
        last_review.get("reviewed"),
        description="True: a calibrated judge approved the post; "
        "False: published UNREVIEWED (the judge had not passed calibration); None: no APPROVE",
    )
    ctx.metric("job_wall_s", round(job_s, 2), "s", False, "claim to terminal state")
    ctx.metric(
        "corpus_embed_s",
        round(corpus_s, 2),
        "s",
        False,
        "opening the corpus index (embedding it when no engine had yet)",
    )
    ctx.metric("tokens_total", total_in + total_out, "tokens", False)
    ctx.metric("cost_usd", None if any(c is None for c in costs) else round(sum(costs), 6), "USD", False)
    ctx.metric("gate_verdicts", " ".join(r["verdict"] for r in reviews) or "none")
    for stage, _, seconds, *_ in rows:
        ctx.metric(f"{stage}_s", seconds, "s", False)
    slowest = max(rows, key=lambda r: r[2])
    ctx.finding(
        f"The job ended {job.state} after {job.revisions} revision(s) in {job_s:.1f} s "
        f"({total_in + total_out} tokens); the slowest stage was {slowest[0]} ({slowest[2]:.1f} s)."
    )
    if reviews:
        ctx.finding(
            "Gate verdicts in order: "
            + ", ".join(
                f"{r['verdict']} (mean {r['mean']:.2f})" if r["mean"] is not None else r["verdict"] for r in reviews
            )
            + f"; final draft: {supported} of {n_sentences} sentences carry a supported citation the model wrote "
            f"(coverage incl. the code's {markers['added']} [n?] markers: {coverage:.2f})."
        )
    if last_review.get("reviewed") is False:
        ctx.failure_mode(
            "Published UNREVIEWED: the Editor's judge approved, but it had not passed calibration in this "
            "run, so its approval is not a review (Phase 11's rule)."
        )
    if not index.embedded_now:
        ctx.finding(
            f"The corpus ({index.n_chunks} chunks) was already embedded in pgvector: opening it took "
            f"{corpus_s:.1f} s and no chunk was re-embedded."
        )
    if job.state == "escalated":
        ctx.failure_mode(
            f"Not published: the Editor's gate rejected every draft and escalated after "
            f"{job.revisions} revision(s) — the gate working as designed on a weak writer."
        )
    if job.state == "failed":
        ctx.failure_mode(f"The job failed: {job.error}")
    if job.post_url:
        ctx.finding(
            f"Published as {job.post_url.rsplit('/', 1)[-1]} with {len(store.citations(job_id, drafts[-1]['revision']))} "
            f"cited chunk(s) and an audit page."
        )


def run(cfg: Config, ctx: RunContext) -> None:

    if cfg.scripted:
        ctx.set_method("substitute: scripted OpenAI-compatible replies in place of a model (an engine check)")
        with scripted_server(reject_first=cfg.scripted_reject_first) as (url, _):
            llm = from_spec(f"openai:scripted@{url}")
            ctx.model(**llm.describe(), role="researcher/writer/editor")
            run_one(cfg, ctx, llm)
        return
    with agent_llm(ctx, cfg.llm, role="researcher/writer/editor") as (llm, _):
        run_one(cfg, ctx, llm)


EXERCISE = Exercise(
    id="phase16.engine_run",
    title="One engine job end to end: stages, tokens, cost, revisions, gate verdicts, citation coverage",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"writer_max_tokens": 160, "hyde_max_tokens": 120, "k": 5, "llm": A100_LLM}},
    tiny={"scripted": True, "corpus": "phase12_rag_storage/notes", "calibration_items": 4},
    smoke={
        "corpus": "phase12_rag_storage/notes",
        "k": 2,
        "hyde_max_tokens": 24,
        "writer_max_tokens": 32,
        "max_revisions": 1,
        "calibration_items": 4,
    },
    summary_metrics=(
        "outcome",
        "reviewed",
        "revisions",
        "citation_coverage_model",
        "citation_coverage",
        "job_wall_s",
        "tokens_total",
    ),
    methods={"cpu": "scaled", "a100": "scaled"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
