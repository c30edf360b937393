"""Phase 11: the data as instruments, the statistics, the prefix cache, and each exercise end to end."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.jsonl import read_jsonl
from lab.runner import execute
from phase10_alignment.data import LOCAL_FILE, to_pair
from phase10_alignment.rubric_judge import JudgeFailure, Rubric, Verdict
from phase11_evals import editor_gate, judging, responders
from phase11_evals.calibration import agreement, judge_calibration, pearson, status
from phase11_evals.contamination import PairScores, retest_noise, score_signal, verbatim_overlap
from phase11_evals.evaldata import (
    DATA_DIR,
    DIMENSIONS,
    FLAG,
    EvalDataError,
    load_calibration,
    load_contamination_pairs,
    load_eval_set,
    load_rubric,
)
from phase11_evals.model_comparison import quadrant
from phase11_evals.responders import Answer, Responder, _until_end

# --- data -----------------------------------------------------------------------------------------------


def test_eval_set_has_50_prompts_in_7_categories_with_a_stable_hash():
    es = load_eval_set()
    assert len(es.prompts) == 50 and len(es.categories) == 7
    assert "agent_infrastructure" in es.categories
    assert all(len(es.in_category(c)) >= 7 for c in es.categories)
    assert len({p.id for p in es.prompts}) == 50
    assert es.sha256 == load_eval_set().sha256 and len(es.sha256) == 64
    assert [p.category for p in es.subset(2)] == [c for c in es.categories for _ in range(2)]


def _copy_data(tmp_path):
    shutil.copytree(DATA_DIR, tmp_path / "data")
    return tmp_path / "data"


def test_editing_the_eval_set_changes_its_hash(tmp_path):
    data = _copy_data(tmp_path)
    path = data / "eval_set.yaml"
    path.write_text(path.read_text().replace("why does it shrink the KV cache?", "why does it shrink the cache?"))
    assert load_eval_set(path).sha256 != load_eval_set().sha256


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.replace(
                "    category: fine_tuning\n    prompt: What does QLoRA",
                "    category: finetune\n    prompt: What does QLoRA",
            ),
            r"prompts\[23\] \(id ft-02\): field 'category' = 'finetune'",
        ),
        (lambda t: t.replace("  - id: ft-03", "  - id: ft-02"), r"duplicate id 'ft-02'"),
        (
            lambda t: t.replace("    key_facts: >-\n      Prompt tokens", "    facts: >-\n      Prompt tokens"),
            r"prompts\[24\] \(id ft-03\): missing field 'key_facts'",
        ),
    ],
)
def test_bad_eval_set_names_the_row_and_field(tmp_path, edit, message):
    path = _copy_data(tmp_path) / "eval_set.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(EvalDataError, match=message):
        load_eval_set(path)


def test_rubrics_load_as_phase10_rubrics_and_v1_1_tightens_only_accuracy():

    v10, v11 = load_rubric("1.0"), load_rubric("1.1")
    assert isinstance(v11, Rubric) and tuple(d.name for d in v11.dimensions) == DIMENSIONS
    assert v11.flags == (FLAG,) and v10.sha256() != v11.sha256()
    for old, new in zip(v10.dimensions, v11.dimensions):
        assert (old.anchors == new.anchors) == (new.name != "technical_accuracy")
    assert "caps technical_accuracy at 2" in v11.instructions and "caps" not in v10.instructions
    assert "core definition is wrong" in v11.dimensions[0].anchors[2]


def test_bad_rubric_names_the_field(tmp_path):
    data = _copy_data(tmp_path)
    path = data / "rubrics" / "v1.1.yaml"
    path.write_text(
        path.read_text().replace("      5: fully correct and precise", "      6: fully correct and precise")
    )
    with pytest.raises(EvalDataError, match=r"dimensions\[0\]: field 'anchors' must have exactly the keys 1..5"):
        load_rubric("1.1", data_dir=data)


def test_calibration_set_spans_the_score_range_and_says_who_labelled_it():
    cs = load_calibration(load_eval_set())
    assert len(cs.items) == 20
    assert "AI assistant" in cs.labeller and "not a human" in cs.labeller
    for dim in DIMENSIONS:
        assert {i.scores[dim] for i in cs.items} >= {1, 3, 5} or dim == "audience_calibration"
        assert all(i.rationales[dim] for i in cs.items)
    assert {i.scores["audience_calibration"] for i in cs.items} >= {1, 2, 4, 5}
    flagged = [i for i in cs.items if i.flag]
    assert 5 <= len(flagged) <= 15  # both classes present, so flag agreement means something
    assert all(i.scores["technical_accuracy"] <= 3 for i in flagged)


def test_bad_calibration_score_names_item_and_field(tmp_path):
    path = _copy_data(tmp_path) / "calibration.yaml"
    path.write_text(path.read_text().replace('calibration: [5, "states only', 'calibration: [7, "states only'))
    with pytest.raises(EvalDataError, match=r"items\[0\] \(id cal-01\): field 'reference.calibration'"):
        load_calibration(load_eval_set(), path)


def test_contamination_pairs_point_into_the_eval_set():
    pairs, sha = load_contamination_pairs(load_eval_set())
    assert len(pairs) == 10 and len(sha) == 64
    assert all(p.rephrased.lower() != p.original.prompt.lower() for p in pairs)
    assert {p.original.id for p in pairs} >= {"arch-01", "align-01"}  # the seed's two hallucination topics


# --- statistics and signals ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.floats(1, 5)), min_size=3, max_size=20))
def test_pearson_matches_numpy(pairs):
    xs, ys = [float(a) for a, _ in pairs], [b for _, b in pairs]
    r = pearson(xs, ys)
    if np.std(xs) < 1e-9 or np.std(ys) < 1e-6:
        return
    assert r == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), abs=1e-6)


def test_agreement_reports_r_mae_and_bias_direction():
    a = agreement([2, 3, 4, 5], [1, 2, 3, 4])  # judge one point lenient everywhere
    assert a["r"] == pytest.approx(1.0) and a["mae"] == 1.0 and a["mean_error"] == 1.0
    assert (a["judge_higher"], a["judge_lower"], a["n"]) == (4, 0, 4)
    assert agreement([3.3, 3.3, 3.3], [1, 3, 5])["r"] is None  # a constant judge has no ranking
    assert status(None, 0.75).startswith("NO SIGNAL") and status(0.75, 0.75) == "PASS"
    assert status(0.72, 0.75) == "NEEDS REVIEW"


def test_verbatim_overlap_counts_the_references_5_grams():
    ref = "GQA shares each key value head across a group of query heads"
    assert verbatim_overlap(ref, ref) == 1.0
    assert verbatim_overlap("Sure. " + ref + " which shrinks the cache.", ref) == 1.0
    assert verbatim_overlap("GQA is a visual question answering benchmark", ref) == 0.0
    assert 0 < verbatim_overlap("GQA shares each key value head but nothing else", ref) < 1
    assert verbatim_overlap("anything", "too short") == 0.0


def test_score_signal_needs_a_delta_beyond_the_judges_retest_noise():
    s = PairScores(orig_on_orig=4.0, reph_on_reph=3.0, orig_on_reph=3.9, reph_on_orig=3.2)
    assert s.delta == pytest.approx(1.0) and s.retests == pytest.approx((0.1, -0.2))
    assert retest_noise([0.1, -0.2, 0.2, -0.1]) == pytest.approx(math.sqrt(0.025))
    assert score_signal(1.0, 0.158, 2.0) and not score_signal(0.3, 0.158, 2.0)
    assert not score_signal(-1.0, 0.158, 2.0)  # better on the rephrasing is not memorization
    with pytest.raises(ValueError, match="cannot be measured"):
        retest_noise([])


def test_the_gate_rejects_every_reference_bad_calibration_response():
    """What eval_set used to publish as a metric (0 by construction) is a property of the gate and the data."""

    items = load_calibration(load_eval_set()).items
    bad = [i for i in items if i.flag or i.scores["technical_accuracy"] <= 2]
    assert bad, "the calibration set must contain reference-bad responses for this check to mean anything"
    assert [i.id for i in bad if editor_gate.decide({**i.scores, FLAG: i.flag}).approved] == []
    assert any(editor_gate.decide({**i.scores, FLAG: i.flag}).approved for i in items if i not in bad)


def test_quadrant_names_the_two_by_two_cell():
    assert quadrant(0.6, -0.2) == "style up, accuracy down"
    assert quadrant(0.01, 0.3) == "style flat, accuracy up"


# --- the exercises end to end ---------------------------------------------------------------------------


def _result(tmp_path, name):
    return json.loads((tmp_path / "phase11" / name / "cpu" / "result.json").read_text())


def test_eval_set_exercise_records_hashes_and_the_gate_on_reference_scores(tmp_path):
    from phase11_evals.eval_set import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    res = _result(tmp_path, "eval_set")
    assert res["metrics"]["n_prompts"]["value"] == 50 and res["metrics"]["n_categories"]["value"] == 7
    assert res["data"][0]["sha256"] == load_eval_set().sha256
    assert "gate_bad_responses_approved" not in res["metrics"]  # 0 by construction: a unit test now
    gate = res["tables"]["gate_on_reference"]["rows"]
    assert len(gate) == 20 and {r[-2] for r in gate} == {"APPROVE", "REJECT"}
    assert {r[0] for r in res["tables"]["rubrics"]["rows"]} == {"v1.0", "v1.1"}
    assert res["tables"]["rubric_v1_1_changes"]["rows"][0][0] == "technical_accuracy"
    assert 0 < res["metrics"]["max_prompt_cosine"]["value"] < 1
    assert {r["metric"] for r in res["reference"]} == {"n_prompts", "n_categories"}


@pytest.mark.slow
def test_calibration_exercise_compares_both_rubrics(tmp_path):
    from phase11_evals.calibration import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    res = _result(tmp_path, "calibration")
    overall = res["tables"]["calibration_overall"]["rows"]
    assert [r[0] for r in overall] == ["v1.0", "v1.1"]
    assert all(0 <= r[2] <= 4 for r in overall)  # pooled MAE on a 1..5 scale
    assert len(res["tables"]["calibration_by_dimension"]["rows"]) == 8
    assert len(res["tables"]["items"]["rows"]) == 6  # 3 items x 2 rubrics
    instruments = res["tables"]["judge_instruments"]["rows"]
    assert [r[4] for r in instruments] == [load_rubric("1.0").sha256(), load_rubric("1.1").sha256()]
    assert instruments[0][2] == "choice_probs" and len(instruments[0][5]) == 64
    ref = {r["metric"]: r for r in res["reference"]}
    assert ref["overall_r_v1_1"]["seed"] == 0.861 and "overall_r_v1_0" not in ref  # the seed's r is its v1.1 result
    assert all(r["delta"] is None for r in res["reference"])  # AI-written labels: a substitute, no delta
    assert res["method"].startswith("substitute: AI-written reference scores")
    assert "calibration_scatter.png" in res["artifacts"]


@pytest.mark.slow
def test_contamination_exercise_scores_both_wordings(tmp_path):
    from phase11_evals.contamination import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    res = _result(tmp_path, "contamination")
    row = res["tables"]["pairs"]["rows"][0]
    assert row[0] == "arch-01" and row[3] == pytest.approx(row[1] - row[2], abs=2e-3)
    assert 1 <= row[1] <= 5 and 1 <= row[2] <= 5 and row[9] in ("score", "no")
    assert row[6] == "n/a (no public reference)"
    assert res["metrics"]["pairs_scored"]["value"] == 1
    assert res["metrics"]["judge_retest_noise"]["value"] == pytest.approx(
        math.hypot(row[4], row[5]) / math.sqrt(2), abs=2e-3
    )
    assert res["method"].startswith("substitute: local:") and "choice probabilities" in res["method"]
    assert any(m.get("role") == "model under test" for m in res["models"])


@pytest.mark.slow
def test_model_comparison_exercise_scores_base_and_applies_the_gate(tmp_path):
    from phase11_evals.model_comparison import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    res = _result(tmp_path, "model_comparison")
    assert res["tables"]["variants"]["rows"] == [["base", "scored", ""]]
    answer = res["tables"]["responses"]["rows"][0]
    assert answer[0] == "base" and answer[1] == "arch-01"
    r = res["metrics"]["judge_calibration_r"]["value"]
    passed = res["metrics"]["judge_passed_calibration"]["value"]
    assert passed == (r is not None and r >= 0.75)
    approval = res["metrics"]["gate_approval_rate_base"]
    if passed:
        assert answer[8] in ("APPROVE", "REJECT", "ESCALATE") and approval["value"] is not None
    else:  # an uncalibrated judge's approvals are not published
        assert answer[8] == "n/a" and approval["value"] is None and approval["description"].startswith("n/a: ")
        assert res["tables"]["by_variant"]["rows"][0][4].startswith("n/a: ")
    assert 1 <= res["metrics"]["mean_base"]["value"] <= 5
    assert math.isclose(res["metrics"]["mean_base"]["value"], sum(answer[3:7]) / 4, abs_tol=0.01)
    assert "two-by-two" in " ".join(res["findings"])


@pytest.mark.slow
def test_batched_answers_match_one_at_a_time_and_keep_prompt_order():
    """Left-padded greedy batches (prompts of different lengths) give the answers and token counts of
    one-at-a-time decoding here, returned in the prompts' order; an early end is cut at its end token."""

    responder = Responder("base", "cpu")
    prompts = [p.prompt for p in load_eval_set().prompts[:4]] + ["Define LoRA in one sentence."]
    one = [responder.answer(p, 10) for p in prompts]
    many = responder.answer_all(prompts, 10, batch_size=3)
    assert [(a.text, a.new_tokens) for a in many] == [(a.text, a.new_tokens) for a in one]
    lengths = {
        len(responder.tok.apply_chat_template([{"role": "user", "content": p}], return_dict=True)["input_ids"])
        for p in prompts
    }
    assert len(lengths) > 1  # the batches really are padded
    end = next(iter(responder._end_ids()))
    assert _until_end([5, 6, end, end, end], {end}) == [5, 6, end] and _until_end([5, 6], {end}) == [5, 6]


# --- a planted contaminated pair must be detected ---------------------------------------------------------


def _public_answer() -> str:
    """A published text (Anthropic HH-RLHF, MIT, shipped in phase10_alignment/data) to plant as memorized."""

    return to_pair(read_jsonl(LOCAL_FILE)[0], "hh-rlhf row 0").chosen


class _PlantedModel:
    """Stands in for a Responder: recites a memorized answer to one exact wording, guesses elsewhere."""

    def __init__(self, planted_prompt: str, memorized: str):
        self.planted_prompt, self.memorized = planted_prompt, memorized

    def __call__(self, variant, profile):
        return self

    def describe(self):
        return {"id": "planted model", "role": "model under test"}

    def answer(self, prompt, max_new_tokens):

        text = self.memorized if prompt == self.planted_prompt else f"It is probably about {prompt.split()[-1]}"
        return Answer(text, 8, 0.01)

    def answer_all(self, prompts, max_new_tokens, batch_size=8):
        return [self.answer(p, max_new_tokens) for p in prompts]


class _StubJudge:
    """Deterministic judge: a memorized answer scores high; anything else ~2.5 plus a small wording wobble."""

    method = "json"

    def __init__(self, memorized: str):

        self.memorized = memorized
        self.llm = SimpleNamespace(spec="stub:judge", describe=lambda: {"id": "stub:judge"})

    def describe(self):
        return {
            "judge_model": "stub:judge",
            "method": "json",
            "rubric": "stub",
            "rubric_sha256": "0" * 64,
            "prompt_sha256": "0" * 64,
        }

    def score(self, prompt, response, reference=None):

        value = 4.8 if response == self.memorized else 2.5 + 0.1 * (len(prompt) % 5 - 2)
        return Verdict(
            scores={d: value for d in DIMENSIONS}, flags={FLAG: False}, reasoning="", attempts=1, method="json"
        )


@pytest.mark.parametrize("public", [False, True])
def test_a_planted_contaminated_pair_is_detected_and_the_others_are_not(tmp_path, monkeypatch, public):

    from phase11_evals.contamination import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    memorized = _public_answer()
    shipped = yaml.safe_load((DATA_DIR / "contamination_pairs.yaml").read_text())
    pairs = shipped["pairs"][:4]
    if public:
        pairs[0] = {
            **pairs[0],
            "public_reference": {
                "text": memorized,
                "licence": "MIT",
                "source": "Anthropic/hh-rlhf harmless-base test row 0",
            },
        }
    pairs_file = tmp_path / "pairs.yaml"
    pairs_file.write_text(yaml.safe_dump({**shipped, "pairs": pairs}))
    planted_prompt = load_eval_set().by_id(pairs[0]["original_id"]).prompt
    monkeypatch.setattr(responders, "Responder", _PlantedModel(planted_prompt, memorized))
    monkeypatch.setattr(judging, "build_judge", lambda spec, rubric: _StubJudge(memorized))

    doc = execute(EXERCISE, "cpu", {"pairs": str(pairs_file)}, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    rows = {r[0]: r for r in doc["tables"]["pairs"]["rows"]}
    assert rows[pairs[0]["original_id"]][9] == ("score + verbatim" if public else "score")
    assert [rows[p["original_id"]][9] for p in pairs[1:]] == ["no"] * 3
    assert doc["metrics"]["contamination_signals"]["value"] == 1
    assert doc["metrics"]["reverse_score_gaps"]["value"] == 0  # no pair is better on its rephrasing
    assert doc["metrics"]["judge_retest_noise"]["value"] > 0
    assert doc["metrics"]["verbatim_signals"]["value"] == (1 if public else None)
    assert rows[pairs[1]["original_id"]][6] == "n/a (no public reference)"
    assert doc["method"] == "scaled"  # a JSON judge: the declared method holds


def test_gate_approvals_need_a_judge_calibrated_in_the_same_run():

    items = load_calibration(load_eval_set()).items[:6]

    def verdicts(fn):
        return [
            Verdict(scores={d: fn(i) for d in DIMENSIONS}, flags={FLAG: False}, reasoning="", attempts=1, method="json")
            for i in items
        ]

    def ref_mean(i):
        return sum(i.scores.values()) / len(DIMENSIONS)

    r, reason = judge_calibration(verdicts(ref_mean), items, 0.75)  # tracks the reference: approvals count
    assert r == pytest.approx(1.0) and reason is None
    r, reason = judge_calibration(verdicts(lambda i: 6 - ref_mean(i)), items, 0.75)  # anti-correlated
    assert r == pytest.approx(-1.0) and reason.startswith("this run's judge has r = -1.000 < 0.75")
    assert judge_calibration(verdicts(lambda i: 3.0), items, 0.75) == (
        None,
        "the judge's scores on the calibration set are constant (no r)",
    )
    failed = [JudgeFailure("unparseable", 1, [])] * len(items)
    r, reason = judge_calibration(failed, items, 0.75)
    assert r is None and "could not be calibrated" in reason
