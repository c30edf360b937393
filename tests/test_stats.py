"""Rates are reported with their n and a Wilson interval (lab/stats.py)."""

import pytest

from lab.stats import rate_interval, rate_note


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
