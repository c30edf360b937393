"""The uncertainty of a rate: a share of n cases means little without n and an interval.

A rate measured on 20 or 60 cases can sit far from the rate it estimates; results report it with
its n and a 95% Wilson score interval (scipy's ``binomtest``), which, unlike the normal
approximation, stays inside [0, 1] and is not zero-width at 0 of n or n of n.
"""

from __future__ import annotations


def rate_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for ``successes`` of ``n``."""
    from scipy.stats import binomtest

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a rate needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_note(successes: int, n: int) -> str:
    """"57 of 60, 95% CI 0.86-0.98": how a rate's description states its evidence."""
    low, high = rate_interval(successes, n)
    return f"{successes} of {n}, 95% CI {low:.2f}-{high:.2f} (Wilson)"


def record_rate(ctx, name: str, hits: int, n: int, description: str) -> tuple[float, float] | None:
    """Record ``name`` (hits / n) with ``name_n``, ``name_ci_low`` and ``name_ci_high`` on a RunContext,
    so a table or README never shows the rate without its evidence; returns the interval (None: n = 0)."""
    if n == 0:
        ctx.metric(name, None, "fraction", True, f"{description} (no cases)")
        ctx.metric(f"{name}_n", 0, "cases")
        return None
    low, high = rate_interval(hits, n)
    ctx.metric(name, hits / n, "fraction", True, f"{description}: {rate_note(hits, n)}")
    ctx.metric(f"{name}_n", n, "cases")
    ctx.metric(f"{name}_ci_low", low, "fraction", description=f"95% Wilson lower bound of {name}")
    ctx.metric(f"{name}_ci_high", high, "fraction", description=f"95% Wilson upper bound of {name}")
    return low, high


def rate_cell(hits: int, n: int) -> str:
    """A rate as a table cell that carries its n and interval: "0.57 (17/30, 0.39-0.73)"."""
    if n == 0:
        return "n/a (0 cases)"
    low, high = rate_interval(hits, n)
    return f"{hits / n:.2f} ({hits}/{n}, {low:.2f}-{high:.2f})"


TAIL_MIN_SAMPLES = 100  # below this a 99th percentile is the largest sample or an interpolation next to it


def tail(samples) -> tuple[str, float | None]:
    """("p99", value) over 100 or more samples, else ("max", the largest): a p99 of 30 samples is not a p99."""
    values = [float(v) for v in samples]
    if not values:
        return "max", None
    if len(values) < TAIL_MIN_SAMPLES:
        return "max", max(values)
    import numpy as np

    return "p99", float(np.percentile(values, 99))
