"""One base for every ``LLM`` that sits in front of another (metering, tracing, recording, caching, fallback).

``LLMWrapper(inner)`` forwards the whole ``LLM`` interface to ``inner``: the calls (``chat``, ``stream``,
``prepare``, ``count_tokens``, ``choice_probs``), ``describe``, and what callers decide on (``provider``,
``spec``, ``parallel_requests``, ``scores_choices``). A subclass overrides only the calls it adds to and
calls ``super()`` (or ``self.inner``) for the rest of the work, so a wrapper in a stack never hides what the
model underneath offers: a judge on ``metering(tracing(local model))`` reads choice probabilities exactly as
it would on the bare local model.

What each method is a hook for:

- ``chat`` / ``stream``: one generation each. They are separate calls on purpose (a streamed request
  never goes through ``chat``), so a wrapper that observes replies overrides both; ``stream``'s last item
  is the whole ``ChatResponse``.
- ``choice_probs``: one forward pass, no generation (prompt tokens, no output tokens).
- ``prepare``: the checks a server runs before a request waits for the model (a refusal raised here
  never reaches ``chat``/``stream``).
- ``count_tokens``, ``describe``: questions about the inner model; rarely overridden.

No ``__getattr__``: an attribute ``LLM`` does not declare is not part of the interface, and is reached
through ``.inner`` by the code that knows which model it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lab.llm.base import LLM, ChatResponse


class LLMWrapper(LLM):
    """An ``LLM`` that forwards everything to ``inner``; subclasses override what they add."""

    def __init__(self, inner: LLM):
        super().__init__(inner.model)
        self.inner = inner

    # --- who the model is and what it can do: the inner model's --------------------------------
    @property
    def provider(self) -> str:  # type: ignore[override]
        return self.inner.provider

    @property
    def spec(self) -> str:
        return self.inner.spec

    @property
    def parallel_requests(self) -> int:  # type: ignore[override]
        return self.inner.parallel_requests

    @property
    def scores_choices(self) -> bool:  # type: ignore[override]
        return self.inner.scores_choices

    # --- the calls ----------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> ChatResponse:
        return self.inner.chat(messages, *args, **kwargs)

    def stream(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[str | ChatResponse]:
        return self.inner.stream(messages, **kwargs)

    def prepare(self, messages: list[dict[str, Any]], *, timeout_s: float | None = None, **kwargs: Any) -> None:
        return self.inner.prepare(messages, timeout_s=timeout_s, **kwargs)

    def count_tokens(self, messages: list[dict[str, Any]], **kwargs: Any) -> int | None:
        return self.inner.count_tokens(messages, **kwargs)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    @property
    def context_window(self) -> int | None:
        return self.inner.context_window

    @property
    def prefix_cache_stats(self) -> dict[str, int] | None:
        return self.inner.prefix_cache_stats

    def reset_prefix_cache(self) -> None:
        self.inner.reset_prefix_cache()

    def choice_probs(
        self,
        messages: list[dict[str, Any]],
        choices: list[str],
        system: str | None = None,
        prefix: str = "",
        use_prefix_cache: bool = True,
    ) -> dict[str, float]:
        return self.inner.choice_probs(
            messages, choices, system=system, prefix=prefix, use_prefix_cache=use_prefix_cache
        )


def innermost(llm: LLM) -> LLM:
    """The model under every wrapper of ``llm`` (a fallback chain's primary); ``llm`` when it wraps nothing."""
    while isinstance(llm, LLMWrapper):
        llm = llm.inner
    return llm
