"""How long the whole reproduction takes, read from the latest results (nothing is run).

    .venv/bin/python benchmarks/demo_time.py [--profile cpu] [--jobs 2] [--results results]

Prints each exercise's wall time (``duration_s`` of its latest result.json), the sum (what
``lab run all --jobs 1`` costs) and an estimate for ``--jobs N``: the scheduler's own plan on a
fresh artifact store (every artifact missing, so consumers wait for their producers), replayed with
these wall times, ready jobs started longest-critical-path first as ``lab run`` does. Process start
overhead is not modelled, and each wall time already carries whatever slowed it down when it ran
(a job sharing 2 cores with another runs slower than alone). The last row is what was observed: from
the earliest start to the latest end of these results, which is the real wall time of the
reproduction when they all came from one ``lab run all``. The longest chain of jobs that wait for
each other (artifact builds included) is the floor no number of jobs goes below. Each row shows the
machine load when the result was written. Benchmarks are not part of ``lab run all`` and are not counted.
"""

from __future__ import annotations

import argparse
import heapq
import os
import tempfile
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab import paths
from lab.artifacts import ArtifactStore
from lab.registry import resolve
from lab.results import load_result, result_dir
from lab.scheduler import critical_path, plan


def latest(root: Path, exercise, profile: str) -> dict | None:

    path = result_dir(root, exercise.id, profile) / "result.json"
    return load_result(path) if path.exists() else None


def replay(jobs, seconds: dict[str, float], workers: int) -> float:
    """Makespan of list-scheduling ``jobs`` (deps respected) on ``workers`` with these durations."""

    for job in jobs:
        job.estimate_s = seconds.get(job.key, job.estimate_s)
    priority = critical_path(jobs)
    waiting = {j.key: j for j in jobs}
    done: set[str] = set()
    running: list[tuple[float, str]] = []  # (finish time, key)
    now = 0.0
    while waiting or running:
        ready = sorted((j for j in waiting.values() if j.deps <= done), key=lambda j: -priority[j.key])
        for job in ready[: workers - len(running)]:
            heapq.heappush(running, (now + job.estimate_s, job.key))
            del waiting[job.key]
        now, key = heapq.heappop(running)
        done.add(key)
    return now


def longest_chain(jobs) -> list:
    """The chain of dependent jobs that bounds the reproduction however many run at once: from the
    job with the longest critical path, on through the dependent with the longest one."""

    priority = critical_path(jobs)
    chain = [max(jobs, key=lambda j: priority[j.key])]
    while after := [j for j in jobs if chain[-1].key in j.deps]:
        chain.append(max(after, key=lambda j: priority[j.key]))
    return chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=None, help="results root (default: the repo's results/)")
    args = parser.parse_args()

    root = args.results or paths.RESULTS_ROOT
    table = Table("exercise", "status", "wall s", "date", "load 1m", title=f"latest {args.profile} results in {root}")
    seconds: dict[str, float] = {}
    spans: list[tuple[str, str]] = []
    runs = []
    for ex in resolve("all"):
        if args.profile not in ex.profiles:
            continue
        runs.append((ex, {}))
        doc = latest(root, ex, args.profile)
        if doc is None:
            table.add_row(ex.id, "no result", "", "", "")
            continue
        seconds[ex.id] = doc["duration_s"]
        spans.append((doc["started_at"], doc["ended_at"]))
        table.add_row(
            ex.id,
            doc["status"],
            f"{doc['duration_s']:.1f}",
            doc["ended_at"][:10],
            str(doc["hardware"].get("load_avg_1m", "")),
        )
    total = sum(seconds.values())
    table.add_section()
    table.add_row("total (one after another)", "", f"{total:.1f}", f"{total / 60:.1f} min", "")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = plan(runs, args.profile, ArtifactStore(Path(tmp)), config_dir=Path(tmp))
        estimate = replay(jobs, seconds, args.jobs)
        chain = longest_chain(jobs)
    table.add_row(f"estimate with --jobs {args.jobs}", "", f"{estimate:.1f}", f"{estimate / 60:.1f} min", "")
    floor = sum(j.estimate_s for j in chain)
    table.add_row(
        "longest chain (any --jobs): " + " → ".join(j.key for j in chain),
        "",
        f"{floor:.1f}",
        f"{floor / 60:.1f} min",
        "",
    )
    if spans:
        first = datetime.fromisoformat(min(start for start, _ in spans))
        last = datetime.fromisoformat(max(end for _, end in spans))
        observed = (last - first).total_seconds()
        table.add_row("observed: first start → last end", "", f"{observed:.1f}", f"{observed / 60:.1f} min", "")
    Console().print(table)


if __name__ == "__main__":
    main()
