"""Tokens, cost and calls per stage, counted at the LLM boundary.

``MeteredLLM`` wraps whatever ``lab.llm.LLM`` the engine was given — the embedded model, a hosted
one, or later a tracing or resilient wrapper from Phase 15 — and is itself an ``LLM``, so the
stages never know. Attributes it does not define (``choice_probs`` of a local model, which the
Phase 10 judge looks for) are passed through; ``choice_probs`` calls are counted as prompt tokens
(no output tokens: one forward pass reads the probabilities).
"""

from __future__ import annotations

import threading
from typing import Any

from lab.llm import LLM


class MeteredLLM(LLM):
    def __init__(self, inner: LLM):
        super().__init__(inner.model)
        self.inner = inner
        self.provider = inner.provider
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

    def chat(self, messages, **kwargs):
        reply = self.inner.chat(messages, **kwargs)
        self._add(reply.usage.input_tokens, reply.usage.output_tokens, reply.cost_usd)
        return reply

    def count_tokens(self, messages, **kwargs):
        return self.inner.count_tokens(messages, **kwargs)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def __getattr__(self, name: str):
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        attr = getattr(inner, name)
        if name != "choice_probs":
            return attr

        def choice_probs(messages, choices, system=None, prefix="", **kwargs):
            probs = attr(messages, choices, system=system, prefix=prefix, **kwargs)
            from lab.llm.prices import cost_usd

            n_in = (inner.count_tokens(messages, system=system) or 0) + len(prefix.split())
            self._add(n_in, 0, cost_usd(inner.provider, inner.model, n_in, 0))
            return probs

        return choice_probs
