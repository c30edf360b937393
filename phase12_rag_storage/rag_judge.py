"""Faithfulness and answer relevancy from a judge whose replies cannot be malformed.

RAGAS's LLM metrics ask the judge for free-form JSON (statements, verdicts, generated questions);
the embedded 135M model almost never writes JSON that parses, so every score came back NaN. Here the
judge only ever answers yes/no questions, and the reply is constrained:

- a model that scores choices (``llm.scores_choices``: a local one, ``LocalLLM.choice_probs``): the
  next-token probabilities of " Yes" and " No" after "Verdict:" — always a distribution, nothing to
  parse; the answer's value is P(yes), renormalised over the two (a small model's yes/no is rarely
  certain, and a 0.5 cut would throw that away);
- any other (a hosted model, ``--llm anthropic:...``): a JSON object ``{"verdict": "yes" | "no"}``
  through structured output, parsed strictly, value 1 or 0; a reply that does not parse is a
  *failure* of that one question, counted per metric, never a score.

The metrics keep RAGAS's definitions, with the free-form steps made deterministic:

- **faithfulness** = the (expected) fraction of supported statements. The answer is split into
  sentences (RAGAS has an LLM rewrite it into statements); for each sentence the judge is asked
  whether it can be inferred from the retrieved contexts;
- **answer relevancy** = the judge's value for "does the answer address the question" (RAGAS
  generates questions back from the answer and compares embeddings — free text a constrained judge
  cannot write).

Both come with a control a useful judge must fail: the same statements against another query's
contexts, and another query's answer to this question. A judge that says yes to those as often as
to the real pairs is not measuring anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.llm import JSONReplyError, LLMError, parse_json_reply

YES_NO = (" Yes", " No")
PREFIX = "Verdict:"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
SYSTEM = (
    "You check answers produced by a retrieval-augmented assistant. Answer each question with Yes or No "
    "only. Say Yes only when the text clearly supports it."
)
FAITHFUL_ASK = (
    "Context:\n{context}\n\nStatement: {statement}\n\nCan the statement be inferred from the context "
    "above? Answer Yes or No."
)
RELEVANT_ASK = (
    "Question: {question}\n\nAnswer: {answer}\n\nDoes the answer address the question directly (not "
    "evasive, not about something else)? Answer Yes or No."
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def statements(answer: str, min_words: int = 3, limit: int = 8) -> list[str]:
    """The answer's sentences of at least ``min_words`` words, at most ``limit`` of them."""
    parts = [" ".join(p.split()) for p in _SENTENCE.split(answer.strip())]
    return [p for p in parts if len(p.split()) >= min_words][:limit]


@dataclass
class Verdict:
    value: float | None  # P(yes) (choice_probs) or 1/0 (JSON); None: the reply could not be parsed
    reply: str = ""


@dataclass
class SampleScore:
    """One metric on one sample: the score (None when nothing could be judged) and its failures."""

    value: float | None
    judged: int
    failed: int
    detail: dict[str, Any] = field(default_factory=dict)


class YesNoJudge:
    """Asks an ``lab.llm`` model yes/no questions with constrained replies (see the module doc)."""

    def __init__(self, llm, max_tokens: int = 24):
        self.llm = llm
        self.max_tokens = max_tokens
        self.method = "choice_probs" if llm.scores_choices else "json"

    def ask(self, question: str) -> Verdict:
        messages = [{"role": "user", "content": question}]
        if self.method == "choice_probs":
            probs = self.llm.choice_probs(messages, choices=list(YES_NO), system=SYSTEM, prefix=PREFIX)
            total = probs[" Yes"] + probs[" No"]
            if not total > 0:
                return Verdict(None, reply=f"not a distribution: {probs}")
            return Verdict(probs[" Yes"] / total)

        try:
            reply = self.llm.chat(
                messages, system=SYSTEM, max_tokens=self.max_tokens, temperature=0.0, json_schema=VERDICT_SCHEMA
            )
        except LLMError as err:
            return Verdict(None, reply=f"LLM error: {err}")
        try:
            obj = parse_json_reply(reply.text)
        except JSONReplyError:
            return Verdict(None, reply=reply.text)
        verdict = obj.get("verdict") if isinstance(obj, dict) else None
        if verdict not in ("yes", "no"):
            return Verdict(None, reply=reply.text)
        return Verdict(float(verdict == "yes"), reply=reply.text)

    def faithfulness(self, answer: str, contexts: Sequence[str]) -> SampleScore:
        """Mean value over the judged sentences; None when the answer has no sentence to check."""
        context = "\n\n".join(" ".join(c.split()) for c in contexts)
        verdicts = [self.ask(FAITHFUL_ASK.format(context=context, statement=s)) for s in statements(answer)]
        judged = [v.value for v in verdicts if v.value is not None]
        value = sum(judged) / len(judged) if judged else None
        return SampleScore(value, len(judged), len(verdicts) - len(judged), {"statements": len(verdicts)})

    def relevancy(self, question: str, answer: str) -> SampleScore:
        v = self.ask(RELEVANT_ASK.format(question=question, answer=" ".join(answer.split())))
        if v.value is None:
            return SampleScore(None, 0, 1, {"reply": v.reply[:200]})
        return SampleScore(v.value, 1, 0)
