"""15.3 — Resilience under injected faults: retry, breaker, fallback and idempotent side effects.

The setup, all on loopback:

    job ─▶ ResilientLLM ─▶ [primary] openai-compatible client ─▶ FaultProxy ─▶ lab serve (the model)
                        └▶ [fallback] the same model, called directly (or ``fallback``: any spec)
        └▶ IdempotentEffects.run_once(job key, write a ledger row)   # the job's side effect

At each injected fault rate (0/10/30/50% of requests through the proxy get a 429 with Retry-After,
a 500, a 529, a timeout, a slow reply or a truncated body), ``requests`` jobs run one after another.
Jobs are delivered at least once, as a real queue does, in two ways: a job not finished within
the visibility timeout is delivered again while the first delivery is still running (two
deliveries race to perform the same side effect), and a finished job whose acknowledgement is lost
(at the injected fault rate, seeded) is delivered again afterwards. The ledger table has no unique
constraint, so a duplicate effect would show up there; the idempotency key must keep it at 0.

Measured per rate: completion rate, p50/p99 job latency, retries, breaker transitions, share of
calls served by the fallback, what a bare client (one attempt, no fallback) would have completed,
redeliveries, effects deduplicated by key, and duplicate side effects in the ledger (must be 0).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pydantic import field_validator

from lab import Exercise, ExerciseConfig, RunContext
from phase13_react.served import A100_LLM


class Config(ExerciseConfig):
    llm: str | None = None  # what `lab serve` serves (None: --llm / $LAB_LLM / embedded SmolLM2)
    fallback: str | None = None  # the fallback provider's spec; None: the served model, called directly
    fault_rates: list[float] = [0.0, 0.1, 0.3, 0.5]
    fault_kinds: list[str] = ["429", "500", "529", "timeout", "slow", "truncated"]  # equal weights
    requests: int = 30  # jobs per fault rate
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
        from phase15_production.faults import FAULT_KINDS

        unknown = sorted(set(value) - set(FAULT_KINDS))
        if unknown or not value:
            raise ValueError(f"unknown fault kind(s) {unknown}; choose from {list(FAULT_KINDS)}")
        return value


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
    def measure(cls, cfg: Config, upstream: str, served_model: str) -> "Timing":
        from phase15_production.resilience import client_for

        client = client_for(f"openai:{served_model}@{upstream}/v1", timeout_s=600)
        seconds = []
        for i in range(4):  # the first also loads the model: not counted
            start = time.perf_counter()
            client.chat([{"role": "user", "content": f"Greet customer number {i} in five words."}],
                        max_tokens=cfg.max_tokens)
            seconds.append(time.perf_counter() - start)
        healthy = sorted(seconds[1:])[1]  # the median of three warm replies
        timeout = max(cfg.client_timeout_s, cfg.timeout_x_healthy * healthy)
        return cls(healthy, timeout, timeout + 1.0, cfg.visibility_x_timeout * timeout)


def run_level(cfg: Config, ctx: RunContext, rate: float, upstream: str, served_model: str, fallback: str, url: str,
              timing: Timing) -> dict:
    """``cfg.requests`` jobs through a fresh proxy, chain, breakers and effects table at ``rate``."""
    import random
    import threading
    from collections import Counter
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from lab.db import connect
    from phase15_production.faults import FaultSpec, fault_proxy
    from phase15_production.resilience import IdempotentEffects, ResilientLLM, RetryPolicy

    tag = rate_tag(rate)
    effects_table, ledger = f"p15_effects_{os.getpid()}_{tag}", f"p15_ledger_{os.getpid()}_{tag}"
    with connect(url, autocommit=True) as conn:
        for t in (effects_table, ledger):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE {ledger} (key TEXT NOT NULL, text TEXT, at TIMESTAMPTZ DEFAULT now())")
    effects = IdempotentEffects(url, table=effects_table)
    spec = FaultSpec(rate=rate, kinds={k: 1.0 for k in cfg.fault_kinds}, seed=cfg.seed, retry_after_s=cfg.retry_after_s,
                     slow_s=cfg.slow_s, hang_s=timing.hang_s)
    reached, reached_lock = [0], threading.Lock()

    with fault_proxy(upstream, spec) as proxy:
        llm = ResilientLLM([f"openai:{served_model}@{proxy.url}/v1", fallback],
                           policy=RetryPolicy(cfg.max_attempts, cfg.base_wait_s, cfg.max_wait_s),
                           fail_max=cfg.fail_max, reset_timeout_s=cfg.reset_timeout_s,
                           timeout_s=timing.client_timeout_s)

        def deliver(job: int) -> str:
            """One delivery: ask the model, then perform the job's side effect under its key."""
            reply = llm.chat([{"role": "user", "content": f"Greet customer number {job} in five words."}],
                             max_tokens=cfg.max_tokens)
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
            for job in ctx.progress(range(cfg.requests), f"{rate:.0%} faults", total=cfg.requests):
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
        counts = dict(proxy.counts)

    with connect(url, autocommit=True) as conn:
        rows, keys = conn.execute(f"SELECT count(*), count(DISTINCT key) FROM {ledger}").fetchone()
        for t in (effects_table, ledger):
            conn.execute(f"DROP TABLE {t}")
    return dict(rate=rate, requests=cfg.requests, completed=completed, latencies=latencies, records=records,
                transitions=transitions, counts=counts, redelivered=redelivered, acks_lost=acks_lost, ledger_rows=rows, ledger_keys=keys,
                duplicates=rows - keys, executed=effects.executed, deduplicated=effects.deduplicated,
                reached_effect=reached[0])


def run(cfg: Config, ctx: RunContext) -> None:
    from phase13_react.served import agent_llm

    with agent_llm(ctx, cfg.llm) as (llm, _):
        inject_faults(cfg, ctx, llm)


def inject_faults(cfg: Config, ctx: RunContext, llm) -> None:
    from lab.db import database_url
    from lab.serve.background import serving

    fallback = cfg.fallback or llm.spec
    url = database_url()
    levels = []
    with serving(llm) as upstream:
        timing = Timing.measure(cfg, upstream, llm.model)
        ctx.log(f"healthy reply {timing.healthy_s:.2f} s: client timeout {timing.client_timeout_s:.1f} s")
        for rate in cfg.fault_rates:
            ctx.log(f"{rate:.0%} injected faults: {cfg.requests} jobs")
            levels.append(run_level(cfg, ctx, rate, upstream, llm.model, fallback, url, timing))
    report(cfg, ctx, levels, fallback, timing)


# --- the report -------------------------------------------------------------------------------------
def summarise(level: dict) -> dict:
    import numpy as np

    records = level["records"]
    calls = len(records)
    served = [r for r in records if r.served_by]
    lat = np.array(level["latencies"]) if level["latencies"] else np.array([np.nan])
    return dict(
        completion=level["completed"] / level["requests"],
        p50=float(np.percentile(lat, 50)), p99=float(np.percentile(lat, 99)),
        retries=sum(r.retries for r in records), calls=calls,
        fallback_share=sum(1 for r in served if r.provider_index) / max(len(served), 1),
        bare=sum(1 for r in records if r.provider_index == 0 and r.retries == 0) / max(calls, 1),
        transitions=sum(level["transitions"].values()),
        injected=sum(v for k, v in level["counts"].items() if k != "pass"),
        proxied=sum(level["counts"].values()),
    )


def report(cfg: Config, ctx: RunContext, levels: list[dict], fallback: str, timing: Timing) -> None:
    ctx.table("timing", [[round(timing.healthy_s, 3), round(timing.client_timeout_s, 2), round(timing.hang_s, 2),
                          round(timing.visibility_timeout_s, 2), cfg.retry_after_s, cfg.slow_s]],
              columns=["healthy reply s (median of 3 warm)", "client timeout s", "injected hang s",
                       "visibility timeout s", "429 Retry-After s", "slow fault delay s"],
              title=f"Clocks: client timeout = max({cfg.client_timeout_s:g} s, {cfg.timeout_x_healthy:g} × healthy reply)")
    ctx.metric("healthy_reply_s", round(timing.healthy_s, 3), "s", False, "lab serve, no proxy, warm, median of 3")
    rows = []
    for level in levels:
        s, tag = summarise(level), rate_tag(level["rate"])
        rows.append([f"{level['rate']:.0%}", level["requests"], round(s["completion"], 3), round(s["p50"], 2),
                     round(s["p99"], 2), s["calls"], s["retries"], s["injected"], s["proxied"],
                     ", ".join(f"{k} {v}" for k, v in sorted(level["transitions"].items())) or "-",
                     round(s["fallback_share"], 3), round(s["bare"], 3), level["redelivered"], level["acks_lost"],
                     level["reached_effect"],
                     level["executed"], level["deduplicated"], level["duplicates"]])
        where = f"{level['rate']:.0%} injected faults, {level['requests']} jobs"
        ctx.metric(f"completion_rate_{tag}", round(s["completion"], 4), "", True, where)
        ctx.metric(f"p50_s_{tag}", round(s["p50"], 3), "s", False, f"{where}; job latency, first successful delivery")
        ctx.metric(f"p99_s_{tag}", round(s["p99"], 3), "s", False, f"{where}; job latency, first successful delivery")
        ctx.metric(f"retries_{tag}", s["retries"], "retries", False, where)
        ctx.metric(f"breaker_transitions_{tag}", s["transitions"], "transitions", None, where)
        ctx.metric(f"fallback_share_{tag}", round(s["fallback_share"], 4), "", None,
                   f"{where}; share of served calls the fallback ({fallback}) served")
        ctx.metric(f"bare_client_completion_{tag}", round(s["bare"], 4), "", True,
                   f"{where}; calls whose first attempt on the primary succeeded (a client without retry/fallback)")
        ctx.metric(f"duplicate_side_effects_{tag}", level["duplicates"], "effects", False,
                   f"{where}; ledger rows minus distinct job keys")
        ctx.metric(f"effects_deduplicated_{tag}", level["deduplicated"], "effects", None,
                   f"{where}; deliveries whose effect was answered from the idempotency table")
        if level["completed"] < level["requests"]:
            ctx.failure_mode(f"{level['requests'] - level['completed']} of {level['requests']} jobs failed at "
                             f"{level['rate']:.0%} faults: every provider in the chain failed")
    ctx.metric("duplicate_side_effects", sum(lv["duplicates"] for lv in levels), "effects", False,
               "all rates; must be 0")
    ctx.table("by_fault_rate", rows, columns=[
        "faults", "jobs", "completion", "p50 s", "p99 s", "LLM calls", "retries", "faults injected", "proxied requests",
        "breaker transitions", "fallback share", "bare client", "redelivered (visibility timeout)",
        "redelivered (ack lost)", "deliveries reaching effect",
        "effects run", "effects deduplicated", "duplicate effects"],
        title=f"Jobs through retry ({cfg.max_attempts} attempts) + breaker (opens after {cfg.fail_max}, half-open after "
              f"{cfg.reset_timeout_s:g} s) + fallback, at each injected fault rate")
    kinds = sorted({k for lv in levels for k in lv["counts"]})
    ctx.table("injected", [[f"{lv['rate']:.0%}"] + [lv["counts"].get(k, 0) for k in kinds] for lv in levels],
              columns=["faults"] + kinds, title="What the proxy did to the primary's requests (pass = forwarded untouched)")
    plot(ctx, levels)
    findings(cfg, ctx, levels, fallback, timing)


def plot(ctx: RunContext, levels: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [lv["rate"] * 100 for lv in levels]
    s = [summarise(lv) for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(x, [v["completion"] for v in s], "o-", label="with retry + breaker + fallback")
    axes[0].plot(x, [v["bare"] for v in s], "s--", label="bare client (one attempt, primary only)")
    axes[0].plot(x, [v["fallback_share"] for v in s], "^:", label="share served by fallback")
    axes[0].set(xlabel="injected faults %", ylim=(-0.05, 1.05), title="completion")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [v["p50"] for v in s], "o-", label="p50")
    axes[1].plot(x, [v["p99"] for v in s], "s-", label="p99")
    axes[1].set(xlabel="injected faults %", ylabel="s", title="job latency")
    axes[1].legend()
    width = 1.5
    axes[2].bar([v - width for v in x], [v["retries"] for v in s], width=2 * width, label="retries")
    axes[2].bar([v + width for v in x], [v["transitions"] for v in s], width=2 * width, label="breaker transitions")
    axes[2].bar(x, [lv["duplicates"] for lv in levels], width=width, color="red", label="duplicate side effects")
    axes[2].set(xlabel="injected faults %", title="retries, breaker, duplicates")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.artifact("resilience.png"), dpi=110)
    plt.close(fig)


def findings(cfg: Config, ctx: RunContext, levels: list[dict], fallback: str, timing: Timing) -> None:
    s = {lv["rate"]: summarise(lv) for lv in levels}
    worst = max(levels, key=lambda lv: lv["rate"])
    w = s[worst["rate"]]
    ctx.finding(
        f"At {worst['rate']:.0%} injected faults, {w['completion']:.1%} of jobs completed (p50 {w['p50']:.2f} s, p99 "
        f"{w['p99']:.2f} s) where a bare client would have completed {w['bare']:.1%} of its calls; the fallback "
        f"({fallback}) served {w['fallback_share']:.1%} of calls, after {w['retries']} retries and "
        f"{w['transitions']} breaker transitions.")
    base = min(levels, key=lambda lv: lv["rate"])
    b = s[base["rate"]]
    ctx.finding(
        "Latency is what resilience costs: p99 went from " + f"{b['p99']:.2f} s at {base['rate']:.0%} faults to "
        f"{w['p99']:.2f} s at {worst['rate']:.0%} (Retry-After waits of {cfg.retry_after_s:g} s, client timeouts of "
        f"{timing.client_timeout_s:.1f} s, backoff). Once the breaker opens, calls skip the failing primary without "
        "waiting for it, which is what keeps the tail bounded.")
    redelivered = sum(lv["redelivered"] for lv in levels)
    acks = sum(lv["acks_lost"] for lv in levels)
    dedup = sum(lv["deduplicated"] for lv in levels)
    dups = sum(lv["duplicates"] for lv in levels)
    ctx.finding(
        f"{redelivered} jobs were delivered again while still running (not done within the "
        f"{timing.visibility_timeout_s:.1f} s visibility timeout) and {acks} after finishing (ack lost); "
        f"{sum(lv['reached_effect'] for lv in levels)} deliveries reached the side effect for "
        f"{sum(lv['ledger_keys'] for lv in levels)} distinct jobs, the idempotency key answered {dedup} of them from the "
        f"table, and the ledger holds {dups} duplicate side effects" + (" — as it must." if dups == 0 else " — A BUG."))
    if dups:
        ctx.failure_mode(f"{dups} duplicate side effects despite idempotency keys")


EXERCISE = Exercise(
    id="phase15.resilience",
    title="Retry, circuit breaker, fallback and idempotent effects under 0-50% injected faults",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"requests": 200, "llm": A100_LLM}},
    tiny={"fault_rates": [0.0, 0.5], "requests": 4, "max_tokens": 2, "retry_after_s": 0.2, "client_timeout_s": 2.0,
          "slow_s": 0.2, "reset_timeout_s": 1.0, "visibility_x_timeout": 1.5},
    smoke={"fault_rates": [0.0, 0.5], "requests": 4, "max_tokens": 2, "retry_after_s": 0.2, "client_timeout_s": 2.0,
           "slow_s": 0.2, "reset_timeout_s": 1.0, "visibility_x_timeout": 1.5},
    summary_metrics=("completion_rate_50pct", "fallback_share_50pct", "duplicate_side_effects"),
    methods={"cpu": "scaled", "a100": "same"},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
