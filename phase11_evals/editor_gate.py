"""The Editor gate: turn one judge verdict into APPROVE, REJECT (back to the Writer) or ESCALATE.

The capstone's Editor agent imports exactly this. The rule, from the seed's Phase 11:

    APPROVE  iff  technical_accuracy >= 3.0
             AND  calibration >= 3.0
             AND  mean of the four dimensions >= 3.25
             AND  no confident_hallucination flag
    otherwise REJECT with the dimension scores and the reasons, so the Writer can revise;
    once ``max_revisions`` (3) revision cycles are done, ESCALATE to a human instead.

Accuracy and calibration get their own floors on top of the mean because they are where the
seed's fine-tuned models were unreliable: a fluent, well-pitched answer can lift the mean over
3.25 while its core definition is wrong. A confident_hallucination flag rejects whatever the
scores say. Thresholds are data (``GateThresholds``) so a team can tighten them after calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DIMENSIONS = ("technical_accuracy", "calibration", "mechanistic_depth", "audience_calibration")
FLAG = "confident_hallucination"

Verdict = Literal["APPROVE", "REJECT", "ESCALATE"]


class GateInputError(ValueError):
    """Scores handed to the gate are missing, of the wrong type or out of range; names the field."""


@dataclass(frozen=True)
class GateThresholds:
    technical_accuracy: float = 3.0
    calibration: float = 3.0
    mean: float = 3.25
    max_revisions: int = 3  # revision cycles allowed before a failing draft goes to a human

    def __post_init__(self) -> None:
        for name in ("technical_accuracy", "calibration", "mean"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= 5.0:
                raise GateInputError(f"threshold '{name}' must be a number in 1..5, got {value!r}")
        if isinstance(self.max_revisions, bool) or not isinstance(self.max_revisions, int) or self.max_revisions < 0:
            raise GateInputError(f"threshold 'max_revisions' must be an integer >= 0, got {self.max_revisions!r}")


DEFAULT_THRESHOLDS = GateThresholds()


@dataclass(frozen=True)
class GateDecision:
    verdict: Verdict
    reasons: tuple[str, ...]  # every failed check ("technical_accuracy 2.40 < 3.00"), or why it passed
    scores: dict[str, float] = field(hash=False)
    mean: float
    confident_hallucination: bool
    revisions_done: int
    reasoning: str = ""  # the judge's own reasoning, passed through to the Writer

    @property
    def approved(self) -> bool:
        return self.verdict == "APPROVE"

    def feedback(self) -> str:
        """What the Writer (REJECT) or the human reviewer (ESCALATE) reads."""
        lines = [f"Editor verdict: {self.verdict} (after {self.revisions_done} revision(s))"]
        lines += [f"- {r}" for r in self.reasons]
        lines.append(
            "Scores: "
            + ", ".join(f"{d} {self.scores[d]:.2f}" for d in DIMENSIONS)
            + f"; mean {self.mean:.2f}; {FLAG}={self.confident_hallucination}"
        )
        if self.reasoning:
            lines.append(f"Judge reasoning: {self.reasoning}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "scores": dict(self.scores),
            "mean": self.mean,
            FLAG: self.confident_hallucination,
            "revisions_done": self.revisions_done,
            "reasoning": self.reasoning,
        }


def _as_mapping(scores: Any) -> Mapping[str, Any]:
    """Accept a plain mapping or a Phase 10 judge ``Verdict`` (``.scores`` + ``.flags``)."""
    if isinstance(scores, Mapping):
        return scores
    if hasattr(scores, "scores") and hasattr(scores, "flags"):
        return {**scores.scores, **scores.flags, "reasoning": getattr(scores, "reasoning", "")}
    raise GateInputError(f"scores must be a mapping or a judge Verdict, got {type(scores).__name__}")


def _score(values: Mapping[str, Any], name: str) -> float:
    if name not in values:
        raise GateInputError(f"field '{name}' is missing (need {', '.join(DIMENSIONS)} and {FLAG})")
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GateInputError(f"field '{name}' must be a number in 1..5, got {value!r}")
    if not math.isfinite(value) or not 1.0 <= value <= 5.0:
        raise GateInputError(f"field '{name}' = {value!r} is out of range 1..5")
    return float(value)


def decide(
    scores: Mapping[str, Any] | Any, revisions_done: int = 0, thresholds: GateThresholds = DEFAULT_THRESHOLDS
) -> GateDecision:
    """Apply the gate to one draft's scores. Raises GateInputError naming a bad field."""
    values = _as_mapping(scores)
    dims = {d: _score(values, d) for d in DIMENSIONS}
    if FLAG not in values:
        raise GateInputError(f"field '{FLAG}' is missing (need {', '.join(DIMENSIONS)} and {FLAG})")
    flagged = values[FLAG]
    if not isinstance(flagged, bool):
        raise GateInputError(f"field '{FLAG}' must be true or false, got {flagged!r}")
    if isinstance(revisions_done, bool) or not isinstance(revisions_done, int) or revisions_done < 0:
        raise GateInputError(f"revisions_done must be an integer >= 0, got {revisions_done!r}")
    reasoning = values.get("reasoning") or ""

    mean = math.fsum(dims.values()) / len(dims)
    failed = []
    for name in ("technical_accuracy", "calibration"):
        floor = getattr(thresholds, name)
        if dims[name] < floor:
            failed.append(f"{name} {dims[name]:.2f} < {floor:.2f}")
    if mean < thresholds.mean:
        failed.append(f"mean of the four dimensions {mean:.3f} < {thresholds.mean:.2f}")
    if flagged:
        failed.append(f"{FLAG} flagged: automatic reject whatever the scores")

    if not failed:
        verdict: Verdict = "APPROVE"
        reasons = (
            f"all checks passed: technical_accuracy {dims['technical_accuracy']:.2f}, calibration "
            f"{dims['calibration']:.2f}, mean {mean:.3f}, no {FLAG}",
        )
    elif revisions_done >= thresholds.max_revisions:
        verdict = "ESCALATE"
        reasons = (*failed, f"{revisions_done} revision cycle(s) done (limit {thresholds.max_revisions}): human review")
    else:
        verdict = "REJECT"
        reasons = tuple(failed)
    return GateDecision(
        verdict=verdict,
        reasons=reasons,
        scores=dims,
        mean=mean,
        confident_hallucination=flagged,
        revisions_done=revisions_done,
        reasoning=str(reasoning),
    )
