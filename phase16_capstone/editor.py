"""The Editor: the Phase 11 rubric judge, then ``editor_gate.decide`` — APPROVE, REJECT or ESCALATE.

Nothing is re-implemented here: the rubric is Phase 11's calibrated v1.1 (``evaldata.load_rubric``),
the judge is Phase 10's ``Judge`` (choice probabilities on a local model, strict JSON on a hosted or
served one) and the rule is ``phase11_evals.editor_gate.decide(scores, revisions_done)``: REJECT
sends the scores and reasons back to the Writer, and after ``max_revisions`` revision cycles a
failing draft is ESCALATED to a human instead of published.

The judge reads the topic as the question, the draft as the answer and the evidence chunks as the
reference, so "technical_accuracy" is judged against what the post claims to cite. A draft the judge
cannot score at all (``JudgeFailure``) is escalated: an unscored post is never published.

Phase 11's rule holds here too: an APPROVE counts as a review only from a judge that passed
calibration in the same run (``calibrate``: the judge scores Phase 11's reference-scored responses,
r >= ``pass_r``; ``calibration.judge_calibration``). An uncalibrated judge's APPROVE still lets the
draft through — the post is published marked UNREVIEWED (``reviewed: False`` with the reason, on the
job, the post and the results) — rather than held for a human. Why publish-and-mark, not hold: the
engine's API and Telegram entry have no operator identity (anyone who can ask for a post could also
"approve" it), so a hold would only move the same unreviewed approval to whoever clicks first; a
mark is honest about what happened and keeps the pipeline's other guards (the output check, the
revision limit, the judge's REJECT/ESCALATE, which still stop a draft) in force. A team with
operators would hold instead.

In **shadow** mode (``shadow=True``, the engine's ``--editor shadow``) the judge scores every draft as
usual but its verdict is only recorded: every draft goes on to publishing, marked UNREVIEWED with the
verdict it would have had. That is how a judge not yet trusted to gate is run beside a pipeline, and
what a coordination test needs (``load``: the jobs must reach publishing for its publish-time crash
points, with the same judge work per job as a gated run). The Editor also sees whose citations are whose: ``citations`` in the
decision counts the markers the model wrote, the ``[n?]`` the code added, and the sentences whose
model-written marker the cited chunk supports (``writer.model_citations``); code-added markers and
unsupported sentences are reported in the reasons, so a REJECT's feedback names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phase10_alignment.rubric_judge import Judge, JudgeFailure
from phase11_evals.calibration import calibration_inputs, judge_calibration
from phase11_evals.editor_gate import DEFAULT_THRESHOLDS, GateThresholds, decide
from phase11_evals.evaldata import load_calibration, load_eval_set, load_rubric
from phase16_capstone.writer import marker_counts, model_citations

RUBRIC_VERSION = "1.1"
QUESTION = "Write a short technical blog post for engineers about: {topic}"


def make_judge(llm, rubric_version: str = RUBRIC_VERSION):

    return Judge(llm, load_rubric(rubric_version), method="auto", max_tokens=300)


@dataclass(frozen=True)
class Calibration:
    """How this run's judge did on Phase 11's calibration set: its approvals count only when ``passed``."""

    r: float | None
    n: int  # calibration responses scored
    pass_r: float
    note: str | None  # why approvals do not count (None: they do)

    @property
    def passed(self) -> bool:
        return self.note is None


def calibrate(judge, limit: int | None = None, pass_r: float = 0.75) -> Calibration:
    """Score Phase 11's reference-scored responses (the first ``limit``; 0 skips it) with ``judge``."""
    if limit == 0:
        return Calibration(None, 0, pass_r, "the judge was not calibrated in this run (calibration_items = 0)")

    eval_set = load_eval_set()
    items = list(load_calibration(eval_set).items[:limit])
    verdicts = [
        judge.score(prompt, response, reference=ref) for prompt, response, ref in calibration_inputs(eval_set, items)
    ]
    r, note = judge_calibration(verdicts, items, pass_r)
    return Calibration(r, len(items), pass_r, note)


def citation_check(body: str, evidence) -> dict[str, int]:
    """Whose markers are whose: model-written, code-added ``[n?]``, and sentences the model's markers support."""

    supported, sentences = model_citations(body, {e.n: e.text for e in evidence})
    return {**marker_counts(body), "supported_sentences": supported, "sentences": sentences}


def review(
    judge,
    topic: str,
    body: str,
    evidence,
    revisions_done: int,
    max_revisions: int = DEFAULT_THRESHOLDS.max_revisions,
    calibration: Calibration | None = None,
    shadow: bool = False,
) -> dict[str, Any]:
    """One Editor pass: the gate's decision as a dict (``GateDecision.to_dict()`` plus the judge method,
    ``citations``, ``reviewed``: whether an APPROVE counts as a review — False without a passed
    ``calibration`` — and ``action``: what the engine does, the verdict itself unless ``shadow``, where
    it is APPROVE whatever the verdict, ``reviewed`` False)."""
    decision = _review(judge, topic, body, evidence, revisions_done, max_revisions, calibration)
    if not shadow:
        return {**decision, "action": decision["verdict"]}
    note = f"shadow mode: the Editor's {decision['verdict']} is recorded, not applied; published marked UNREVIEWED"
    return {**decision, "action": "APPROVE", "reviewed": False, "reasons": [*decision["reasons"], note]}


def _review(judge, topic, body, evidence, revisions_done, max_revisions, calibration) -> dict[str, Any]:
    """The gate's own decision (``review`` without the shadow mode)."""

    cites = citation_check(body, evidence)
    reference = "\n\n".join(f"[{e.n}] {e.text}" for e in evidence)
    verdict = judge.score(QUESTION.format(topic=topic), body, reference=reference)
    if isinstance(verdict, JudgeFailure):
        return {
            "verdict": "ESCALATE",
            "reasons": [f"the judge could not score the draft: {verdict.reason[:300]}"],
            "scores": {},
            "mean": None,
            "confident_hallucination": None,
            "revisions_done": revisions_done,
            "reasoning": "",
            "method": judge.method,
            "citations": cites,
            "reviewed": None,
        }
    decision = decide(verdict, revisions_done, GateThresholds(max_revisions=max_revisions))
    reasons = list(decision.reasons)
    if cites["added"]:
        reasons.append(f"{cites['added']} paragraph(s) carry no citation of the Writer's own: the engine added [n?]")
    if cites["sentences"] and cites["supported_sentences"] < cites["sentences"]:
        reasons.append(
            f"{cites['sentences'] - cites['supported_sentences']} of {cites['sentences']} sentence(s) lack a "
            "model-written citation whose source shares their words"
        )
    reviewed = None
    if decision.verdict == "APPROVE":
        reviewed = bool(calibration and calibration.passed)
        if not reviewed:
            note = calibration.note if calibration else "no calibration of the judge in this run"
            reasons.append(f"APPROVE does not count as a review ({note}): published marked UNREVIEWED")
    return {
        **decision.to_dict(),
        "reasons": reasons,
        "scores": {k: round(v, 3) for k, v in decision.scores.items()},
        "mean": round(decision.mean, 3),
        "method": judge.method,
        "citations": cites,
        "reviewed": reviewed,
    }


def feedback_for_writer(decision: dict[str, Any]) -> str:
    """What a REJECT sends back: every failed check, the dimension scores, the judge's reasoning."""
    lines = [f"- {r}" for r in decision["reasons"]]
    if decision["scores"]:
        lines.append("Scores (1-5): " + ", ".join(f"{k} {v:.2f}" for k, v in decision["scores"].items()))
    if decision.get("reasoning"):
        lines.append(f"Editor's note: {decision['reasoning'][:400]}")
    return "\n".join(lines)
