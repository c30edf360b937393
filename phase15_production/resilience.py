"""15.3 — Resilience under injected faults: retry, breaker, fallback and idempotent side effects.

The setup, all on loopback:

    job ─▶ client ─▶ [primary]  openai-compatible ─▶ FaultProxy (deck seed s)     ─▶ lab serve (the model)
                 └▶ [fallback] openai-compatible ─▶ FaultProxy (deck seed s + 1) ─▶ lab serve
        └▶ IdempotentEffects.run_once(job key, write a ledger row)   # the job's side effect

The fallback is the same served model behind its OWN faulty path: an independent deck at the same
fault rate, so it fails as often as the primary (a fallback called directly could not fail, and would
make completion 1 by construction). Four clients — strategies — each run the same ``requests`` jobs
against a fresh proxy dealing the SAME deck (same seed, faults dealt in arrival order):

- ``bare``: one attempt on the primary, nothing else;
- ``retry``: ``max_attempts`` on the primary (backoff, Retry-After honoured);
- ``breaker``: retry + a circuit breaker in front of the primary;
- ``fallback``: retry + breaker on the primary, then the same on the fallback path.

At each injected fault rate (0/10/30/50% of requests get a 429 with Retry-After, a 500, a 529, a
timeout, a slow reply or a truncated body) the jobs run one after another. Jobs are delivered at least
once, as a real queue does: a job not finished within the visibility timeout is delivered again while
the first delivery still runs, and a finished job whose acknowledgement is lost (at the fault rate,
seeded) is delivered again afterwards. The ledger table has no unique constraint, so a duplicate effect
would show up there; the idempotency key must keep it at 0.

Every proxy writes a log row per request (``proxy_log.jsonl``, next to the result): the bare client's
completion is recomputed from it (a job completes iff its first request was served within the client
timeout) and must equal what the client saw. Measured per strategy and rate: completion (n, 95% Wilson
interval), requests sent to the proxies ("calls": what a provider bills and rate-limits), tokens the
model processed (cost: billed even for replies the client never used), job latency (p50, and the max —
p99 only over 100 or more jobs), retries, breaker transitions, the fallback's share of served calls,
redeliveries, effects deduplicated by key, and duplicate side effects in the ledger (must be 0).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
from pydantic import field_validator

from lab import Exercise, ExerciseConfig, RunContext
from lab.db import connect, database_url
from lab.serve.background import serving
from lab.stats import interval_text, rate_note, record_rate, tail
from phase13_react.served import A100_LLM, agent_llm
from phase15_production.faults import FAULT_KINDS, FaultSpec, fault_proxy, first_attempts_served, write_log
from phase15_production.resilient_calls import IdempotentEffects, ResilientLLM, RetryPolicy, client_for


class Config(ExerciseConfig):
    llm: str | None = None  # what `lab serve` serves (None: --llm / $LAB_LLM / embedded SmolLM2)
    fault_rates: list[float] = [0.0, 0.1, 0.3, 0.5]
    fault_kinds: list[str] = ["429", "500", "529", "timeout", "slow", "truncated"]  # equal weights
    requests: int = 30  # jobs per fault rate and strategy
    max_tokens: int = 8  # short generations: the lesson is the failures, not the text
    max_attempts: int = 3  # per provider, first try included
    base_wait_s: float = 0.1  # jittered exponential backoff base
    max_wait_s: float = 1.0
    retry_after_s: float = 1.0  # what the proxy's 429s ask for (honoured by the retry policy)
    client_timeout_s: float = 5.0  # at least; raised to timeout_x_healthy × the healthy reply time measured first
    timeout_x_healthy: float = 3.0  # so that injected faults, not a busy machine, are what time out
    slow_s: float = 1.0
    fail_max: int = 3  # consecutive transient failures that open the breaker
    reset_timeout_s: float = 5.0  # open -> half-open after this long
    visibility_x_timeout: float = 2.0  # a job not done within this × the client timeout is delivered again

    @field_validator("fault_rates")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= r <= 1.0 for r in value):
            raise ValueError(f"fault rates must be within [0, 1], got {value}")
        return value

    @field_validator("fault_kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:

        unknown = sorted(set(value) - set(FAULT_KINDS))
        if unknown or not value:
            raise ValueError(f"unknown fault kind(s) {unknown}; choose from {list(FAULT_KINDS)}")
        return value


STRATEGIES = ("bare", "retry", "breaker", "fallback")  # each adds one layer to the one before
STRATEGY_LABELS = {
    "bare": "bare client (1 attempt)",
    "retry": "retry",
    "breaker": "retry + breaker",
    "fallback": "retry + breaker + fallback",
}
LOG_FILE = "proxy_log.jsonl"


def rate_tag(rate: float) -> str:
    return f"{round(rate * 100):d}pct"


@dataclass
class Timing:
    """The clocks of one run, set from the healthy reply time measured before any fault."""

    healthy_s: float  # median of three warm replies straight from `lab serve`
    client_timeout_s: float
    hang_s: float  # an injected timeout holds its request this long: past the client's timeout
    visibility_timeout_s: float

    @classmethod
    def measure(cls, cfg: Config, upstream: str, served_model: str) -> Timing:

        client = client_for(f"openai:{served_model}@{upstream}/v1", timeout_s=600)
        seconds = []
        for i in range(4):  # the first also loads the model: not counted
            start = time.perf_counter()
            client.chat(
                [{"role": "user", "content": f"Greet customer number {i} in five words."}], max_tokens=cfg.max_tokens
            )
            seconds.append(time.perf_counter() - start)
        healthy = sorted(seconds[1:])[1]  # the median of three warm replies
        timeout = max(cfg.client_timeout_s, cfg.timeout_x_healthy * healthy)
        return cls(healthy, timeout, timeout + 1.0, cfg.visibility_x_timeout * timeout)


def strategy_client(cfg: Config, strategy: str, primary: str, fallback: str, timing: Timing):
    """The client a strategy puts between a job and the model (a ResilientLLM with layers switched off)."""

    chain = [primary, fallback] if strategy == "fallback" else [primary]
    attempts = 1 if strategy == "bare" else cfg.max_attempts
    return ResilientLLM(
        chain,
        policy=RetryPolicy(attempts, cfg.base_wait_s, cfg.max_wait_s),
        fail_max=cfg.fail_max if strategy in ("breaker", "fallback") else None,
        reset_timeout_s=cfg.reset_timeout_s,
        timeout_s=timing.client_timeout_s,
    )


def run_level(
    cfg: Config, ctx: RunContext, rate: float, strategy: str, upstream: str, served_model: str, url: str, timing: Timing
) -> dict:
    """``cfg.requests`` jobs through fresh proxies (the primary's deck, and for ``fallback`` a second,
    independent deck), the strategy's client and a fresh effects table, at ``rate``."""

    tag = f"{strategy}_{rate_tag(rate)}"
    effects_table, ledger = f"p15_effects_{os.getpid()}_{tag}", f"p15_ledger_{os.getpid()}_{tag}"
    with connect(url, autocommit=True) as conn:
        for t in (effects_table, ledger):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE {ledger} (key TEXT NOT NULL, text TEXT, at TIMESTAMPTZ DEFAULT now())")
    effects = IdempotentEffects(url, table=effects_table)
    reached, reached_lock = [0], threading.Lock()

    def spec(seed: int) -> FaultSpec:
        return FaultSpec(
            rate=rate,
            kinds={k: 1.0 for k in cfg.fault_kinds},
            seed=seed,
            retry_after_s=cfg.retry_after_s,
            slow_s=cfg.slow_s,
            hang_s=timing.hang_s,
        )

    with ExitStack() as stack:
        paths = {"primary": stack.enter_context(fault_proxy(upstream, spec(cfg.seed)))}
        if strategy == "fallback":
            paths["fallback"] = stack.enter_context(fault_proxy(upstream, spec(cfg.seed + 1)))
        specs = {name: f"openai:{served_model}@{proxy.url}/v1" for name, proxy in paths.items()}
        llm = strategy_client(cfg, strategy, specs["primary"], specs.get("fallback", ""), timing)

        def deliver(job: int) -> str:
            """One delivery: ask the model, then perform the job's side effect under its key."""
            reply = llm.chat(
                [{"role": "user", "content": f"Greet customer number {job} in five words."}], max_tokens=cfg.max_tokens
            )
            with reached_lock:
                reached[0] += 1

            def publish() -> str:
                with connect(url, autocommit=True) as c:
                    c.execute(f"INSERT INTO {ledger} (key, text) VALUES (%s, %s)", (f"job-{job}", reply.text))
                return reply.text

            return effects.run_once(f"job-{job}", publish)

        latencies, completed, redelivered, acks_lost = [], 0, 0, 0
        ack_rng = random.Random(f"{cfg.seed}-acks-{rate}")
        with ThreadPoolExecutor(2) as pool:
            for job in ctx.progress(range(cfg.requests), f"{rate:.0%} faults, {strategy}", total=cfg.requests):
                start = time.perf_counter()
                futures = {pool.submit(deliver, job)}
                done, _ = wait(futures, timeout=timing.visibility_timeout_s)
                if not done:  # the queue's visibility timeout: deliver again, the first is still running
                    futures.add(pool.submit(deliver, job))
                    redelivered += 1
                finished, ok = None, False
                pending = set(futures)
                while pending and not ok:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    ok = any(f.exception() is None for f in done)
                    finished = time.perf_counter() - start
                wait(pending)  # the other delivery finishes before the next job starts
                if ok:
                    completed += 1
                    latencies.append(finished)
                    if ack_rng.random() < rate:  # the ack was lost: the queue delivers the finished job again
                        acks_lost += 1
                        wait([pool.submit(deliver, job)])
        transitions = sum((b.transitions for b in llm.breakers), start=Counter())
        records = list(llm.records)
        counts = dict(paths["primary"].counts)
        log = [dict(row, rate=rate, strategy=strategy, path=name) for name, proxy in paths.items() for row in proxy.log]

    with connect(url, autocommit=True) as conn:
        rows, keys = conn.execute(f"SELECT count(*), count(DISTINCT key) FROM {ledger}").fetchone()
        for t in (effects_table, ledger):
            conn.execute(f"DROP TABLE {t}")
    return dict(
        rate=rate,
        strategy=strategy,
        requests=cfg.requests,
        completed=completed,
        latencies=latencies,
        records=records,
        transitions=transitions,
        counts=counts,
        log=log,
        redelivered=redelivered,
        acks_lost=acks_lost,
        ledger_rows=rows,
        ledger_keys=keys,
        duplicates=rows - keys,
        executed=effects.executed,
        deduplicated=effects.deduplicated,
        reached_effect=reached[0],
    )


def run(cfg: Config, ctx: RunContext) -> None:

    with agent_llm(ctx, cfg.llm) as (llm, _):
        inject_faults(cfg, ctx, llm)


def inject_faults(cfg: Config, ctx: RunContext, llm) -> None:

    url = database_url()
    levels = []
    with serving(llm) as upstream:
        timing = Timing.measure(cfg, upstream, llm.model)
        ctx.log(f"healthy reply {timing.healthy_s:.2f} s: client timeout {timing.client_timeout_s:.1f} s")
        for rate in cfg.fault_rates:
            for strategy in STRATEGIES:
                ctx.log(f"{rate:.0%} injected faults, {strategy}: {cfg.requests} jobs")
                levels.append(run_level(cfg, ctx, rate, strategy, upstream, llm.model, url, timing))

    write_log([row for lv in levels for row in lv["log"]], ctx.artifact(LOG_FILE))
    report(cfg, ctx, levels, timing)


# --- the report -------------------------------------------------------------------------------------
def bare_from_log(rows: list[dict], rate: float, within_s: float) -> tuple[int, int]:
    """(completed, jobs) of the bare client at ``rate``, recomputed from the proxy log alone."""

    return first_attempts_served(
        [r for r in rows if r["strategy"] == "bare" and r["rate"] == rate and r["path"] == "primary"], within_s
    )


def summarise(level: dict) -> dict:

    records = level["records"]
    served = [r for r in records if r.served_by]
    tail_name, tail_s = tail(level["latencies"])
    return dict(
        p50=float(np.percentile(level["latencies"], 50)) if level["latencies"] else None,
        tail_name=tail_name,
        tail=tail_s,
        retries=sum(r.retries for r in records),
        calls=len(level["log"]),
        tokens=sum(r["tokens"] for r in level["log"]),
        fallback_served=sum(1 for r in served if r.provider_index),
        served=len(served),
        transitions=sum(level["transitions"].values()),
        injected=sum(v for k, v in level["counts"].items() if k != "pass"),
    )


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def report(cfg: Config, ctx: RunContext, levels: list[dict], timing: Timing) -> None:

    ctx.table(
        "timing",
        [
            [
                round(timing.healthy_s, 3),
                round(timing.client_timeout_s, 2),
                round(timing.hang_s, 2),
                round(timing.visibility_timeout_s, 2),
                cfg.retry_after_s,
                cfg.slow_s,
            ]
        ],
        columns=[
            "healthy reply s (median of 3 warm)",
            "client timeout s",
            "injected hang s",
            "visibility timeout s",
            "429 Retry-After s",
            "slow fault delay s",
        ],
        title=f"Clocks: client timeout = max({cfg.client_timeout_s:g} s, {cfg.timeout_x_healthy:g} × healthy reply)",
    )
    ctx.metric("healthy_reply_s", round(timing.healthy_s, 3), "s", False, "lab serve, no proxy, warm, median of 3")
    rows = []
    log = [row for lv in levels for row in lv["log"]]
    for level in levels:
        s, strategy, rate = summarise(level), level["strategy"], level["rate"]
        tag = f"{strategy}_{rate_tag(rate)}"
        where = f"{rate:.0%} injected faults, {STRATEGY_LABELS[strategy]}, {level['requests']} jobs"
        completed = level["completed"]
        if strategy == "bare":
            from_log, jobs = bare_from_log(log, rate, timing.client_timeout_s)
            where += (
                f"; recomputed from {LOG_FILE}: {from_log} of {jobs} first requests served within the "
                f"{timing.client_timeout_s:.1f} s client timeout"
            )
            if (from_log, jobs) != (completed, level["requests"]):
                ctx.failure_mode(
                    f"bare client at {rate:.0%}: the client completed {completed} of {level['requests']} "
                    f"jobs but the proxy log says {from_log} of {jobs}"
                )
        record_rate(ctx, f"completion_rate_{tag}", completed, level["requests"], where)
        ctx.metric(f"calls_{tag}", s["calls"], "requests", False, f"{where}; requests sent to the fault proxies")
        ctx.metric(
            f"tokens_billed_{tag}",
            s["tokens"],
            "tokens",
            False,
            f"{where}; tokens the model processed for those requests (truncated replies included)",
        )
        ctx.metric(f"p50_s_{tag}", _r(s["p50"], 3), "s", False, f"{where}; job latency of completed jobs")
        ctx.metric(
            f"{s['tail_name']}_s_{tag}",
            _r(s["tail"], 3),
            "s",
            False,
            f"{where}; job latency of completed jobs ({s['tail_name']} of {len(level['latencies'])})",
        )
        ctx.metric(
            f"duplicate_side_effects_{tag}",
            level["duplicates"],
            "effects",
            False,
            f"{where}; ledger rows minus distinct job keys",
        )
        if strategy == "fallback":
            ctx.metric(f"retries_{tag}", s["retries"], "retries", False, where)
            ctx.metric(f"breaker_transitions_{tag}", s["transitions"], "transitions", None, where)
            record_rate(
                ctx,
                f"fallback_share_{rate_tag(rate)}",
                s["fallback_served"],
                s["served"],
                f"{where}; share of served calls the fallback path served",
            )
            ctx.metric(
                f"effects_deduplicated_{tag}",
                level["deduplicated"],
                "effects",
                None,
                f"{where}; deliveries whose effect was answered from the idempotency table",
            )
        rows.append(
            [
                f"{rate:.0%}",
                STRATEGY_LABELS[strategy],
                interval_text(completed, level["requests"]),
                _r(s["p50"]),
                f"{s['tail_name']} {s['tail']:.2f}" if s["tail"] is not None else "-",
                s["calls"],
                s["tokens"],
                round(s["tokens"] / completed, 1) if completed else None,
                s["retries"],
                ", ".join(f"{k} {v}" for k, v in sorted(level["transitions"].items())) or "-",
                interval_text(s["fallback_served"], s["served"]) if strategy == "fallback" else "-",
                level["redelivered"],
                level["acks_lost"],
                level["reached_effect"],
                level["executed"],
                level["deduplicated"],
                level["duplicates"],
            ]
        )
        if completed < level["requests"] and strategy != "bare":
            ctx.failure_mode(
                f"{STRATEGY_LABELS[strategy]} at {rate:.0%} faults: {level['requests'] - completed} of "
                f"{level['requests']} jobs failed (every attempt on every path failed)"
            )
    ctx.metric(
        "duplicate_side_effects",
        sum(lv["duplicates"] for lv in levels),
        "effects",
        False,
        "all rates and strategies; must be 0",
    )
    ctx.table(
        "by_strategy",
        rows,
        columns=[
            "faults",
            "strategy",
            "completion [95% CI] (n)",
            "p50 s",
            "slowest s (max; p99 from 100 jobs)",
            "requests to proxies",
            "tokens billed",
            "tokens per completed job",
            "retries",
            "breaker transitions",
            "fallback share [95% CI] (n)",
            "redelivered (visibility timeout)",
            "redelivered (ack lost)",
            "deliveries reaching effect",
            "effects run",
            "effects deduplicated",
            "duplicate effects",
        ],
        title=f"The same jobs and the same fault deck per strategy: retry ({cfg.max_attempts} attempts), breaker "
        f"(opens after {cfg.fail_max}, half-open after {cfg.reset_timeout_s:g} s), fallback (its own faulty path)",
    )
    kinds = sorted({k for lv in levels for k in lv["counts"]})
    ctx.table(
        "injected",
        [
            [f"{lv['rate']:.0%}", STRATEGY_LABELS[lv["strategy"]]] + [lv["counts"].get(k, 0) for k in kinds]
            for lv in levels
        ],
        columns=["faults", "strategy"] + kinds,
        title="What the primary's proxy did to its requests (pass = forwarded untouched)",
    )
    plot(ctx, levels)
    findings(cfg, ctx, levels, timing)


def plot(ctx: RunContext, levels: list[dict]) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for strategy, style in zip(STRATEGIES, ("s--", "o:", "^-.", "o-")):
        mine = [lv for lv in levels if lv["strategy"] == strategy]
        x = [lv["rate"] * 100 for lv in mine]
        s = [summarise(lv) for lv in mine]
        axes[0].plot(x, [lv["completed"] / lv["requests"] for lv in mine], style, label=STRATEGY_LABELS[strategy])
        axes[1].plot(x, [v["calls"] / lv["requests"] for v, lv in zip(s, mine)], style, label=STRATEGY_LABELS[strategy])
        axes[2].plot(
            x, [v["tail"] if v["tail"] is not None else float("nan") for v in s], style, label=STRATEGY_LABELS[strategy]
        )
    axes[0].set(xlabel="injected faults %", ylim=(-0.05, 1.05), title="job completion")
    axes[1].set(xlabel="injected faults %", ylabel="requests per job", title="calls (what is billed)")
    axes[2].set(xlabel="injected faults %", ylabel="s", title="slowest completed job (max)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.artifact("resilience.png"), dpi=110)
    plt.close(fig)


def findings(cfg: Config, ctx: RunContext, levels: list[dict], timing: Timing) -> None:

    worst = max(lv["rate"] for lv in levels)
    at = {lv["strategy"]: lv for lv in levels if lv["rate"] == worst}
    parts = [
        f"{STRATEGY_LABELS[k]} {rate_note(lv['completed'], lv['requests'])} in {summarise(lv)['calls']} requests"
        for k, lv in at.items()
    ]
    ctx.finding(
        f"At {worst:.0%} injected faults, on the same fault deck, jobs completed: "
        + "; ".join(parts)
        + ". The fallback path had its own deck at the same rate, so it could fail too."
    )
    full = summarise(at["fallback"]) if "fallback" in at else None
    if full:
        ctx.finding(
            f"Latency is what resilience costs: at {worst:.0%} faults the slowest completed job took "
            f"{full['tail']:.2f} s ({full['tail_name']}) with retry + breaker + fallback (Retry-After waits of "
            f"{cfg.retry_after_s:g} s, client timeouts of {timing.client_timeout_s:.1f} s, backoff); "
            f"{full['retries']} retries, {full['transitions']} breaker transitions, "
            f"{full['tokens']} tokens billed."
        )
    redelivered = sum(lv["redelivered"] for lv in levels)
    acks = sum(lv["acks_lost"] for lv in levels)
    dedup = sum(lv["deduplicated"] for lv in levels)
    dups = sum(lv["duplicates"] for lv in levels)
    ctx.finding(
        f"{redelivered} jobs were delivered again while still running (not done within the "
        f"{timing.visibility_timeout_s:.1f} s visibility timeout) and {acks} after finishing (ack lost); "
        f"{sum(lv['reached_effect'] for lv in levels)} deliveries reached the side effect for "
        f"{sum(lv['ledger_keys'] for lv in levels)} distinct jobs, the idempotency key answered {dedup} of them from the "
        f"table, and the ledger holds {dups} duplicate side effects" + (" — as it must." if dups == 0 else " — A BUG.")
    )
    if dups:
        ctx.failure_mode(f"{dups} duplicate side effects despite idempotency keys")


TINY = {  # a toy deck for tests and the a100 smoke: seconds, same code path
    "fault_rates": [0.0, 0.5],
    "requests": 4,
    "max_tokens": 2,
    "retry_after_s": 0.2,
    "client_timeout_s": 2.0,
    "slow_s": 0.2,
    "reset_timeout_s": 1.0,
    "visibility_x_timeout": 1.5,
}

EXERCISE = Exercise(
    id="phase15.resilience",
    title="Bare, retry, retry + breaker and + fallback clients on one fault deck at 0-50% injected faults",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"requests": 200, "llm": A100_LLM}},
    tiny=TINY,
    smoke=TINY,  # the a100 profile's smoke runs the same toy deck
    summary_metrics=(
        "completion_rate_bare_50pct",
        "completion_rate_fallback_50pct",
        "fallback_share_50pct",
        "duplicate_side_effects",
    ),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
