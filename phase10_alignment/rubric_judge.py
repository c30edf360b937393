"""LLM-as-judge: a rubric, a strict verdict parser, and a judge that retries then records failure.

The API every phase uses (Phase 10.4 scores BASE/SFT/DPO with it; Phase 11 builds its rubrics and
the Editor gate on it — import from here, never copy). Two ways to get scores out of a model:

- ``json``: ask for one JSON object matching ``verdict_schema(rubric)`` (structured output through
  ``llm.chat(json_schema=...)``), parse it strictly with ``parse_verdict``. A reply that does not
  parse is sent back with the error and retried ``max_retries`` times; after that the item is a
  ``JudgeFailure`` — recorded and counted, never scored.
- ``choice_probs``: for small local models that cannot be relied on to write valid JSON (the
  embedded SmolLM2-135M; ``method="auto"`` picks it when ``llm.scores_choices``), read the next-token probabilities of "1".."5" after "<dimension> score: "
  and take the expected score; a flag is P("Yes") > P("No"). Nothing to parse, so nothing to retry,
  but the scores are only as meaningful as the model's calibration (see Phase 10's findings).

Every result should record the judge model, ``rubric.sha256()`` and ``judge.prompt_sha256``: a
changed rubric or prompt is a different measuring instrument.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.hashing import json_sha256
from lab.llm import JSONReplyError, LLMError, parse_json_reply

SCORES = ("1", "2", "3", "4", "5")
YES_NO = (" Yes", " No")  # after "flag:", the natural tokenization is ":" + " Yes"


@dataclass(frozen=True)
class Dimension:
    name: str
    description: str
    anchors: dict[int, str]  # 1..5 -> what that score means

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"dimension name {self.name!r} must be an identifier (it is a JSON key)")
        bad = sorted(set(self.anchors) - set(range(1, 6)))
        if bad:
            raise ValueError(f"dimension {self.name!r}: anchor keys {bad} are outside 1..5")


@dataclass(frozen=True)
class Rubric:
    name: str
    version: str
    dimensions: tuple[Dimension, ...]
    flags: tuple[str, ...] = ()  # boolean judgments, e.g. ("confident_hallucination",)
    instructions: str = ""  # extra rules, e.g. "a wrong core definition caps technical_accuracy at 2"

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions] + list(self.flags)
        if not self.dimensions:
            raise ValueError(f"rubric {self.name!r} has no dimensions")
        if len(set(names)) != len(names):
            raise ValueError(f"rubric {self.name!r}: dimension/flag names repeat: {names}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "instructions": self.instructions,
            "flags": list(self.flags),
            "dimensions": [
                {
                    "name": d.name,
                    "description": d.description,
                    "anchors": {str(k): v for k, v in sorted(d.anchors.items())},
                }
                for d in self.dimensions
            ],
        }

    def sha256(self) -> str:
        """Hash of a canonical JSON of the whole rubric: record it with every score."""
        return json_sha256(self.to_dict())

    def render(self, only: str | None = None) -> str:
        """The rubric as the judge reads it; ``only`` keeps one dimension or flag (the choice_probs
        method asks one question at a time, and a small model reads a short prompt better)."""
        dims = [d for d in self.dimensions if only in (None, d.name)]
        flags = [f for f in self.flags if only in (None, f)]
        lines = [f"Rubric {self.name} v{self.version}. Score from 1 (worst) to 5 (best)."]
        for d in dims:
            lines.append(f"\n{d.name}: {d.description}")
            lines += [f"  {k} = {v}" for k, v in sorted(d.anchors.items())]
        if flags:
            lines.append("\nFlags (true/false): " + ", ".join(flags))
        if self.instructions:
            lines.append("\nRules: " + self.instructions)
        return "\n".join(lines)


@dataclass
class Verdict:
    scores: dict[str, float]  # dimension -> 1..5 (float: probability-weighted for choice_probs)
    flags: dict[str, bool]
    reasoning: str
    attempts: int
    method: str  # "json" | "choice_probs"
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the P(1..5) each score came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeFailure:
    """An item the judge could not score: recorded as a failure, never silently scored."""

    reason: str
    attempts: int
    replies: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeParseError(ValueError):
    """A judge reply is not a valid verdict; the message names the field that is wrong."""


# --- the verdict format -----------------------------------------------------------------------------


def verdict_schema(rubric: Rubric) -> dict[str, Any]:
    """JSON schema of a verdict: reasoning first (the judge explains before it scores)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string"},
            "scores": {
                "type": "object",
                "properties": {d.name: {"type": "integer", "minimum": 1, "maximum": 5} for d in rubric.dimensions},
                "required": [d.name for d in rubric.dimensions],
                "additionalProperties": False,
            },
        },
        "required": ["reasoning", "scores"],
        "additionalProperties": False,
    }
    if rubric.flags:
        schema["properties"]["flags"] = {
            "type": "object",
            "properties": {f: {"type": "boolean"} for f in rubric.flags},
            "required": list(rubric.flags),
            "additionalProperties": False,
        }
        schema["required"].append("flags")
    return schema


def parse_verdict(text: str, rubric: Rubric) -> Verdict:
    """Strict parse: every dimension an int 1..5, every flag a bool, reasoning a string.

    Raises JudgeParseError naming the first wrong field (``scores.conciseness``, ``flags.x``...).
    """

    try:
        obj = parse_json_reply(text)
    except JSONReplyError as err:
        raise JudgeParseError(f"reply is not a JSON object: {text[:120]!r}") from err
    if not isinstance(obj, dict):
        raise JudgeParseError(f"reply is JSON {type(obj).__name__}, expected an object")
    reasoning = obj.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise JudgeParseError(f"field 'reasoning' must be a string, got {type(reasoning).__name__}")
    raw_scores = obj.get("scores")
    if not isinstance(raw_scores, dict):
        raise JudgeParseError("field 'scores' is missing or not an object")
    scores: dict[str, float] = {}
    for dim in rubric.dimensions:
        where = f"scores.{dim.name}"
        if dim.name not in raw_scores:
            raise JudgeParseError(f"field '{where}' is missing")
        value = raw_scores[dim.name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise JudgeParseError(f"field '{where}' must be an integer 1..5, got {value!r}")
        if not 1 <= value <= 5:
            raise JudgeParseError(f"field '{where}' = {value} is out of range 1..5")
        scores[dim.name] = float(value)
    flags: dict[str, bool] = {}
    if rubric.flags:
        raw_flags = obj.get("flags")
        if not isinstance(raw_flags, dict):
            raise JudgeParseError("field 'flags' is missing or not an object")
        for flag in rubric.flags:
            where = f"flags.{flag}"
            if flag not in raw_flags:
                raise JudgeParseError(f"field '{where}' is missing")
            if not isinstance(raw_flags[flag], bool):
                raise JudgeParseError(f"field '{where}' must be true or false, got {raw_flags[flag]!r}")
            flags[flag] = raw_flags[flag]
    return Verdict(scores=scores, flags=flags, reasoning=reasoning, attempts=1, method="json")


# --- the judge ---------------------------------------------------------------------------------------

SYSTEM_TEMPLATE = (
    "You are a strict, fair evaluator of answers to technical questions. Judge only what the answer "
    "says; do not reward length or confidence. Claims not supported by the question, the reference "
    "(if given) or well-established knowledge count as hallucinations.\n\n{rubric}"
)
ITEM_TEMPLATE = "Question:\n{prompt}\n\n{reference_block}Answer to evaluate:\n{response}"
REFERENCE_TEMPLATE = "Reference answer:\n{reference}\n\n"
JSON_ASK = "Evaluate the answer with the rubric. Reply with only the JSON object: reasoning, scores{flags}."
RETRY_ASK = "Your reply was not a valid verdict: {error}. Reply again with only the corrected JSON object."
CHOICE_ASK = "Rate the answer's {name} from 1 to 5 using the rubric. Reply with one digit."
FLAG_ASK = "Does the answer show {flag}? Reply Yes or No."
CHOICE_PREFIX = "{name} score: "  # "score: 1" tokenizes as ":" " " "1", so the space belongs here
FLAG_PREFIX = "{flag}:"
_TEMPLATES = (
    SYSTEM_TEMPLATE,
    ITEM_TEMPLATE,
    REFERENCE_TEMPLATE,
    JSON_ASK,
    RETRY_ASK,
    CHOICE_ASK,
    FLAG_ASK,
    CHOICE_PREFIX,
    FLAG_PREFIX,
)


class Judge:
    """Scores (prompt, response[, reference]) with an LLM and a rubric. See the module docstring."""

    def __init__(self, llm, rubric: Rubric, method: str = "auto", max_retries: int = 2, max_tokens: int = 400):
        if method not in ("auto", "json", "choice_probs"):
            raise ValueError(f"judge method {method!r}: expected auto, json or choice_probs")
        has_probs = llm.scores_choices  # the LLM says so (a wrapper says what the model under it offers)
        if method == "choice_probs" and not has_probs:
            raise ValueError(
                f"judge method choice_probs needs an LLM that scores choices; {llm.spec} does not "
                "(scores_choices is False)"
            )
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.llm = llm
        self.rubric = rubric
        self.method = ("choice_probs" if has_probs else "json") if method == "auto" else method
        self.max_retries = max_retries
        self.max_tokens = max_tokens

    @property
    def prompt_sha256(self) -> str:
        """Hash of every prompt template this judge sends (record it with the rubric hash)."""
        return hashlib.sha256("\n\x00".join(_TEMPLATES).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """What to record in results next to the scores."""
        return {
            "judge_model": self.llm.spec,
            "method": self.method,
            "rubric": f"{self.rubric.name} v{self.rubric.version}",
            "rubric_sha256": self.rubric.sha256(),
            "prompt_sha256": self.prompt_sha256,
        }

    def _system(self, only: str | None = None) -> str:
        return SYSTEM_TEMPLATE.format(rubric=self.rubric.render(only))

    @staticmethod
    def _item(prompt: str, response: str, reference: str | None) -> str:
        block = REFERENCE_TEMPLATE.format(reference=reference) if reference else ""
        return ITEM_TEMPLATE.format(prompt=prompt, response=response, reference_block=block)

    def score(self, prompt: str, response: str, reference: str | None = None) -> Verdict | JudgeFailure:
        item = self._item(prompt, response, reference)
        if self.method == "choice_probs":
            return self._score_choice_probs(item)
        return self._score_json(item)

    def _score_json(self, item: str) -> Verdict | JudgeFailure:

        flags = ", flags" if self.rubric.flags else ""
        messages: list[dict[str, Any]] = [{"role": "user", "content": item + "\n\n" + JSON_ASK.format(flags=flags)}]
        replies: list[str] = []
        error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                reply = self.llm.chat(
                    messages,
                    system=self._system(),
                    max_tokens=self.max_tokens,
                    temperature=0.0,
                    json_schema=verdict_schema(self.rubric),
                )
            except LLMError as err:  # the provider gave up after its own retries: a failure, not a score
                return JudgeFailure(reason=f"LLM error: {err}", attempts=attempt, replies=replies)
            replies.append(reply.text)
            try:
                verdict = parse_verdict(reply.text, self.rubric)
            except JudgeParseError as err:
                error = str(err)
                # show the model its own reply and what was wrong with it: at temperature 0 a bare
                # resend would just reproduce the same reply
                messages = messages + [
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": RETRY_ASK.format(error=error)},
                ]
                continue
            verdict.attempts = attempt
            return verdict
        return JudgeFailure(
            reason=f"unparseable after {len(replies)} attempts: {error}", attempts=len(replies), replies=replies
        )

    def _score_choice_probs(self, item: str) -> Verdict | JudgeFailure:
        scores: dict[str, float] = {}
        flags: dict[str, bool] = {}
        details: dict[str, Any] = {}
        for dim in self.rubric.dimensions:
            ask = CHOICE_ASK.format(name=dim.name)
            probs = self.llm.choice_probs(
                [{"role": "user", "content": item + "\n\n" + ask}],
                choices=list(SCORES),
                system=self._system(dim.name),
                prefix=CHOICE_PREFIX.format(name=dim.name),
            )
            if not _is_distribution(probs, SCORES):
                return JudgeFailure(
                    reason=f"choice_probs for '{dim.name}' is not a distribution: {probs}",
                    attempts=1,
                    replies=[json.dumps(probs)],
                )
            scores[dim.name] = expected_score(probs)
            details[dim.name] = {k: round(v, 4) for k, v in probs.items()}
        for flag in self.rubric.flags:
            probs = self.llm.choice_probs(
                [{"role": "user", "content": item + "\n\n" + FLAG_ASK.format(flag=flag)}],
                choices=list(YES_NO),
                system=self._system(flag),
                prefix=FLAG_PREFIX.format(flag=flag),
            )
            if not _is_distribution(probs, YES_NO):
                return JudgeFailure(
                    reason=f"choice_probs for flag '{flag}' is not a distribution: {probs}",
                    attempts=1,
                    replies=[json.dumps(probs)],
                )
            flags[flag] = probs[" Yes"] > probs[" No"]
            details[flag] = {k.strip(): round(v, 4) for k, v in probs.items()}
        return Verdict(scores=scores, flags=flags, reasoning="", attempts=1, method="choice_probs", details=details)


def expected_score(probs: dict[str, float]) -> float:
    """Probability-weighted score from P("1".."5") (renormalised over the five digits)."""
    total = sum(probs[s] for s in SCORES)
    return sum(int(s) * probs[s] for s in SCORES) / total


def _is_distribution(probs: dict[str, float], keys: Sequence[str]) -> bool:
    try:
        values = [float(probs[k]) for k in keys]
    except (KeyError, TypeError, ValueError):
        return False
    return all(math.isfinite(v) and v >= 0 for v in values) and sum(values) > 0


def summarize(results: Sequence[Verdict | JudgeFailure], rubric: Rubric) -> dict[str, Any]:
    """Per-dimension means over the scored items, the overall mean, and the failure count.

    Failures are excluded from the means and reported beside them, never scored as anything.
    """
    scored = [r for r in results if isinstance(r, Verdict)]
    means = {
        d.name: (sum(v.scores[d.name] for v in scored) / len(scored) if scored else None) for d in rubric.dimensions
    }
    overall = (sum(means.values()) / len(means)) if scored else None
    flag_rates = {f: (sum(v.flags[f] for v in scored) / len(scored) if scored else None) for f in rubric.flags}
    return {
        "n": len(results),
        "n_scored": len(scored),
        "n_failed": len(results) - len(scored),
        "means": means,
        "overall": overall,
        "flag_rates": flag_rates,
    }
