"""The Anthropic Messages wire format (``POST /v1/messages``) as pydantic models, and the mapping
between it and ``lab.llm``.

Content blocks served: ``text``, ``tool_use`` (assistant) and ``tool_result`` (user, content a
string or text blocks, ``is_error``); ``thinking`` blocks in the history are dropped. Images,
documents, server tools (web search, code execution), extended thinking and prefill (a final
assistant turn) are rejected with the field named. ``metadata``, ``top_p``, ``top_k``,
``service_tier``, ``cache_control`` and unknown extras are accepted and ignored;
``output_config.format`` (structured output) maps to ``json_schema``. Text that is not valid Unicode
and JSON schemas (``input_schema``, ``output_config.format.schema``) that a grammar would not hold a
reply to are rejected naming the field (``limits``).

Streaming follows the hosted API's event order: ``message_start``, then per content block
``content_block_start`` / ``content_block_delta`` (``text_delta`` or ``input_json_delta``) /
``content_block_stop``, then ``message_delta`` (stop_reason + usage) and ``message_stop``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lab.llm.base import ChatResponse, ToolCall
from lab.serve.errors import APIError, UnsupportedField, bad_request
from lab.serve.limits import Schema, WireModel, WireRequest

STOP_REASONS = ("end_turn", "max_tokens", "tool_use", "stop_sequence")
# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


# --- errors ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None


def error_body(err: APIError, request_id: str | None = None) -> dict:
    kind = ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    message = err.message if not err.param or err.message.startswith(err.param) else f"{err.param}: {err.message}"
    return ErrorResponse(error=ErrorDetail(type=kind, message=message), request_id=request_id).model_dump(
        exclude_none=True
    )


# --- request -----------------------------------------------------------------------------------


def _blocks(value: Any) -> Any:
    """A string content is one text block."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class ContentBlock(WireModel):
    """One content block of a request (text, tool_use, tool_result; thinking is dropped)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: list[ContentBlock] | None = None
    is_error: bool | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _as_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _known(self) -> ContentBlock:
        need = {
            "text": ("text",),
            "tool_use": ("id", "name"),
            "tool_result": ("tool_use_id",),
            "thinking": (),
            "redacted_thinking": (),
        }
        if self.type not in need:
            raise ValueError(
                f"content block type {self.type!r} is not supported "
                "(text, tool_use, tool_result; this server serves text)"
            )
        missing = [f for f in need[self.type] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.type} block needs {', '.join(repr(f) for f in missing)}")
        if self.type == "tool_result" and any(b.type != "text" for b in self.content or []):
            raise ValueError("tool_result content must be a string or text blocks")
        return self

    @property
    def joined_text(self) -> str:
        return "\n".join(b.text or "" for b in self.content or [])


class Message(WireModel):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _as_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _roles(self) -> Message:
        kinds = {b.type for b in self.content}
        if self.role == "user" and "tool_use" in kinds:
            raise ValueError("tool_use blocks belong in assistant turns")
        if self.role == "assistant" and "tool_result" in kinds:
            raise ValueError("tool_result blocks belong in user turns")
        return self


class Tool(WireModel):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    input_schema: Schema
    type: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in (None, "custom"):
            raise ValueError(f"tool type {value['type']!r} is not supported (only custom tools with an input_schema)")
        return value


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice type 'tool' needs 'name'")
        return self


class OutputFormat(WireModel):
    type: Literal["json_schema"]
    schema_: Schema = Field(alias="schema")


class OutputConfig(WireModel):
    format: OutputFormat | None = None
    effort: str | None = None  # accepted, ignored


class MessagesRequest(WireRequest):
    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: list[ContentBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    stream: bool | None = False
    output_config: OutputConfig | None = None
    # accepted, ignored
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    # rejected unless disabled
    thinking: dict[str, Any] | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _system_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _supported(self) -> MessagesRequest:
        if any(b.type != "text" for b in self.system or []):
            raise UnsupportedField("system", "system must be a string or text blocks")
        if self.thinking and self.thinking.get("type") not in (None, "disabled"):
            raise UnsupportedField("thinking", "extended thinking is not supported by this server")
        return self


def to_chat_kwargs(req: MessagesRequest) -> dict[str, Any]:
    """``LLM.chat`` keyword arguments for one Messages request."""
    if req.messages[-1].role == "assistant":
        raise bad_request(
            f"messages.{len(req.messages) - 1}",
            "a final assistant turn (prefill) is not supported: end with a user turn",
        )
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_use id -> tool name
    for m in req.messages:
        texts = [b.text or "" for b in m.content if b.type == "text"]
        if m.role == "assistant":
            calls = [ToolCall(b.id or "", b.name or "", dict(b.input or {})) for b in m.content if b.type == "tool_use"]
            names.update({c.id: c.name for c in calls})
            turn: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
            if calls:
                turn["tool_calls"] = calls
            messages.append(turn)
            continue
        for b in m.content:  # tool results first: they answer the previous assistant turn
            if b.type == "tool_result":
                result: dict[str, Any] = {
                    "role": "tool",
                    "tool_call_id": b.tool_use_id,
                    "name": names.get(b.tool_use_id or "", ""),
                    "content": b.joined_text,
                }
                if b.is_error:
                    result["is_error"] = True
                messages.append(result)
        if texts:
            messages.append({"role": "user", "content": "\n".join(texts)})

    tools = [
        {"name": t.name, "description": t.description or "", "input_schema": t.input_schema} for t in req.tools or []
    ]
    choice = req.tool_choice
    tool_choice: Any = "auto"
    if choice is not None:
        tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or {"name": choice.name}
    fmt = req.output_config.format if req.output_config else None
    kwargs: dict[str, Any] = dict(
        messages=messages,
        system="\n".join(b.text or "" for b in req.system or []) or None,
        tools=tools or None,
        max_tokens=req.max_tokens,
        json_schema=fmt.schema_ if fmt else None,
        tool_choice=tool_choice,
        parallel_tool_calls=not (choice and choice.disable_parallel_tool_use),
        stop=list(req.stop_sequences or []) or None,
    )
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    return kwargs


# --- response ----------------------------------------------------------------------------------


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_of(reply: ChatResponse) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a reply, in the Messages API's vocabulary."""
    reason = (
        "tool_use" if reply.tool_calls else (reply.stop_reason if reply.stop_reason in STOP_REASONS else "end_turn")
    )
    return reason, reply.stop_sequence if reason == "stop_sequence" else None


def content_of(reply: ChatResponse) -> list[TextOut | ToolUseOut]:
    blocks: list[TextOut | ToolUseOut] = [TextOut(text=reply.text)] if reply.text else []
    return blocks + [ToolUseOut(id=c.id, name=c.name, input=c.arguments) for c in reply.tool_calls]


def messages_response(reply: ChatResponse, mid: str) -> MessagesResponse:
    reason, sequence = stop_of(reply)
    return MessagesResponse(
        id=mid,
        model=reply.model,
        content=content_of(reply),
        stop_reason=reason,
        stop_sequence=sequence,
        usage=Usage(input_tokens=reply.usage.input_tokens, output_tokens=reply.usage.output_tokens),
    )


# --- stream events -----------------------------------------------------------------------------


class EventWriter:
    """The SSE events of one streamed message: text as it comes, tool_use blocks at the end."""

    def __init__(self, model: str):
        self.id, self.model = message_id(), model
        self.index = 0  # the next content block's index
        self.text_open = False

    @staticmethod
    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    def start(self, input_tokens: int | None) -> str:
        """``input_tokens``: the prompt's size where the model can count it before replying (else 0;
        ``message_delta`` carries the real count at the end)."""
        usage = {"input_tokens": input_tokens or 0, "output_tokens": 0}
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return self.event("message_start", {"message": message})

    def text(self, delta: str) -> list[str]:
        lines = []
        if not self.text_open:
            lines.append(
                self.event("content_block_start", {"index": self.index, "content_block": {"type": "text", "text": ""}})
            )
            self.text_open = True
        lines.append(
            self.event("content_block_delta", {"index": self.index, "delta": {"type": "text_delta", "text": delta}})
        )
        return lines

    def _close_text(self) -> list[str]:
        if not self.text_open:
            return []
        self.text_open = False
        self.index += 1
        return [self.event("content_block_stop", {"index": self.index - 1})]

    def finish(self, reply: ChatResponse) -> list[str]:
        lines = self._close_text()
        for call in reply.tool_calls:
            lines.append(
                self.event(
                    "content_block_start",
                    {
                        "index": self.index,
                        "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
                    },
                )
            )
            lines.append(
                self.event(
                    "content_block_delta",
                    {
                        "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(call.arguments)},
                    },
                )
            )
            lines.append(self.event("content_block_stop", {"index": self.index}))
            self.index += 1
        reason, sequence = stop_of(reply)
        lines.append(
            self.event(
                "message_delta",
                {
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": {"input_tokens": reply.usage.input_tokens, "output_tokens": reply.usage.output_tokens},
                },
            )
        )
        lines.append(self.event("message_stop", {}))
        return lines

    def error(self, err: APIError, request_id: str | None = None) -> str:
        return f"event: error\ndata: {json.dumps(error_body(err, request_id))}\n\n"
