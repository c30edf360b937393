"""The uncertainty of a rate: a share of n cases means little without n and an interval.

A rate measured on 20 or 60 cases can sit far from the rate it estimates; results report it with
its n and a 95% Wilson score interval (scipy's ``binomtest``), which, unlike the normal
approximation, stays inside [0, 1] and is not zero-width at 0 of n or n of n.
"""

from __future__ import annotations

from statistics import mean, stdev

import numpy as np


def rate_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for ``successes`` of ``n``."""
    from scipy.stats import binomtest  # noqa: PLC0415 (heavy: scipy loads on first use)

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a rate needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_note(successes: int, n: int) -> str:
    """ "57 of 60, 95% CI 0.86-0.98": how a rate's description states its evidence."""
    low, high = rate_interval(successes, n)
    return f"{successes} of {n}, 95% CI {low:.2f}-{high:.2f} (Wilson)"


def record_rate(
    ctx, name: str, successes: int, n: int, description: str, higher_is_better: bool | None = True
) -> tuple[float, float] | None:
    """Record a rate on a RunContext as four metrics — ``name`` (with its note), ``name_n``,
    ``name_ci_low``, ``name_ci_high`` — so no rate is published without its evidence; returns the
    interval (None, and a null rate, when there were no cases)."""
    if n == 0:
        ctx.metric(name, None, "fraction", higher_is_better, f"{description} (no cases)")
        ctx.metric(f"{name}_n", 0, "cases")
        return None
    low, high = rate_interval(successes, n)
    ctx.metric(name, successes / n, "fraction", higher_is_better, f"{description}: {rate_note(successes, n)}")
    ctx.metric(f"{name}_n", n, "cases")
    ctx.metric(f"{name}_ci_low", low, "fraction", description=f"95% Wilson lower bound of {name}")
    ctx.metric(f"{name}_ci_high", high, "fraction", description=f"95% Wilson upper bound of {name}")
    return low, high


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the t interval for the mean of ``values`` (a point when n = 1 or all are equal)."""

    from scipy.stats import t  # noqa: PLC0415 (heavy: scipy loads on first use)

    values = [float(v) for v in values]
    if not values:
        raise ValueError("a mean needs at least one value")
    m = mean(values)
    if len(values) == 1 or len(set(values)) == 1:
        return m, m
    half = t.ppf((1 + confidence) / 2, len(values) - 1) * stdev(values) / len(values) ** 0.5
    return m - half, m + half


def interval_text(successes: int, n: int) -> str:
    """ "0.57 [0.44, 0.69] (n=60)": a rate as a table cell that carries its n and 95% interval."""
    if n == 0:
        return "n/a (n=0)"
    low, high = rate_interval(successes, n)
    return f"{successes / n:.2f} [{low:.2f}, {high:.2f}] (n={n})"


TAIL_MIN_SAMPLES = 100  # below this a 99th percentile is the largest sample or an interpolation next to it


def tail(samples) -> tuple[str, float | None]:
    """("p99", value) over 100 or more samples, else ("max", the largest): a p99 of 30 samples is not a p99."""
    values = [float(v) for v in samples]
    if not values:
        return "max", None
    if len(values) < TAIL_MIN_SAMPLES:
        return "max", max(values)

    return "p99", float(np.percentile(values, 99))
