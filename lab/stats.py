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


def record_rate(ctx, name: str, hits: int, n: int, description: str, *,
                higher_is_better: bool | None = True) -> tuple[float, float] | None:
    """Record a rate on a RunContext as four metrics — ``name`` (hits/n, its description carrying the
    evidence), ``name_n``, ``name_ci_low`` and ``name_ci_high`` (95% Wilson) — and return the interval.
    With no cases the rate is recorded as None with ``name_n`` = 0, never as 0 of 0 read as 0.0."""
    if n == 0:
        ctx.metric(name, None, "fraction", higher_is_better, f"{description} (no cases)")
        ctx.metric(f"{name}_n", 0, "cases")
        return None
    low, high = rate_interval(hits, n)
    ctx.metric(name, hits / n, "fraction", higher_is_better, f"{description}: {rate_note(hits, n)}")
    ctx.metric(f"{name}_n", n, "cases")
    ctx.metric(f"{name}_ci_low", low, "fraction", description=f"95% Wilson lower bound of {name}")
    ctx.metric(f"{name}_ci_high", high, "fraction", description=f"95% Wilson upper bound of {name}")
    return low, high
