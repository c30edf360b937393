"""The Editor gate the capstone imports: the APPROVE rule, REJECT/ESCALATE, and clear input errors."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phase10_alignment.rubric_judge import Verdict
from phase11_evals.editor_gate import DIMENSIONS, FLAG, GateDecision, GateInputError, GateThresholds, decide

# quarter-point grid: every mean of four such scores is exact in binary, so boundaries are exact
grid = st.integers(4, 20).map(lambda k: k / 4)
any_score = st.floats(1.0, 5.0, allow_nan=False)


def scores_of(ta, cal, md, aud, flag=False, **extra):
    return dict(
        technical_accuracy=ta,
        calibration=cal,
        mechanistic_depth=md,
        audience_calibration=aud,
        confident_hallucination=flag,
        **extra,
    )


@settings(max_examples=400, deadline=None)
@given(grid, grid, grid, grid, st.booleans(), st.integers(0, 6))
def test_approve_iff_the_seed_rule_holds(ta, cal, md, aud, flag, revisions):
    decision = decide(scores_of(ta, cal, md, aud, flag), revisions_done=revisions)
    rule = ta >= 3.0 and cal >= 3.0 and (ta + cal + md + aud) / 4 >= 3.25 and not flag
    assert decision.approved == rule
    if not rule:
        assert decision.verdict == ("ESCALATE" if revisions >= 3 else "REJECT")
        assert decision.reasons  # the Writer is told why


@settings(max_examples=200, deadline=None)
@given(any_score, any_score, any_score, any_score, st.booleans())
def test_raising_a_score_never_turns_an_approval_into_a_rejection(ta, cal, md, aud, flag):
    before = decide(scores_of(ta, cal, md, aud, flag))
    for dim in DIMENSIONS:
        raised = scores_of(ta, cal, md, aud, flag)
        raised[dim] = min(5.0, raised[dim] + 0.5)
        if before.approved:
            assert decide(raised).approved


@settings(max_examples=200, deadline=None)
@given(any_score, any_score, any_score, any_score)
def test_a_confident_hallucination_flag_always_rejects(ta, cal, md, aud):
    decision = decide(scores_of(ta, cal, md, aud, flag=True))
    assert decision.verdict == "REJECT"
    assert any(FLAG in r for r in decision.reasons)


def test_rejection_names_each_failed_check_and_carries_scores_and_reasoning():
    d = decide(scores_of(2.4, 3.5, 4.0, 4.0, reasoning="defines GQA as a benchmark"))
    assert d.verdict == "REJECT"
    assert d.reasons == ("technical_accuracy 2.40 < 3.00",)  # mean 3.475 passes, calibration passes
    assert d.scores["technical_accuracy"] == 2.4 and d.mean == pytest.approx(3.475)
    text = d.feedback()
    assert "technical_accuracy 2.40" in text and "defines GQA as a benchmark" in text


def test_high_mean_does_not_rescue_a_low_accuracy_floor():
    # style dimensions at 5 lift the mean to 3.75, but accuracy 2.5 is below its own floor
    assert decide(scores_of(2.5, 3.0, 5.0, 4.5)).verdict == "REJECT"


def test_boundaries_are_inclusive():
    assert decide(scores_of(3.0, 3.0, 3.5, 3.5)).verdict == "APPROVE"  # mean exactly 3.25
    assert decide(scores_of(3.0, 3.0, 3.5, 3.25)).verdict == "REJECT"  # mean 3.1875


def test_escalates_after_three_revision_cycles_and_approves_regardless_of_cycles():
    bad = scores_of(1, 1, 1, 1, flag=True)
    assert [decide(bad, revisions_done=n).verdict for n in range(5)] == ["REJECT"] * 3 + ["ESCALATE"] * 2
    assert "human review" in decide(bad, revisions_done=3).reasons[-1]
    assert decide(scores_of(5, 5, 5, 5), revisions_done=7).verdict == "APPROVE"


def test_thresholds_are_configurable_and_frozen():
    strict = GateThresholds(technical_accuracy=4.0, calibration=4.0, mean=4.0, max_revisions=1)
    s = scores_of(3.5, 4.5, 4.5, 4.5)
    assert decide(s).verdict == "APPROVE"
    assert decide(s, thresholds=strict).verdict == "REJECT"
    assert decide(s, revisions_done=1, thresholds=strict).verdict == "ESCALATE"
    with pytest.raises(dataclasses.FrozenInstanceError):
        strict.mean = 1.0
    with pytest.raises(GateInputError, match="threshold 'mean'"):
        GateThresholds(mean=6.0)
    with pytest.raises(GateInputError, match="max_revisions"):
        GateThresholds(max_revisions=-1)


@pytest.mark.parametrize("field", [*DIMENSIONS, FLAG])
def test_missing_field_is_named(field):
    s = scores_of(4, 4, 4, 4)
    del s[field]
    with pytest.raises(GateInputError, match=f"field '{field}' is missing"):
        decide(s)


@pytest.mark.parametrize("value", [0.99, 5.01, 0, 6, math.nan, math.inf, -1])
def test_out_of_range_score_is_named(value):
    with pytest.raises(GateInputError, match="field 'calibration'"):
        decide(scores_of(4, value, 4, 4))


@pytest.mark.parametrize("value", ["4", None, True])
def test_wrong_type_score_is_named(value):
    with pytest.raises(GateInputError, match="field 'mechanistic_depth' must be a number"):
        decide(scores_of(4, 4, value, 4))


def test_flag_must_be_a_bool_and_revisions_an_int():
    with pytest.raises(GateInputError, match=f"field '{FLAG}' must be true or false"):
        decide(scores_of(4, 4, 4, 4, flag="no"))
    with pytest.raises(GateInputError, match="revisions_done"):
        decide(scores_of(4, 4, 4, 4), revisions_done=-1)


def test_accepts_a_phase10_judge_verdict():

    v = Verdict(
        scores={d: 4.0 for d in DIMENSIONS},
        flags={FLAG: True},
        reasoning="invented benchmark numbers",
        attempts=1,
        method="json",
    )
    d = decide(v)
    assert isinstance(d, GateDecision) and d.verdict == "REJECT" and d.reasoning == "invented benchmark numbers"
    assert d.to_dict()["verdict"] == "REJECT"
