"""Count what a framework asks of the model where it cannot hide it: inside ``lab serve``.

A framework decides how many model calls a task costs, what goes into each prompt and how long
its replies may be; its own callbacks report what it chooses to report. Wrapping the served model
records every request as the server executed it — whichever framework (or process) sent it — so
LangGraph, CrewAI, OpenClaw and the raw Phase 13 loop are counted by one meter:

    metered = RecordingLLM(from_spec(cfg.llm))
    with serving(metered, api_key=KEY) as url:      # frameworks point at f"{url}/v1"
        ...
    metered.totals()    # {"calls": 7, "input_tokens": ..., "output_tokens": ..., "model_s": ...}

The raw Phase 13 loop takes the same object in-process (it is an ``LLM``), so its calls are counted
by the same code. Messages are kept (the prompt a framework built is part of the lesson); the API
key never reaches the model layer, so it cannot be recorded here.

``RecordingLLM`` is an ``LLMWrapper``: what it does not record is forwarded, so the server admits as many
requests at once as the model batches and checks a request (``prepare``) before it waits for the model.
A request refused there is recorded too, with its error, exactly as if the model call had refused it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lab.llm.base import LLM, ChatResponse
from lab.llm.wrapper import LLMWrapper


@dataclass
class ModelCall:
    """One request the model served: what it was asked and what it replied."""

    messages: list[dict[str, Any]]
    system: str | None
    tool_names: list[str]
    tool_choice: Any
    stop: list[str] | None
    reply_text: str = ""
    reply_tool_calls: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None

    @property
    def prompt_chars(self) -> int:
        """Characters of prompt text sent (system + every message's text)."""

        def text(content: Any) -> str:
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""

        return len(self.system or "") + sum(len(text(m.get("content"))) for m in self.messages)


class RecordingLLM(LLMWrapper):
    """An ``LLM`` that forwards every call to ``inner`` and keeps a ``ModelCall`` record of it."""

    def __init__(self, inner: LLM):
        super().__init__(inner)
        self.calls: list[ModelCall] = []
        self._lock = threading.Lock()

    def _record(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> ModelCall:
        call = ModelCall(
            messages=[dict(m) for m in messages],
            system=kwargs.get("system"),
            tool_names=[t["name"] for t in kwargs.get("tools") or []],
            tool_choice=kwargs.get("tool_choice"),
            stop=kwargs.get("stop"),
        )
        with self._lock:
            self.calls.append(call)
        return call

    @staticmethod
    def _fill(call: ModelCall, reply: ChatResponse, started: float) -> None:
        call.reply_text = reply.text
        call.reply_tool_calls = [c.name for c in reply.tool_calls]
        call.input_tokens, call.output_tokens = reply.usage.input_tokens, reply.usage.output_tokens
        call.latency_s = time.perf_counter() - started

    @staticmethod
    def _failed(call: ModelCall, exc: BaseException, started: float) -> None:
        call.error, call.latency_s = f"{type(exc).__name__}: {exc}", time.perf_counter() - started

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> ChatResponse:
        call, started = self._record(messages, kwargs), time.perf_counter()
        try:
            reply = self.inner.chat(messages, **kwargs)
        except Exception as exc:
            self._failed(call, exc, started)
            raise
        self._fill(call, reply, started)
        return reply

    def stream(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[str | ChatResponse]:
        call, started = self._record(messages, kwargs), time.perf_counter()
        try:
            for item in self.inner.stream(messages, **kwargs):
                if isinstance(item, ChatResponse):
                    self._fill(call, item, started)
                yield item
        except Exception as exc:
            self._failed(call, exc, started)
            raise

    def prepare(self, messages: list[dict[str, Any]], *, timeout_s: float | None = None, **kwargs: Any) -> None:
        """The inner model's checks; a request they refuse never reaches ``chat``, so it is recorded here."""
        started = time.perf_counter()
        try:
            self.inner.prepare(messages, timeout_s=timeout_s, **kwargs)
        except Exception as exc:
            self._failed(self._record(messages, kwargs), exc, started)
            raise

    def choice_probs(
        self,
        messages: list[dict[str, Any]],
        choices: list[str],
        system: str | None = None,
        prefix: str = "",
        **kwargs: Any,
    ) -> dict[str, float]:
        """One forward pass: recorded with its prompt tokens, no reply and no output tokens."""
        call, started = self._record(messages, {"system": system}), time.perf_counter()
        try:
            probs = self.inner.choice_probs(messages, choices, system=system, prefix=prefix, **kwargs)
        except Exception as exc:
            self._failed(call, exc, started)
            raise
        call.input_tokens = (self.inner.count_tokens(messages, system=system) or 0) + len(prefix.split())
        call.latency_s = time.perf_counter() - started
        return probs

    def mark(self) -> int:
        """A position in the record: ``totals(since=mark)`` counts only the calls made after it."""
        with self._lock:
            return len(self.calls)

    def since(self, mark: int = 0) -> list[ModelCall]:
        with self._lock:
            return list(self.calls[mark:])

    def totals(self, since: int = 0) -> dict[str, Any]:
        calls = self.since(since)
        return {
            "calls": len(calls),
            "input_tokens": sum(c.input_tokens for c in calls),
            "output_tokens": sum(c.output_tokens for c in calls),
            "errors": sum(c.error is not None for c in calls),
            "model_s": round(sum(c.latency_s for c in calls), 3),
        }
