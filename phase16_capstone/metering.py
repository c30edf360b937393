"""Tokens, cost and calls per stage, counted at the LLM boundary.

``StageMeter`` wraps whatever ``lab.llm.LLM`` the engine was given — the embedded model, a hosted
one, Phase 15's tracing or resilient wrapper around either — and is itself an ``LLM`` (an
``LLMWrapper``: everything it does not count is forwarded, ``scores_choices`` included), so the stages
never know. The engine reads ``usage`` after a stage and ``reset()``s it before the next.

Counted: ``chat`` and ``stream`` replies (their usage and cost), and ``choice_probs`` calls as prompt
tokens (no output tokens: one forward pass reads the probabilities). A reply carries its own cost;
a ``choice_probs`` call is counted by the wrapped model's ``count_tokens`` and priced at the model under
every wrapper (``innermost``: a fallback chain's primary, whose tokenizer counted them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from lab.llm import LLM, LLMWrapper
from lab.llm.base import ChatResponse
from lab.llm.prices import cost_usd
from lab.llm.wrapper import innermost


class StageMeter(LLMWrapper):
    """An ``LLM`` that counts calls, tokens and cost of everything sent through it since ``reset()``."""

    def __init__(self, inner: LLM):
        super().__init__(inner)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> dict[str, Any]:
        """Start a new count; returns the previous one."""
        with self._lock:
            previous = getattr(self, "usage", None)
            self.usage = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        return previous or {}

    def _add(self, n_in: int, n_out: int, cost: float | None) -> None:
        with self._lock:
            self.usage["calls"] += 1
            self.usage["input_tokens"] += int(n_in)
            self.usage["output_tokens"] += int(n_out)
            if cost is None or self.usage["cost_usd"] is None:
                self.usage["cost_usd"] = None  # an unpriced model: unknown, never 0
            else:
                self.usage["cost_usd"] += cost

    def _add_reply(self, reply: ChatResponse) -> None:
        self._add(reply.usage.input_tokens, reply.usage.output_tokens, reply.cost_usd)

    def chat(self, messages, **kwargs) -> ChatResponse:
        reply = super().chat(messages, **kwargs)
        self._add_reply(reply)
        return reply

    def stream(self, messages, **kwargs) -> Iterator[str | ChatResponse]:
        for item in super().stream(messages, **kwargs):
            if isinstance(item, ChatResponse):
                self._add_reply(item)
            yield item

    def choice_probs(self, messages, choices, system=None, prefix="", **kwargs) -> dict[str, float]:

        probs = super().choice_probs(messages, choices, system=system, prefix=prefix, **kwargs)
        n_in = (self.count_tokens(messages, system=system) or 0) + len(prefix.split())
        model = innermost(self.inner)
        self._add(n_in, 0, cost_usd(model.provider, model.model, n_in, 0))
        return probs
