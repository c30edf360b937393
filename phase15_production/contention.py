"""15.4 — Contention: N agents (separate processes) × M read-modify-write updates on one shared counter.

Each agent is its own OS process with its own database connection — as agents on different workers
would be — and all start together at a barrier. Every agent adds 1 to the same row ``updates`` times,
so the final value must be ``agents × updates``. Per strategy (``phase15_production.state``):

- ``naive``: read, then write read + 1. Two agents that read the same value both write value + 1:
  one update is lost. ``lost_updates_naive`` counts them — the failure this lesson exists to show;
- ``for_update``: ``SELECT ... FOR UPDATE``: the row lock makes writers queue (no retries, waits);
- ``optimistic``: version column; a write that finds the version moved reads again (retries);
- ``serializable``: SERIALIZABLE transaction, retried on SQLSTATE 40001 — the CockroachDB contract.

Per strategy: final total vs expected, lost updates, retries, throughput and p99 latency of one
update (retries included). The same code runs against CockroachDB when ``LAB_CRDB_URL`` is set
(``databases`` includes ``cockroachdb``); without it those rows say why they were skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
from pydantic import field_validator

from lab import Exercise, ExerciseConfig, RunContext
from lab.db import connect, crdb_url, database_url
from lab.errors import MissingResource
from phase15_production.state import STRATEGIES, create_counters, increment, read_counter

DATABASES = ("postgresql", "cockroachdb")


class Config(ExerciseConfig):
    agents: int = 4  # separate processes
    updates: int = 1000  # read-modify-write updates per agent
    strategies: list[str] = ["naive", "for_update", "optimistic", "serializable"]
    databases: list[str] = ["postgresql", "cockroachdb"]
    max_retries: int = 10000  # per update; beyond it the update fails (counted, never silently dropped)

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: list[str]) -> list[str]:

        unknown = sorted(set(value) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategy(ies) {unknown}; choose from {list(STRATEGIES)}")
        return value

    @field_validator("databases")
    @classmethod
    def _known_databases(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(DATABASES))
        if unknown:
            raise ValueError(f"unknown database(s) {unknown}; choose from {list(DATABASES)}")
        return value

    @field_validator("agents", "updates")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value


# --- the agents (each runs in its own process) --------------------------------------------------
def agent(url: str, strategies: list[str], table: str, updates: int, max_retries: int, barrier, results) -> None:
    """Connect once; for each strategy wait for every agent (and the fresh counter), then do ``updates``
    increments and report timings and retries."""

    conn = connect(url, autocommit=True)
    for strategy in strategies:
        latencies, retries, errors = [], 0, []
        barrier.wait()  # the parent has (re)created the counter; all agents start together
        start = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable across processes
        for _ in range(updates):
            t = time.perf_counter()
            try:
                retries += increment(conn, strategy, table, "shared", max_retries=max_retries)
            except Exception as exc:  # an update that gave up is counted, not hidden
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            latencies.append(time.perf_counter() - t)
        results.put(dict(start=start, end=time.monotonic(), latencies=latencies, retries=retries, errors=errors))
    conn.close()


def contend(url: str, cfg: Config, table: str, ctx: RunContext, database: str) -> list[dict]:
    """Start ``cfg.agents`` processes once; run every strategy against a fresh counter in turn."""

    spawn = mp.get_context("spawn")  # a clean interpreter per agent: no connection or lock inherited
    barrier, results = spawn.Barrier(cfg.agents + 1), spawn.Queue()  # the agents + this process
    procs = [
        spawn.Process(
            target=agent,
            args=(url, cfg.strategies, table, cfg.updates, cfg.max_retries, barrier, results),
            name=f"agent-{i}",
            daemon=True,
        )
        for i in range(cfg.agents)
    ]
    for p in procs:
        p.start()
    rows, expected = [], cfg.agents * cfg.updates
    try:
        with connect(url, autocommit=True) as conn:
            for strategy in ctx.progress(cfg.strategies, f"{database}: strategies", total=len(cfg.strategies)):
                create_counters(conn, table, ["shared"])
                barrier.wait(timeout=600)
                reports = [results.get(timeout=3600) for _ in procs]
                final = read_counter(conn, table, "shared")
                latencies = np.concatenate([r["latencies"] for r in reports]) * 1e3
                wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
                errors = [e for r in reports for e in r["errors"]]
                rows.append(
                    dict(
                        strategy=strategy,
                        final=final,
                        expected=expected,
                        lost=expected - final - len(errors),
                        failed=len(errors),
                        first_error=errors[0] if errors else None,
                        retries=sum(r["retries"] for r in reports),
                        wall_s=wall,
                        throughput=(expected - len(errors)) / wall,
                        p50_ms=float(np.percentile(latencies, 50)),
                        p99_ms=float(np.percentile(latencies, 99)),
                    )
                )
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"agent process(es) {failed} exited abnormally")
    return rows


def database_targets(cfg: Config) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """([(database, url)], {database: why skipped})."""

    targets, skipped = [], {}
    if "postgresql" in cfg.databases:
        targets.append(("postgresql", database_url()))
    if "cockroachdb" in cfg.databases:
        url = crdb_url()
        if not url:
            skipped["cockroachdb"] = "LAB_CRDB_URL is not set (no CockroachDB server on this machine)"
        else:
            try:
                connect(url).close()
                targets.append(("cockroachdb", url))
            except MissingResource as exc:
                skipped["cockroachdb"] = str(exc)
    return targets, skipped


def run(cfg: Config, ctx: RunContext) -> None:

    targets, skipped = database_targets(cfg)
    if not targets:
        ctx.skip("; ".join(f"{db}: {why}" for db, why in skipped.items()))
    rows = []
    for database, url in targets:
        with connect(url) as conn:
            version = conn.execute("SELECT version()").fetchone()[0].split(",")[0].split("(")[0].strip()
        ctx.log(f"{database}: {version}")
        for row in contend(url, cfg, f"p15_contention_{os.getpid()}", ctx, database):
            rows.append(dict(database=database, version=version, **row))
    report(cfg, ctx, rows, skipped)


# --- the report -----------------------------------------------------------------------------------
def report(cfg: Config, ctx: RunContext, rows: list[dict], skipped: dict[str, str]) -> None:
    expected = cfg.agents * cfg.updates
    table = [
        [
            r["database"],
            r["strategy"],
            r["final"],
            r["expected"],
            r["lost"],
            r["failed"],
            r["retries"],
            round(r["throughput"], 1),
            round(r["p50_ms"], 2),
            round(r["p99_ms"], 2),
            round(r["wall_s"], 2),
        ]
        for r in rows
    ]
    table += [
        [db, s, None, expected, None, None, None, None, None, None, f"skipped: {why}"]
        for db, why in skipped.items()
        for s in cfg.strategies
    ]
    ctx.table(
        "strategies",
        table,
        columns=[
            "database",
            "strategy",
            "final",
            "expected",
            "lost updates",
            "failed updates",
            "retries",
            "updates/s",
            "p50 ms",
            "p99 ms",
            "wall s",
        ],
        title=f"{cfg.agents} agents (separate processes) × {cfg.updates} increments of one shared row",
    )
    ctx.metric("expected_total", expected, "updates", description=f"{cfg.agents} agents × {cfg.updates} updates")
    for r in rows:
        tag = r["strategy"] if r["database"] == "postgresql" else f"{r['strategy']}_crdb"
        where = f"{r['database']}, {cfg.agents} agents × {cfg.updates}"
        ctx.metric(f"final_total_{tag}", r["final"], "updates", description=where)
        ctx.metric(f"lost_updates_{tag}", r["lost"], "updates", higher_is_better=False, description=where)
        ctx.metric(f"retries_{tag}", r["retries"], "retries", higher_is_better=False, description=where)
        ctx.metric(
            f"throughput_{tag}", round(r["throughput"], 1), "updates/s", higher_is_better=True, description=where
        )
        ctx.metric(
            f"p99_ms_{tag}",
            round(r["p99_ms"], 2),
            "ms",
            higher_is_better=False,
            description=f"{where}; one update including its retries",
        )
        if r["failed"]:
            ctx.failure_mode(
                f"{r['database']} {r['strategy']}: {r['failed']} updates gave up after "
                f"{cfg.max_retries} retries (first: {r['first_error']})"
            )
    plot(ctx, rows)
    findings(cfg, ctx, rows, skipped)


def plot(ctx: RunContext, rows: list[dict]) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    labels = [r["strategy"] + ("" if r["database"] == "postgresql" else "\n(crdb)") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(labels, [r["final"] for r in rows], color=["tab:red" if r["lost"] else "tab:green" for r in rows])
    if rows:
        axes[0].axhline(rows[0]["expected"], color="black", linestyle="--", label="expected")
        axes[0].legend()
    axes[0].set(title="final total", ylabel="counter value")
    axes[1].bar(labels, [r["throughput"] for r in rows], color="tab:blue")
    axes[1].set(title="throughput", ylabel="updates/s")
    axes[2].bar(labels, [r["p99_ms"] for r in rows], color="tab:gray")
    axes[2].set(title="p99 latency of one update (retries included)", ylabel="ms")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(ctx.artifact("contention.png"), dpi=110)
    plt.close(fig)


def findings(cfg: Config, ctx: RunContext, rows: list[dict], skipped: dict[str, str]) -> None:
    expected = cfg.agents * cfg.updates
    for database in dict.fromkeys(r["database"] for r in rows):
        mine = {r["strategy"]: r for r in rows if r["database"] == database}
        naive = mine.get("naive")
        if naive:
            ctx.finding(
                f"{database}, naive read-then-write: {naive['final']:,} of {expected:,} ({naive['lost']:,} updates lost, "
                f"{naive['lost'] / expected:.1%}). Two agents that read the same value both write value + 1; nothing "
                "errors, the total is just wrong."
            )
            ctx.failure_mode(
                f"naive read-modify-write under {cfg.agents} concurrent agents silently loses updates "
                f"({naive['lost']:,} of {expected:,} on {database})"
            )
        safe = [r for s, r in mine.items() if s != "naive"]
        exact = [r["strategy"] for r in safe if r["final"] == expected]
        wrong = [f"{r['strategy']} {r['final']:,}" for r in safe if r["final"] != expected]
        if safe:
            ctx.finding(
                f"{database}: {len(exact)} of {len(safe)} safe strategies ended exact at {expected:,}"
                + (f" ({', '.join(exact)})" if exact else "")
                + (f"; NOT exact: {', '.join(wrong)}" if wrong else "")
                + "."
            )
            fastest = max(safe, key=lambda r: r["throughput"])
            parts = [
                f"{r['strategy']} {r['throughput']:.0f} updates/s, p99 {r['p99_ms']:.1f} ms, {r['retries']:,} retries "
                f"({r['retries'] / expected:.2f} per update)"
                for r in safe
            ]
            ctx.finding(
                f"{database}, the price of correctness: " + "; ".join(parts) + f". Fastest correct strategy here: "
                f"{fastest['strategy']}"
                + (f" ({fastest['throughput'] / naive['throughput']:.2f}x the naive rate)" if naive else "")
                + ". Locks make writers wait (for_update: no retries); optimistic and serializable make "
                "the losers redo their work, which is wasted effort when the work is a model call."
            )
    for database, why in skipped.items():
        ctx.finding(f"{database} rows skipped: {why}. The same run_transaction code (40001 retry) is what runs there.")
    ctx.finding(
        f"Timings on {os.cpu_count()} shared vCPUs with {cfg.agents} agent processes plus the database "
        "server: absolute rates are machine-bound; the ranking and the lost-update counts are the lesson."
    )


EXERCISE = Exercise(
    id="phase15.contention",
    title="Agents sharing one counter: lost updates vs FOR UPDATE, optimistic and SERIALIZABLE",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {}, "crdb": {"databases": ["cockroachdb"]}},
    tiny={"agents": 3, "updates": 30},
    smoke={"agents": 3, "updates": 30},
    summary_metrics=(
        "lost_updates_naive",
        "lost_updates_for_update",
        "lost_updates_optimistic",
        "lost_updates_serializable",
    ),
    methods={"cpu": "same", "a100": "same", "crdb": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
