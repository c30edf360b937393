"""16.2 — Many jobs, several worker processes, one of them killed with SIGKILL mid-job.

The durability claim of the job store, tested the hard way: N jobs are queued, two worker
*processes* (``python -m phase16_capstone worker``) claim them concurrently through
``FOR UPDATE SKIP LOCKED`` leases, and as soon as one worker holds a job past its research stage it
is sent SIGKILL — no cleanup, no goodbye, exactly like a machine dying. Its lease stops being
renewed, expires, and the surviving worker claims the job and resumes it at the last stage that
committed. What must hold, and is measured rather than assumed:

- **lost jobs = 0**: every job reaches a terminal state;
- **duplicate posts = 0**: one publication row per job, one post page per published job and one
  index entry per post on the site itself (the crash can happen between deploying files and
  committing — the publisher's idempotence is what keeps that from doubling a post);
- how long jobs took (p50/p99 from creation to terminal state, queueing included) and what the
  crash cost the killed job (its claims and abandoned stage runs).

The cpu profile runs the embedded model with small token limits so the whole run takes minutes;
the tiny config uses the scripted OpenAI-compatible server with a small delay per reply.
"""

from __future__ import annotations

from lab import Exercise, ExerciseConfig, RunContext
from phase13_react.served import A100_LLM


class Config(ExerciseConfig):
    n_jobs: int = 8
    workers: int = 2  # worker processes
    kill: bool = True  # SIGKILL one worker mid-job
    lease_s: float = 10.0  # a dead worker's job is resumed after this
    llm: str | None = None
    scripted: bool = False  # the scripted OpenAI-compatible server instead of a model
    scripted_delay_s: float = 0.2  # per scripted reply
    corpus: str | None = None
    k: int = 2
    hyde_max_tokens: int = 30
    writer_max_tokens: int = 40
    max_revisions: int = 1
    timeout_s: float = 1800.0


TOPICS = ("KV cache memory at long context", "why LoRA rank matters", "DPO versus PPO", "judge calibration",
          "structure-aware chunking", "HyDE retrieval", "pgvector hybrid queries", "mixture-of-experts routing",
          "the editor gate", "QLoRA on a CPU")


def percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def site_duplicates(site_dir, slugs: list[str]) -> tuple[int, int]:
    """(post pages beyond one per published job, index links beyond one per post) on the deployed site."""
    from pathlib import Path

    site = Path(site_dir)
    pages = list((site / "posts").glob("*.html")) if (site / "posts").is_dir() else []
    index = (site / "index.html").read_text(encoding="utf-8") if (site / "index.html").is_file() else ""
    extra_links = sum(max(0, index.count(f"posts/{slug}.html") - 1) for slug in slugs)
    return max(0, len(pages) - len(slugs)), extra_links


def spawn_worker(cfg: Config, spec: str, namespace: str, site: str, log_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "phase16_capstone", "worker", "--exit-when-idle", "--namespace", namespace,
           "--lease-s", str(cfg.lease_s), "--llm", spec, "--site", site, "--k", str(cfg.k),
           "--hyde-max-tokens", str(cfg.hyde_max_tokens), "--writer-max-tokens", str(cfg.writer_max_tokens),
           "--max-revisions", str(cfg.max_revisions)]
    if cfg.corpus:
        cmd += ["--corpus", cfg.corpus]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    root = Path(__file__).resolve().parent.parent  # this checkout's packages, not another install's
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def watch(cfg: Config, store, procs, killed: dict, deadline: float):
    """Yield once per job reaching a terminal state; SIGKILL one worker the first time it holds a job
    past research (``killed`` gets job, state, pid, time). Ends when all are done, the workers are
    all gone, or the deadline passes."""
    import os
    import signal
    import time

    started, done = time.perf_counter(), 0
    while time.monotonic() < deadline:
        if cfg.kill and not killed:
            pids = {p.pid: p for p in procs if p.poll() is None}
            for job_id, state, owner in store.leases():
                pid = int(owner.split(":")[1])
                if state in ("writing", "editing") and pid in pids:
                    os.kill(pid, signal.SIGKILL)
                    pids[pid].wait()
                    killed.update(job=job_id, state=state, pid=pid, at_s=time.perf_counter() - started)
                    break
        counts = store.count_by_state()
        now_done = sum(counts.get(s, 0) for s in ("published", "escalated", "failed"))
        for _ in range(now_done - done):
            yield
        done = now_done
        if done >= cfg.n_jobs or all(p.poll() is not None for p in procs):
            return
        time.sleep(0.1)


def run_load(cfg: Config, ctx: RunContext, spec: str) -> None:
    import tempfile
    import time
    import uuid
    from pathlib import Path

    from phase16_capstone.job_store import JobStore
    from phase16_capstone.researcher import CorpusIndex

    namespace = f"p16load_{uuid.uuid4().hex[:8]}"
    store = JobStore(namespace=namespace, lease_s=cfg.lease_s)
    workdir = Path(tempfile.mkdtemp(prefix="phase16-load-"))
    site = str(workdir / "site")
    procs = []
    try:
        index = CorpusIndex(store.url, cfg.corpus)  # embed once before the workers start: they only search
        ctx.dataset(cfg.corpus or "repo notes + phase READMEs + results overview", n=len(index.docs), sha256=index.sha256,
                    chunks=index.n_chunks)
        index.close()
        jobs = [store.create_job(f"{TOPICS[i % len(TOPICS)]} ({i + 1})", "load", corpus=cfg.corpus)[0]
                for i in range(cfg.n_jobs)]
        started = time.perf_counter()
        procs = [spawn_worker(cfg, spec, namespace, site, workdir / f"worker{i}.log") for i in range(cfg.workers)]
        killed: dict = {}
        for _ in ctx.progress(watch(cfg, store, procs, killed, time.monotonic() + cfg.timeout_s),
                              "jobs finished", total=cfg.n_jobs):
            pass
        wall = time.perf_counter() - started
        for p in procs:
            try:
                p.wait(timeout=30)
            except Exception:  # noqa: BLE001 — a worker that does not exit is stopped
                p.kill()
        report(ctx, cfg, store, [j.id for j in jobs], killed or None, wall, site, workdir)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        store.drop()
        store.close()


def report(ctx: RunContext, cfg: Config, store, job_ids: list[str], killed: dict | None, wall: float, site: str,
           workdir) -> None:
    final = [store.get(j) for j in job_ids]
    states = {s: sum(1 for j in final if j.state == s) for s in ("published", "escalated", "failed")}
    lost = [j.id for j in final if not j.terminal]
    per_job = store.publications_count()
    db_duplicates = sum(n - 1 for n in per_job.values() if n > 1)
    slugs = [store.publication(j.id)["slug"] for j in final if j.state == "published"]
    page_dupes, index_dupes = site_duplicates(site, slugs)
    latencies = [(j.finished_at - j.created_at).total_seconds() for j in final if j.finished_at]
    ctx.metric("jobs_completed", states["published"] + states["escalated"], "jobs", True,
               "published or escalated (a decision was reached)")
    ctx.metric("jobs_published", states["published"], "jobs")
    ctx.metric("jobs_escalated", states["escalated"], "jobs")
    ctx.metric("jobs_failed", states["failed"], "jobs", False)
    ctx.metric("lost_jobs", len(lost), "jobs", False, "not terminal when the run ended (must be 0)")
    ctx.metric("duplicate_posts", db_duplicates + page_dupes + index_dupes, "posts", False,
               "extra publication rows + extra post pages + repeated index entries (must be 0)")
    ctx.metric("latency_p50_s", percentile(latencies, 50), "s", False, "job created -> terminal, queueing included")
    ctx.metric("latency_p99_s", percentile(latencies, 99), "s", False)
    ctx.metric("wall_s", round(wall, 2), "s", False)
    ctx.metric("worker_killed", bool(killed))
    rows = []
    for j in final:
        claims = [e for e in store.events(j.id) if e["kind"] == "claimed"]
        rows.append([j.id[:8], j.topic, j.state, j.revisions, len(claims),
                     sum(e["detail"].get("abandoned_stage_runs", 0) for e in claims),
                     round((j.finished_at - j.created_at).total_seconds(), 2) if j.finished_at else None,
                     bool(killed and killed["job"] == j.id)])
    ctx.table("jobs", rows, ["job", "topic", "state", "revisions", "claims", "abandoned stage runs", "latency s",
                             "worker killed mid-job"], title="Every job: outcome, claims and the crash it survived")
    if killed:
        victim = store.get(killed["job"])
        claims = [e for e in store.events(victim.id) if e["kind"] == "claimed"]
        resumed = claims[-1]["detail"] if len(claims) > 1 else None
        ctx.metric("killed_job_claims", len(claims), "claims")
        ctx.finding(f"Worker pid {killed['pid']} was SIGKILLed {killed['at_s']:.1f} s in while its job was "
                    f"{killed['state']}; the job ended {victim.state} after {len(claims)} claim(s)"
                    + (f", resumed by another worker at '{resumed['state']}' with {resumed['abandoned_stage_runs']} "
                       f"abandoned stage run(s)." if resumed else "."))
    ctx.finding(f"{len(final)} jobs on {cfg.workers} worker processes: {states['published']} published, "
                f"{states['escalated']} escalated, {states['failed']} failed, {len(lost)} lost; "
                f"{db_duplicates + page_dupes + index_dupes} duplicate post(s); p50 {percentile(latencies, 50) or 0:.1f} s, "
                f"p99 {percentile(latencies, 99) or 0:.1f} s from queueing to the end.")
    if lost:
        ctx.failure_mode(f"{len(lost)} job(s) never finished: {', '.join(x[:8] for x in lost)}")
        for log in sorted(workdir.glob("worker*.log")):
            ctx.log(f"{log.name}: " + log.read_text(errors="replace")[-1500:])
    if states["failed"]:
        ctx.failure_mode("failed jobs: " + "; ".join(f"{j.id[:8]}: {j.error}" for j in final if j.state == "failed"))


def run(cfg: Config, ctx: RunContext) -> None:
    if cfg.workers < 2 and cfg.kill:
        raise ValueError("field 'workers' must be >= 2 when 'kill' is true (someone must resume the job)")
    if cfg.scripted:
        from phase16_capstone.scripted_llm import scripted_server

        ctx.set_method("substitute: scripted OpenAI-compatible replies in place of a model (a coordination check)")
        with scripted_server(reject_first=0, delay_s=cfg.scripted_delay_s) as (url, _):
            run_load(cfg, ctx, f"openai:scripted@{url}")
        return
    from phase13_react.served import agent_llm

    # describe=False: a local model is loaded by the workers, not by this process too
    with agent_llm(ctx, cfg.llm, describe=False, role="every stage, in each worker process") as (llm, _):
        run_load(cfg, ctx, llm.spec)


EXERCISE = Exercise(
    id="phase16.load",
    title="N concurrent jobs on worker processes, one SIGKILLed mid-job: lost jobs, duplicate posts, latency",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"n_jobs": 32, "workers": 4, "writer_max_tokens": 120, "hyde_max_tokens": 80,
                                  "llm": A100_LLM}},
    tiny={"scripted": True, "n_jobs": 4, "lease_s": 2.0, "corpus": "phase12_rag_storage/notes"},
    smoke={"n_jobs": 2, "workers": 1, "lease_s": 2.0, "corpus": "phase12_rag_storage/notes", "hyde_max_tokens": 16,
           "writer_max_tokens": 24},
    summary_metrics=("jobs_completed", "lost_jobs", "duplicate_posts", "latency_p50_s", "latency_p99_s"),
    methods={"cpu": "scaled", "a100": "scaled"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
