"""One small chat interface for every phase: messages in; text, tool calls, usage, latency, cost out.

Messages are plain dicts::

    {"role": "user" | "assistant", "content": "..."}
    {"role": "assistant", "content": "...", "tool_calls": [ToolCall, ...]}   # a model's tool request
    {"role": "tool", "tool_call_id": "...", "name": "...", "content": "..."}  # your tool's result

Tools use the Anthropic-style schema ``{"name", "description", "input_schema": {...JSON schema}}``;
each provider converts to its own wire format. ``tool_choice`` says whether the model may
(``"auto"``), must (``"required"``, or ``{"name": ...}`` for one tool) or must not (``"none"``)
call a tool; ``parallel_tool_calls=False`` allows at most one call per reply.

``LLM`` declares everything callers use. A capability only some models have comes with a flag the
caller decides on: ``scores_choices`` says ``choice_probs`` (next-token probabilities over a few
single-token choices, what small-model judges read) works; on other models it raises CapabilityError.
Wrappers (metering, tracing, fallback) subclass ``lab.llm.wrapper.LLMWrapper``, which forwards all of it.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.errors import LabError

ToolChoice = str | dict  # "auto" | "required" | "none" | {"name": "<tool>"}
TOOL_CHOICE_MODES = ("auto", "required", "none")


class LLMError(LabError):
    """A provider call failed (HTTP error, bad reply); the message names provider and model.

    ``status`` is the HTTP status when the server answered (None for connection errors).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class JSONReplyError(LLMError):
    """The model was asked for JSON and did not return parseable JSON."""


class InvalidRequestError(LLMError, ValueError):
    """The caller's arguments cannot be served: a tool_choice that names no offered tool, a schema the
    grammar engine cannot compile. The caller's fault, not the model's (HTTP 400 when served)."""

    def __init__(self, message: str):
        super().__init__(message, status=400)


class CapabilityError(LabError, NotImplementedError):
    """The caller asked a model for something it does not offer (``choice_probs`` of a model whose
    ``scores_choices`` is False). The caller's bug, not a provider failure: check the flag first."""


class PromptTooLongError(LLMError):
    """The prompt does not fit the model's context window (HTTP 413 when served)."""

    def __init__(self, message: str):
        super().__init__(message, status=413)


@dataclass
class ToolCall:
    """One tool request of a model. ``raw_arguments`` is set (and ``arguments`` is empty) when the model's
    arguments were not a JSON object: a bad reply is data an agent answers with an observation, not an
    exception that loses the rest of the reply."""

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str | None = None

    @property
    def arguments_error(self) -> str | None:
        """Why the arguments could not be used, or None when they parsed into an object."""
        if self.raw_arguments is None:
            return None
        return f"arguments of tool call {self.name!r} are not a JSON object: {self.raw_arguments[:200]!r}"


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ChatResponse:
    text: str
    provider: str
    model: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    cost_usd: float | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None  # which of the ``stop`` strings ended the reply

    def json(self) -> Any:
        """Parse the reply as JSON, tolerating a ```json fence or prose around one object."""
        return parse_json_reply(self.text)

    def to_dict(self) -> dict:
        return asdict(self)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_reply(text: str) -> Any:
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise JSONReplyError(f"reply is not JSON: {text[:200]!r}")


class LLM(ABC):
    """A chat model behind one provider. Construct with ``lab.llm.from_spec``."""

    provider: str = ""
    # calls this client runs at once to advantage (a server admits that many before queueing): 1 unless
    # the model decodes several sequences together (the llama.cpp engine batches them per step)
    parallel_requests: int = 1
    # ``choice_probs`` works: the model reads next-token probabilities on this machine (a local model).
    # Hosted APIs give no such distribution; callers (the Phase 10 and 12 judges) decide on this flag
    scores_choices: bool = False

    def __init__(self, model: str):
        self.model = model

    @property
    def spec(self) -> str:
        return f"{self.provider}:{self.model}"

    @abstractmethod
    def chat(
        self,
        messages: list[dict[str, Any]],
        system: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        """One completion. ``json_schema`` asks for a JSON reply matching it (parse with ``.json()``);
        ``{"type": "object"}`` asks for any JSON object. ``stop`` ends the reply at any of its strings."""

    def stream(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[str | ChatResponse]:
        """The reply as it is generated: text deltas (``str``), then the whole ``ChatResponse``.

        This default sends one request and yields its text at once; providers that can stream
        tokens override it. Closing the iterator early stops generation where the provider can.
        """
        reply = self.chat(messages, **kwargs)
        if reply.text:
            yield reply.text
        yield reply

    def prepare(self, messages: list[dict[str, Any]], *, timeout_s: float | None = None, **kwargs: Any) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """Do the work of a ``chat`` / ``stream`` call with these arguments that does not need the model
        (a local model tokenizes the prompt and compiles its grammar), raising what that call would raise
        for arguments it cannot serve (InvalidRequestError, PromptTooLongError). A server calls it before a
        request waits for the model, so a bad request never holds it; ``timeout_s`` bounds the wait for
        a grammar. The call itself repeats the checks and finds the grammar cached. By default there is
        nothing to do before the call."""

    def count_tokens(self, messages: list[dict[str, Any]], **kwargs: Any) -> int | None:
        """Prompt tokens a ``chat`` call with these arguments would send; None where it cannot be known
        without a request (a hosted model's tokenizer is not public)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Fields for ``ctx.model(...)`` provenance."""
        return {"id": self.spec}

    @property
    def context_window(self) -> int | None:
        """Tokens the model attends over (prompt + reply) where this client knows it (a local model); None
        for a hosted model, whose window its provider documents."""
        return None

    @property
    def prefix_cache_stats(self) -> dict[str, int] | None:
        """Prompt tokens computed vs requested since the last ``reset_prefix_cache``, for a model that reuses
        a cached prompt prefix (a local model); None for one that does not."""
        return None

    def reset_prefix_cache(self) -> None:  # noqa: B027 (a hook: a model without a prefix cache has nothing to reset)
        """Count ``prefix_cache_stats`` from zero."""

    def choice_probs(
        self,
        messages: list[dict[str, Any]],
        choices: list[str],
        system: str | None = None,
        prefix: str = "",
        use_prefix_cache: bool = True,
    ) -> dict[str, float]:
        """Probability of each single-token choice as the next token of the assistant's reply (``prefix``:
        text already placed at the start of that reply), as ``{choice: p}`` summing to 1 over ``choices``;
        ``use_prefix_cache=False`` scores without reusing a cached prompt prefix (where the model keeps one).

        Only models whose ``scores_choices`` is True implement it (``LocalLLM``); this default raises
        CapabilityError. Decide on the flag before calling, never on ``hasattr``."""
        raise CapabilityError(
            f"{self.spec} cannot score choices (scores_choices is False): check "
            "llm.scores_choices before calling choice_probs, and ask it with chat instead"
        )


def normalize_tool_choice(tool_choice: ToolChoice | None, tools: list[dict[str, Any]] | None) -> tuple[str, str | None]:
    """``(mode, tool name)``: mode is auto | required | none | named; checks names against ``tools``.

    Accepts the common forms (``"auto"``, ``"required"``, ``"none"``, ``{"name": ...}``) and the
    OpenAI form ``{"type": "function", "function": {"name": ...}}``; anything else is an InvalidRequestError
    (a ValueError) naming the bad value, raised before a request is sent.
    """
    if tool_choice is None:
        tool_choice = "auto"
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICE_MODES:
            raise InvalidRequestError(
                f"tool_choice {tool_choice!r}: expected one of {', '.join(TOOL_CHOICE_MODES)} or {{'name': ...}}"
            )
        if tool_choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs at least one tool")
        return tool_choice, None
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name") or (tool_choice.get("function") or {}).get("name")
        known = [t["name"] for t in tools or []]
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tool_choice {tool_choice!r}: a named choice needs a tool name")
        if name not in known:
            raise InvalidRequestError(
                f"tool_choice names tool {name!r}, which is not among the tools given ({', '.join(known) or 'none'})"
            )
        return "named", name
    raise InvalidRequestError(f"tool_choice {tool_choice!r}: expected a string or {{'name': ...}}")


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall]:
    """The tool calls of an assistant message, as ToolCall whether stored as objects or dicts."""
    return [
        c if isinstance(c, ToolCall) else ToolCall(c["id"], c["name"], dict(c.get("arguments") or {}))
        for c in message.get("tool_calls") or []
    ]


def json_instruction(schema: dict[str, Any]) -> str:
    """The prompt suffix used by providers without native structured output."""
    return "Reply with a single JSON object and nothing else. It must match this JSON schema:\n" + json.dumps(
        schema, indent=None, sort_keys=True
    )
