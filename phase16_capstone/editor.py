"""The Editor: the Phase 11 rubric judge, then ``editor_gate.decide`` — APPROVE, REJECT or ESCALATE.

Nothing is re-implemented here: the rubric is Phase 11's calibrated v1.1 (``evaldata.load_rubric``),
the judge is Phase 10's ``Judge`` (choice probabilities on a local model, strict JSON on a hosted or
served one) and the rule is ``phase11_evals.editor_gate.decide(scores, revisions_done)``: REJECT
sends the scores and reasons back to the Writer, and after ``max_revisions`` revision cycles a
failing draft is ESCALATED to a human instead of published.

The judge reads the topic as the question, the draft as the answer and the evidence chunks as the
reference, so "technical_accuracy" is judged against what the post claims to cite. A draft the judge
cannot score at all (``JudgeFailure``) is escalated: an unscored post is never published.
"""

from __future__ import annotations

from typing import Any

RUBRIC_VERSION = "1.1"
QUESTION = "Write a short technical blog post for engineers about: {topic}"


def make_judge(llm, rubric_version: str = RUBRIC_VERSION):
    from phase10_alignment.judge import Judge
    from phase11_evals.evaldata import load_rubric

    return Judge(llm, load_rubric(rubric_version), method="auto", max_tokens=300)


def review(judge, topic: str, body: str, evidence, revisions_done: int, max_revisions: int = 3) -> dict[str, Any]:
    """One Editor pass: the gate's decision as a dict (``GateDecision.to_dict()`` plus the judge method)."""
    from phase10_alignment.judge import JudgeFailure
    from phase11_evals.editor_gate import GateThresholds, decide

    reference = "\n\n".join(f"[{e.n}] {e.text}" for e in evidence)
    verdict = judge.score(QUESTION.format(topic=topic), body, reference=reference)
    if isinstance(verdict, JudgeFailure):
        return {"verdict": "ESCALATE", "reasons": [f"the judge could not score the draft: {verdict.reason[:300]}"],
                "scores": {}, "mean": None, "confident_hallucination": None, "revisions_done": revisions_done,
                "reasoning": "", "method": judge.method}
    decision = decide(verdict, revisions_done, GateThresholds(max_revisions=max_revisions))
    return {**decision.to_dict(), "scores": {k: round(v, 3) for k, v in decision.scores.items()},
            "mean": round(decision.mean, 3), "method": judge.method}


def feedback_for_writer(decision: dict[str, Any]) -> str:
    """What a REJECT sends back: every failed check, the dimension scores, the judge's reasoning."""
    lines = [f"- {r}" for r in decision["reasons"]]
    if decision["scores"]:
        lines.append("Scores (1-5): " + ", ".join(f"{k} {v:.2f}" for k, v in decision["scores"].items()))
    if decision.get("reasoning"):
        lines.append(f"Editor's note: {decision['reasoning'][:400]}")
    return "\n".join(lines)
