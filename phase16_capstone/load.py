"""16.2 — Many jobs, several worker processes, workers SIGKILLed at five points of a job.

The durability claim of the job store, tested the hard way: N jobs are queued, each with a chat that
is owed a reply (through a loopback double of Telegram's Bot API, ``bot_api_double``); victim worker
*processes* (``python -m phase16_capstone worker``) each die by SIGKILL at one crash point
(``engine.CRASH_POINTS``, set with ``ENGINE_CRASH_AT``): mid-stage (work done, not committed),
between stages, inside publishing (site files deployed, publication not committed), after publishing
before the reply is claimed, and with the reply claimed (``sending``) but not sent. No cleanup, no
goodbye, exactly like a machine dying. Their leases stop being renewed, expire, and surviving workers
claim the jobs and resume them at the last stage that committed; a reply claim left ``sending`` by a
dead sender expires too and is sent by a survivor (a survivor idle with such a reply outstanding
waits for it). What must hold, and is measured rather than assumed:

- **lost jobs = 0**: every job reaches a terminal state;
- **duplicate posts = 0**: one publication row per job, one post page per published job and one
  index entry per post on the site itself (the publisher's idempotence keeps a crash between
  deploying files and committing from doubling a post);
- **exactly one reply per chat**: no chat without its reply, none with two;
- **stages re-executed after a crash = 0** (``JobStore.stages_reexecuted``: finished stages that ran
  again) — and its **negative control** ``nodes_reexecuted_control``: one finished job is rewound to
  ``researching``, as if its later checkpoints were lost, and resumed: the same counter must read > 0,
  or it could not have seen a re-execution in the first place;
- how long jobs took (p50, and the max — p99 only from 100 jobs) from creation to terminal state.

The cpu profile runs the embedded model with small token limits. This exercise measures
coordination, not quality, so the Editor runs in **shadow** (``editor = "shadow"``): the judge scores
every draft as in a gated run (the same work per job) but its verdict is only recorded, and every
draft that passes the output check goes on to publishing, marked UNREVIEWED. Gated, the 135M judge
flags every draft (``engine_run``) and no job would ever reach the two publish-time crash points.
The judge is not calibrated here either (``calibration_items = 0``). The tiny config uses the
scripted OpenAI-compatible server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from lab import Exercise, ExerciseConfig, RunContext
from lab.stats import tail
from phase13_react.served import A100_LLM, agent_llm
from phase16_capstone.bot_api_double import FakeBotAPI
from phase16_capstone.engine import CRASH_POINTS, EngineSettings, setting
from phase16_capstone.job_store import JobStore
from phase16_capstone.researcher import CorpusIndex
from phase16_capstone.scripted_llm import scripted_server


def _crash_points() -> list[str]:

    return list(CRASH_POINTS)


class Config(ExerciseConfig):
    n_jobs: int = 8
    workers: int = 2  # surviving worker processes
    kill_points: list[str] = Field(default_factory=_crash_points)  # one victim worker per point ([]: no kills)
    control: bool = True  # the negative control: rewind one finished job and count its re-executed stages
    calibration_items: int = setting("calibration_items", 0)  # per worker (0: none; posts are UNREVIEWED)
    lease_s: float = setting("lease_s", 10.0)  # a dead worker's job is resumed after this
    llm: str | None = None
    scripted: bool = False  # the scripted OpenAI-compatible server instead of a model
    scripted_delay_s: float = 0.2  # per scripted reply
    # the engine's settings (EngineSettings), smaller than it ships: a job is minutes of CPU
    corpus: str | None = setting("corpus")
    k: int = setting("k", 2)
    hyde_max_tokens: int = setting("hyde_max_tokens", 30)
    writer_max_tokens: int = setting("writer_max_tokens", 40)
    max_revisions: int = setting("max_revisions", 1)
    editor: str = setting("editor", "shadow")  # "gate": the 135M judge's verdicts decide (no job publishes)
    timeout_s: float = 1800.0

    @field_validator("kill_points")
    @classmethod
    def _points(cls, value: list[str]) -> list[str]:
        known = _crash_points()
        unknown = [p for p in value if p not in known]
        if unknown:
            raise ValueError(f"unknown crash point(s) {unknown}; choose from {known}")
        return value


TOPICS = (
    "KV cache memory at long context",
    "why LoRA rank matters",
    "DPO versus PPO",
    "judge calibration",
    "structure-aware chunking",
    "HyDE retrieval",
    "pgvector hybrid queries",
    "mixture-of-experts routing",
    "the editor gate",
    "QLoRA on a CPU",
)


BOT_TOKEN = "4242:load-test-token"  # the Bot API double accepts any token
CHAT_BASE = 7000  # job i's chat id is CHAT_BASE + i


def percentile(values: list[float], q: float) -> float | None:

    return float(np.percentile(values, q)) if values else None


def site_duplicates(site_dir, slugs: list[str]) -> tuple[int, int]:
    """(post pages beyond one per published job, index links beyond one per post) on the deployed site."""

    site = Path(site_dir)
    pages = list((site / "posts").glob("*.html")) if (site / "posts").is_dir() else []
    index = (site / "index.html").read_text(encoding="utf-8") if (site / "index.html").is_file() else ""
    extra_links = sum(max(0, index.count(f"posts/{slug}.html") - 1) for slug in slugs)
    return max(0, len(pages) - len(slugs)), extra_links


def spawn_worker(
    cfg: Config, spec: str, namespace: str, site: str, log_path, bot_url: str | None = None, crash_at: str | None = None
):

    settings = EngineSettings.from_config(cfg, llm=spec, site=site, namespace=namespace)
    cmd = [sys.executable, "-m", "phase16_capstone", "worker", "--exit-when-idle", *settings.argv()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ENGINE_CRASH_AT", None)
    if bot_url:
        env.update(ENGINE_TELEGRAM_TOKEN=BOT_TOKEN, ENGINE_TELEGRAM_API=bot_url)
    if crash_at:
        env["ENGINE_CRASH_AT"] = crash_at
    root = Path(__file__).resolve().parent.parent  # this checkout's packages, not another install's
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def watch(cfg: Config, store, procs, victims: dict, deadline: float):
    """Yield once per job reaching a terminal state. ``victims``: crash point -> its worker process;
    each one's death (return code) is noted in ``victims_dead``. Ends when every job is terminal and
    every chat's reply is sent or given up, the workers are all gone, or the deadline passes."""

    done = 0
    while time.monotonic() < deadline:
        counts = store.count_by_state()
        now_done = sum(counts.get(s, 0) for s in ("published", "escalated", "failed"))
        for _ in range(now_done - done):
            yield
        done = now_done
        if (done >= cfg.n_jobs and not store.unsent_replies()) or all(p.poll() is not None for p in procs):
            return
        time.sleep(0.1)


def victim_job(store, job_ids: list[str], pid: int) -> str | None:
    """The job a worker process (by pid) claimed last: the one it held when it died."""
    claims = [
        (e["at"], j)
        for j in job_ids
        for e in store.events(j)
        if e["kind"] == "claimed" and f":{pid}:" in e["detail"].get("worker", "")
    ]
    return max(claims)[1] if claims else None


def run_load(cfg: Config, ctx: RunContext, spec: str) -> None:

    namespace = f"p16load_{uuid.uuid4().hex[:8]}"
    store = JobStore(namespace=namespace, lease_s=cfg.lease_s)
    workdir = Path(tempfile.mkdtemp(prefix="phase16-load-"))
    site = str(workdir / "site")
    procs = []
    bot = FakeBotAPI()
    try:
        index = CorpusIndex(store.url, cfg.corpus)  # embed once before the workers start: they only search
        ctx.dataset(
            cfg.corpus or "repo notes + phase READMEs + results overview",
            n=len(index.docs),
            sha256=index.sha256,
            chunks=index.n_chunks,
        )
        index.close()
        jobs = [
            store.create_job(f"{TOPICS[i % len(TOPICS)]} ({i + 1})", "load", chat_id=CHAT_BASE + i, corpus=cfg.corpus)[
                0
            ]
            for i in range(cfg.n_jobs)
        ]
        started = time.perf_counter()
        # the victims first, so that each holds a job of its own before the survivors take the rest
        victims = {
            point: spawn_worker(cfg, spec, namespace, site, workdir / f"victim-{point}.log", bot.url, point)
            for point in cfg.kill_points
        }
        wait_until = time.monotonic() + 120
        while (
            victims
            and time.monotonic() < wait_until
            and not {p.pid for p in victims.values()}
            <= {int(owner.split(":")[1]) for _, _, owner in store.leases()}
            | {p.pid for p in victims.values() if p.poll() is not None}
        ):
            time.sleep(0.1)
        procs = list(victims.values()) + [
            spawn_worker(cfg, spec, namespace, site, workdir / f"worker{i}.log", bot.url) for i in range(cfg.workers)
        ]
        for _ in ctx.progress(
            watch(cfg, store, procs, victims, time.monotonic() + cfg.timeout_s), "jobs finished", total=cfg.n_jobs
        ):
            pass
        wall = time.perf_counter() - started
        for p in procs:
            try:
                p.wait(timeout=max(30.0, 3 * cfg.lease_s))
            except Exception:  # noqa: BLE001 — a worker that does not exit is stopped
                p.kill()
        ids = [j.id for j in jobs]
        kills = [kill_record(store, ids, point, proc, bot) for point, proc in victims.items()]
        control = run_control(cfg, store, spec, namespace, site, workdir, ids) if cfg.control else None
        report(ctx, cfg, store, ids, kills, control, wall, site, workdir, bot)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        bot.close()
        store.drop()
        store.close()


def kill_record(store, job_ids: list[str], point: str, proc, bot) -> dict:
    """What happened at one crash point: did the victim die there, which job it held, and that job's
    posts, replies and re-executed stages afterwards."""

    died = proc.returncode == -signal.SIGKILL
    job = victim_job(store, job_ids, proc.pid) if died else None
    record = {"point": point, "pid": proc.pid, "killed": died, "job": job}
    if job:
        final = store.get(job)
        record.update(
            state=final.state,
            claims=sum(1 for e in store.events(job) if e["kind"] == "claimed"),
            posts=store.publications_count().get(job, 0),
            replies=len(bot.to(final.chat_id)),
            reexecuted=store.stages_reexecuted(job),
        )
    return record


def run_control(cfg: Config, store, spec: str, namespace: str, site: str, workdir, job_ids: list[str]) -> dict | None:
    """The negative control: rewind one finished job to ``researching`` (its later checkpoints lost) and
    let a fresh worker finish it again; ``stages_reexecuted`` must then be > 0."""
    finished = [j for j in job_ids if store.get(j).state in ("published", "escalated")]
    if not finished:
        return None
    job = finished[0]
    store.rewind(job, "researching")
    worker = spawn_worker(cfg, spec, namespace, site, workdir / "control.log")
    worker.wait(timeout=cfg.timeout_s)
    return {"job": job, "state": store.get(job).state, "reexecuted": store.stages_reexecuted(job)}


def report(
    ctx: RunContext,
    cfg: Config,
    store,
    job_ids: list[str],
    kills: list[dict],
    control: dict | None,
    wall: float,
    site: str,
    workdir,
    bot,
) -> None:

    final = [store.get(j) for j in job_ids]
    states = {s: sum(1 for j in final if j.state == s) for s in ("published", "escalated", "failed")}
    lost = [j.id for j in final if not j.terminal]
    per_job = store.publications_count()
    db_duplicates = sum(n - 1 for n in per_job.values() if n > 1)
    slugs = [store.publication(j.id)["slug"] for j in final if j.state == "published"]
    page_dupes, index_dupes = site_duplicates(site, slugs)
    replies = {j.id: len(bot.to(j.chat_id)) for j in final}
    latencies = [(j.finished_at - j.created_at).total_seconds() for j in final if j.finished_at]
    tail_name, tail_s = tail(latencies)
    reexecuted = sum(store.stages_reexecuted(j.id) for j in final if not control or j.id != control["job"])
    unreviewed = sum(1 for j in final if j.state == "published" and store.detail(j.id)["reviewed"] is False)
    ctx.metric(
        "jobs_completed",
        states["published"] + states["escalated"],
        "jobs",
        True,
        "published or escalated (a decision was reached)",
    )
    ctx.metric("jobs_published", states["published"], "jobs")
    ctx.metric(
        "posts_unreviewed",
        unreviewed,
        "posts",
        None,
        f"Editor in shadow: its verdicts recorded, every published post unreviewed (calibration_items = "
        f"{cfg.calibration_items})"
        if cfg.editor == "shadow"
        else f"published on an approval by a judge not calibrated in this run (calibration_items = "
        f"{cfg.calibration_items})",
    )
    ctx.metric("jobs_escalated", states["escalated"], "jobs")
    ctx.metric("jobs_failed", states["failed"], "jobs", False)
    ctx.metric("lost_jobs", len(lost), "jobs", False, "not terminal when the run ended (must be 0)")
    ctx.metric(
        "duplicate_posts",
        db_duplicates + page_dupes + index_dupes,
        "posts",
        False,
        "extra publication rows + extra post pages + repeated index entries (must be 0)",
    )
    ctx.metric(
        "missing_replies",
        sum(1 for n in replies.values() if n == 0),
        "chats",
        False,
        f"of {len(final)} chats, none sent (must be 0)",
    )
    ctx.metric(
        "duplicate_replies",
        sum(n - 1 for n in replies.values() if n > 1),
        "replies",
        False,
        "replies beyond one per chat (must be 0)",
    )
    ctx.metric(
        "nodes_reexecuted_after_crash",
        reexecuted,
        "stage runs",
        False,
        "finished stages that ran again, every job but the control's (must be 0: a crash resumes at the last commit)",
    )
    if control is not None:
        ctx.metric(
            "nodes_reexecuted_control",
            control["reexecuted"],
            "stage runs",
            True,
            f"negative control: job {control['job'][:8]} rewound to researching (later checkpoints lost) and "
            "resumed; the counter must read > 0",
        )
        if control["reexecuted"] == 0:
            ctx.failure_mode("the negative control read 0: the re-execution counter cannot see a redone stage")
    ctx.metric("latency_p50_s", percentile(latencies, 50), "s", False, "job created -> terminal, queueing included")
    ctx.metric(f"latency_{tail_name}_s", tail_s, "s", False, f"{tail_name} of {len(latencies)} jobs")
    ctx.metric("wall_s", round(wall, 2), "s", False)
    reached = [k for k in kills if k["killed"]]
    ctx.metric(
        "kill_points_reached",
        len(reached),
        "points",
        True,
        f"of {len(kills)} crash points, those where the victim worker died by SIGKILL",
    )
    ctx.table(
        "kills",
        [
            [
                k["point"],
                k["pid"],
                "yes" if k["killed"] else "no (never got there)",
                (k.get("job") or "-")[:8],
                k.get("state", "-"),
                k.get("claims", "-"),
                k.get("posts", "-"),
                k.get("replies", "-"),
                k.get("reexecuted", "-"),
            ]
            for k in kills
        ],
        [
            "crash point",
            "victim pid",
            "killed there",
            "job",
            "final state",
            "claims",
            "posts",
            "replies",
            "stages re-executed",
        ],
        title="One victim worker per crash point: what its job ended with",
    )
    rows = []
    for j in final:
        claims = [e for e in store.events(j.id) if e["kind"] == "claimed"]
        rows.append(
            [
                j.id[:8],
                j.topic,
                j.state,
                j.revisions,
                len(claims),
                sum(e["detail"].get("abandoned_stage_runs", 0) for e in claims),
                round((j.finished_at - j.created_at).total_seconds(), 2) if j.finished_at else None,
                replies[j.id],
                next((k["point"] for k in reached if k["job"] == j.id), "-"),
            ]
        )
    ctx.table(
        "jobs",
        rows,
        [
            "job",
            "topic",
            "state",
            "revisions",
            "claims",
            "abandoned stage runs",
            "latency s",
            "replies",
            "victim died at",
        ],
        title="Every job: outcome, claims, replies and the crash it survived",
    )
    for k in reached:
        if k["job"] and (k["posts"] != (1 if k["state"] == "published" else 0) or k["replies"] != 1):
            ctx.failure_mode(
                f"crash at {k['point']}: job {k['job'][:8]} ended {k['state']} with {k['posts']} post(s) "
                f"and {k['replies']} reply(ies); expected {1 if k['state'] == 'published' else 0} and 1"
            )
    for k in kills:
        if not k["killed"]:
            ctx.failure_mode(
                f"crash point {k['point']} was never reached: its victim finished its jobs without "
                "passing it (e.g. every job it held escalated before publishing"
                + (", which a gated Editor does with every draft its judge flags)" if cfg.editor == "gate" else ")")
            )
    ctx.finding(
        f"{len(final)} jobs, {cfg.workers} surviving workers and {len(kills)} victims: {states['published']} "
        f"published, {states['escalated']} escalated, {states['failed']} failed, {len(lost)} lost; "
        f"{len(reached)} of {len(kills)} crash points reached; {db_duplicates + page_dupes + index_dupes} "
        f"duplicate post(s); {sum(1 for n in replies.values() if n == 0)} chat(s) without and "
        f"{sum(n - 1 for n in replies.values() if n > 1)} extra repl(ies); {reexecuted} finished stage(s) run "
        f"again"
        + (f" (the control, rewound, re-ran {control['reexecuted']})" if control else "")
        + f"; p50 {percentile(latencies, 50) or 0:.1f} s, {tail_name} {tail_s or 0:.1f} s from queueing to the end."
    )
    if cfg.editor == "shadow":
        verdicts = Counter(r["verdict"] for j in final for r in store.reviews(j.id))
        ctx.finding(
            "Editor in shadow: the judge's verdicts, recorded but not applied: "
            + (", ".join(f"{v} {n}" for v, n in sorted(verdicts.items())) or "none")
            + f"; {unreviewed} post(s) published marked UNREVIEWED."
        )
    if lost:
        ctx.failure_mode(f"{len(lost)} job(s) never finished: {', '.join(x[:8] for x in lost)}")
        for log in sorted(workdir.glob("*.log")):
            ctx.log(f"{log.name}: " + log.read_text(errors="replace")[-1500:])
    if states["failed"]:
        ctx.failure_mode("failed jobs: " + "; ".join(f"{j.id[:8]}: {j.error}" for j in final if j.state == "failed"))


def run(cfg: Config, ctx: RunContext) -> None:
    if cfg.workers < 1:
        raise ValueError("field 'workers' must be >= 1 (a surviving worker resumes the victims' jobs)")
    if cfg.n_jobs < len(cfg.kill_points) + cfg.workers:
        raise ValueError(
            f"field 'n_jobs' ({cfg.n_jobs}) must be >= kill points + workers "
            f"({len(cfg.kill_points)} + {cfg.workers}) so that every victim gets a job"
        )
    if cfg.scripted:
        ctx.set_method("substitute: scripted OpenAI-compatible replies in place of a model (a coordination check)")
        with scripted_server(reject_first=0, delay_s=cfg.scripted_delay_s) as (url, _):
            run_load(cfg, ctx, f"openai:scripted@{url}")
        return

    # describe=False: a local model is loaded by the workers, not by this process too
    with agent_llm(ctx, cfg.llm, describe=False, role="every stage, in each worker process") as (llm, _):
        run_load(cfg, ctx, llm.spec)


EXERCISE = Exercise(
    id="phase16.load",
    title="N concurrent jobs on worker processes, victims SIGKILLed at five crash points: lost jobs, posts, replies",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        "a100": {"n_jobs": 32, "workers": 4, "writer_max_tokens": 120, "hyde_max_tokens": 80, "llm": A100_LLM},
    },
    tiny={"scripted": True, "n_jobs": 6, "workers": 1, "lease_s": 2.0, "corpus": "phase12_rag_storage/notes"},
    smoke={
        "n_jobs": 6,
        "workers": 1,
        "lease_s": 2.0,
        "corpus": "phase12_rag_storage/notes",
        "hyde_max_tokens": 16,
        "writer_max_tokens": 24,
    },
    summary_metrics=(
        "jobs_completed",
        "lost_jobs",
        "duplicate_posts",
        "duplicate_replies",
        "missing_replies",
        "kill_points_reached",
        "nodes_reexecuted_after_crash",
        "nodes_reexecuted_control",
    ),
    methods={"cpu": "scaled", "a100": "scaled"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
