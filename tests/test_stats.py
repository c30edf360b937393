"""Rates are reported with their n and a Wilson interval (lab/stats.py)."""

import pytest

from lab.stats import mean_interval, rate_interval, rate_note, record_rate


def test_the_wilson_interval_is_inside_0_1_and_not_degenerate_at_the_ends():
    low, high = rate_interval(20, 20)
    assert high == 1.0 and 0.83 < low < 0.84  # 20 of 20 still leaves room below 1
    low, high = rate_interval(0, 30)
    assert low == 0.0 and 0.11 < high < 0.12
    low, high = rate_interval(30, 60)
    assert low < 0.5 < high and high - low < 0.26


def test_a_rate_note_states_its_evidence_and_bad_counts_are_refused():
    assert rate_note(57, 60).startswith("57 of 60, 95% CI 0.86-0.98")
    with pytest.raises(ValueError, match="3 of 2"):
        rate_interval(3, 2)


def test_record_rate_writes_the_rate_its_n_and_its_interval():

    class Ctx:
        def __init__(self):
            self.metrics = {}

        def metric(self, name, value, unit="", higher_is_better=None, description=""):
            self.metrics[name] = (value, description)

    ctx = Ctx()
    assert record_rate(ctx, "asr_x", 3, 30, "attacks", False) == rate_interval(3, 30)
    assert ctx.metrics["asr_x"][0] == 0.1 and "3 of 30" in ctx.metrics["asr_x"][1]
    assert ctx.metrics["asr_x_n"][0] == 30 and ctx.metrics["asr_x_ci_low"][0] < 0.1 < ctx.metrics["asr_x_ci_high"][0]
    assert record_rate(ctx, "empty", 0, 0, "none") is None and ctx.metrics["empty"][0] is None


def test_mean_interval_widens_with_spread_and_is_a_point_without_it():

    low, high = mean_interval([1, 2, 3, 4, 5])
    assert low < 3 < high and round(high - 3, 6) == round(3 - low, 6)
    assert mean_interval([2, 2, 2]) == (2, 2) and mean_interval([7]) == (7, 7)
    with pytest.raises(ValueError):
        mean_interval([])
