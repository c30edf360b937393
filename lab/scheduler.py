"""`lab run` over several exercises: ordered by the artifacts they declare, run side by side.

One job per exercise. An exercise that needs an artifact missing from the store runs after the
exercise of the same run that produces it; if none does, a build job (``lab artifacts build``) is
added for it, so it is trained once, first, and never by two processes at the same time (the store's
lock would serialise them anyway). Every job is its own process with one thread
(``OMP_NUM_THREADS=1``): the same isolation whatever ``--jobs`` is, so metrics do not depend on it.
With more than one worker, ready jobs start longest-critical-path first, estimated from each
exercise's last recorded wall time.

In a GPU profile (``GPU_PROFILES``: a100) every job is sized for the whole card (an 8B model in
bf16, Mixtral in NF4, a QLoRA run), so jobs that use the GPU run one at a time whatever ``--jobs``
says; exercises that declare the profile ``cpu_only`` (data, databases) still run beside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from lab import results
from lab.artifacts import ArtifactKind, ArtifactStore, default_store
from lab.device import smoke_env
from lab.paths import RESULTS_ROOT, SCRATCH_ROOT
from lab.runner import new_run_id, recorded_overrides, target_root

DEFAULT_ESTIMATE_S = 60.0
GPU_PROFILES = frozenset({"a100"})  # profiles whose jobs load models sized for one whole GPU
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Job:
    key: str  # the exercise id, or "build:<artifact name>"
    argv: list[str]  # arguments of the `lab` command that runs it
    estimate_s: float
    deps: set[str] = field(default_factory=set)
    exercise: Any = None  # the Exercise, for exercise jobs
    root: Path | None = None  # where an exercise job's result goes (results/, runs/ or --out)
    status: str = "waiting"  # waiting | running | ok | skipped | failed
    started: str = ""  # a run id stamp taken at start: the child's run sorts after it
    seconds: float | None = None
    detail: str = ""  # where the result went, or why it failed
    gpu: bool = False  # holds the GPU while it runs: no other GPU job starts until it ends


def uses_gpu(exercise, profile: str) -> bool:
    """Does this exercise's run in ``profile`` take the GPU? (Build jobs in a GPU profile always do.)"""
    return profile in GPU_PROFILES and (exercise is None or profile not in exercise.cpu_only)


def _last_duration(exercise, profile: str) -> float:
    doc = results.last_run(RESULTS_ROOT, exercise.id, profile)
    return float(doc["duration_s"]) if doc and doc.get("duration_s") else DEFAULT_ESTIMATE_S


def plan(
    runs: list[tuple[Any, dict]],
    profile: str,
    store: ArtifactStore,
    *,
    out: Path | None = None,
    llm: str | None = None,
    config_dir: Path,
    smoke: bool = False,
) -> list[Job]:
    """Jobs for (exercise, overrides) pairs, with dependencies from their declared needs/produces.

    ``config_dir``: where each job's overrides are written as a --config YAML file. ``smoke``: every
    job (artifact builds too) runs with --smoke; ``store`` must then be the smoke store.
    """

    jobs: dict[str, Job] = {}
    producers = {kind.name: ex.id for ex, _ in runs for kind in ex.produces}
    for ex, overrides in runs:
        argv = ["run", ex.id, "--profile", profile, "--jobs", "1"]
        if overrides:
            path = config_dir / f"{ex.id}.yaml"
            path.write_text(yaml.safe_dump(dict(overrides), sort_keys=True))
            argv += ["--config", str(path)]
        if out is not None:
            argv += ["--out", str(out)]
        if llm:
            argv += ["--llm", llm]
        if smoke:
            argv += ["--smoke"]
        jobs[ex.id] = Job(
            ex.id,
            argv,
            _last_duration(ex, profile),
            exercise=ex,
            gpu=uses_gpu(ex, profile),
            root=target_root(recorded_overrides(overrides, llm), out, None, smoke),
        )

    def provider(kind: ArtifactKind, consumer: str) -> str | None:
        """The job that makes ``kind`` available to ``consumer`` (None: already stored)."""
        if store.find(kind.recipe(profile)) is not None:
            return None
        if producers.get(kind.name) not in (None, consumer):
            return producers[kind.name]
        key = f"build:{kind.name}"
        if key not in jobs:
            jobs[key] = Job(
                key,
                ["artifacts", "build", kind.name, "--profile", profile] + (["--smoke"] if smoke else []),
                DEFAULT_ESTIMATE_S,
                gpu=uses_gpu(None, profile),
            )
            jobs[key].deps = {p for need in kind.needs if (p := provider(need, key))}
        return key

    for ex, _ in runs:
        jobs[ex.id].deps |= {p for kind in ex.needs if (p := provider(kind, ex.id))}
    return list(jobs.values())


def critical_path(jobs: list[Job]) -> dict[str, float]:
    """Per job: its estimate plus the longest chain of jobs that wait for it (the scheduling priority)."""
    dependents: dict[str, list[str]] = {j.key: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            dependents[d].append(j.key)
    by_key = {j.key: j for j in jobs}
    memo: dict[str, float] = {}

    def length(key: str) -> float:
        if key not in memo:
            memo[key] = by_key[key].estimate_s + max((length(k) for k in dependents[key]), default=0.0)
        return memo[key]

    return {j.key: length(j.key) for j in jobs}


def _outcome(job: Job, returncode: int, profile: str) -> None:
    """Fill status/detail from the run the child recorded (its history entry), else the exit code."""
    if job.exercise is None or job.root is None:  # a plain command: an exercise job always has its root
        job.status = "ok" if returncode == 0 else "failed"
        job.detail = "" if returncode == 0 else f"exit code {returncode}"
        return
    doc = results.last_run(job.root, job.exercise.id, profile)
    if doc is None or doc["run_id"] < job.started:
        job.status, job.detail = "failed", f"exit code {returncode}, no result written (see the log)"
        return
    job.status = doc["status"]
    job.detail = doc.get("reason") or ""


class Runner:
    """Runs planned jobs, at most ``workers`` at a time, each in its own `python -m lab` process."""

    def __init__(self, jobs: list[Job], workers: int, profile: str, log_dir: Path, console=None, gpu_slots: int = 1):
        self.jobs = {j.key: j for j in jobs}
        self.workers = max(1, workers)
        self.gpu_slots = max(1, gpu_slots)
        self.profile = profile
        self.log_dir = log_dir
        self.priority = critical_path(jobs)

        self.console = console or Console(stderr=True)

    def _ready(self) -> list[Job]:
        done = {k for k, j in self.jobs.items() if j.status not in ("waiting", "running")}
        ready = [j for j in self.jobs.values() if j.status == "waiting" and j.deps <= done]
        return sorted(ready, key=lambda j: -self.priority[j.key])

    def to_start(self) -> list[Job]:
        """The ready jobs to start now: highest priority first, within the free workers, and at most
        ``gpu_slots`` GPU jobs running at once (a GPU job waits; CPU-only jobs behind it may start)."""
        running = [j for j in self.jobs.values() if j.status == "running"]
        free, gpu_free = self.workers - len(running), self.gpu_slots - sum(j.gpu for j in running)
        chosen: list[Job] = []
        for job in self._ready():
            if len(chosen) == free:
                break
            if job.gpu:
                if gpu_free <= 0:
                    continue
                gpu_free -= 1
            chosen.append(job)
        return chosen

    def _log(self, job: Job) -> Path:
        return self.log_dir / f"{job.key.replace(':', '-')}.log"

    def _start(self, job: Job) -> tuple[subprocess.Popen, Any]:
        """The job's process, and its open log file (None when one job at a time prints live)."""
        env = {**os.environ, **ONE_THREAD}
        cmd = [sys.executable, "-m", "lab", *job.argv]
        if self.workers == 1:
            return subprocess.Popen(cmd, env=env), None
        log = open(self._log(job), "w")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log

    def run(self) -> list[Job]:
        """Run every job; a job whose dependency failed still runs (it builds or reports what is missing)."""

        running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.workers == 1,
        ) as progress:
            gpu_note = f" (GPU jobs {self.gpu_slots} at a time)" if any(j.gpu for j in self.jobs.values()) else ""
            overall = progress.add_task(
                f"{len(self.jobs)} jobs, {self.workers} at a time{gpu_note}", total=len(self.jobs)
            )
            rows = {k: progress.add_task(self._label(j), total=1, start=False) for k, j in self.jobs.items()}
            try:
                while any(j.status in ("waiting", "running") for j in self.jobs.values()):
                    for job in self.to_start():
                        job.status, job.started = "running", new_run_id()
                        if self.workers == 1:
                            self.console.print(f"[bold]▶ {job.key}[/bold]")
                        running[job.key] = (*self._start(job), time.perf_counter())
                        progress.start_task(rows[job.key])
                        progress.update(rows[job.key], description=self._label(job))
                    for key, (proc, log, began) in list(running.items()):
                        if proc.poll() is None:
                            continue
                        if log is not None:
                            log.close()
                        job = self.jobs[key]
                        job.seconds = time.perf_counter() - began
                        _outcome(job, proc.returncode, self.profile)
                        del running[key]
                        progress.update(rows[key], completed=1, description=self._label(job))
                        progress.advance(overall)
                        self._report(job, progress)
                    time.sleep(0.2)
            except KeyboardInterrupt:
                for proc, _, _ in running.values():
                    proc.terminate()
                for proc, _, _ in running.values():
                    proc.wait()
                raise
        return list(self.jobs.values())

    def _label(self, job: Job) -> str:
        mark = {
            "waiting": "[dim]waiting[/dim]",
            "running": "[cyan]running[/cyan]",
            "ok": "[green]ok[/green]",
            "skipped": "[yellow]skipped[/yellow]",
            "failed": "[red]failed[/red]",
        }[job.status]
        after = f" [dim](after {', '.join(sorted(job.deps))})[/dim]" if job.status == "waiting" and job.deps else ""
        took = f" {job.seconds:.0f} s" if job.seconds is not None else ""
        return f"{mark} {job.key}{took}{after}"

    def _report(self, job: Job, progress) -> None:
        colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[job.status]
        progress.console.print(
            f"[{colour}]{job.status}[/{colour}] {job.key} in {job.seconds:.1f} s"
            + (f": {job.detail}" if job.detail else "")
        )
        if job.status == "failed" and self.workers > 1:
            log = self._log(job)
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            progress.console.print("\n".join(tail) + f"\n[dim](full log: {log})[/dim]", markup=False)


def run_all(
    runs: list[tuple[Any, dict]],
    profile: str,
    workers: int,
    *,
    out: Path | None = None,
    llm: str | None = None,
    store: ArtifactStore | None = None,
    console=None,
    log_root: Path = SCRATCH_ROOT / ".logs",
    smoke: bool = False,
) -> list[Job]:
    """Plan and run several exercises; returns the finished jobs (status, seconds, detail).

    Each job's log and overrides file go to a fresh folder under ``log_root`` (runs/ is gitignored).
    ``smoke``: plan against the smoke store and run every job with --smoke (lab.device).
    """

    log_root.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="lab-run-", dir=log_root))
    with smoke_env(smoke):  # the smoke store and the smoke-sized recipes
        jobs = plan(runs, profile, store or default_store(), out=out, llm=llm, config_dir=log_dir, smoke=smoke)
    return Runner(jobs, workers, profile, log_dir, console=console).run()
