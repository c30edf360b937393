"""The OpenAI wire format (Chat Completions, Embeddings, Models) as pydantic models, and the
mapping between it and ``lab.llm`` (messages, tools, tool_choice, ChatResponse).

Like vLLM's ``protocol.py``: a request that does not fit these models fails validation with the
field named (the app turns that into a 400 in OpenAI's error shape). Fields that change nothing
here (``user``, ``seed``, ``top_p``, ``store``, ``metadata``, penalties, unknown extras) are
accepted and ignored; fields whose meaning this server cannot honour (``n > 1``, ``logprobs``,
images, audio, the legacy ``functions``) are rejected naming the field, never silently dropped; so
are text that is not valid Unicode and JSON schemas (tool ``parameters``, ``response_format``) that a
grammar would not hold a reply to (``limits``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lab.llm.base import ChatResponse, ToolCall
from lab.serve.errors import APIError, UnsupportedField, bad_request
from lab.serve.limits import Schema, WireModel, WireRequest

# ChatResponse.stop_reason -> Chat Completions finish_reason
FINISH_REASONS = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
    None: "stop",
}


# --- errors ------------------------------------------------------------------------------------

# HTTP status -> OpenAI-style error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "overloaded_error",
    504: "upstream_error",
}


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def error_body(err: APIError) -> dict:
    info = ErrorInfo(
        message=err.message, type=ERROR_TYPES.get(err.status, "server_error"), param=err.param, code=err.code
    )
    return ErrorResponse(error=info).model_dump()


# --- chat completions: request -----------------------------------------------------------------


class ContentPart(WireModel):
    """One part of a message's content. Only text parts are served (this is a text model)."""

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text":
            raise ValueError(f"content part type {self.type!r} is not supported (text only)")
        if self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


def _parts(value: Any) -> Any:
    """A string content is one text part; lists stay lists (validated part by part)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class FunctionCall(WireModel):
    name: str
    arguments: str = "{}"


class ToolCallIn(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _as_parts(cls, value: Any) -> Any:
        return _parts(value)

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry 'tool_calls'")
        if self.content is None and not self.tool_calls and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs 'content'")
        return self

    @property
    def text(self) -> str:
        return "\n".join(p.text or "" for p in self.content or [])


class FunctionDef(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str | None = None
    parameters: Schema | None = None
    strict: bool | None = None


class ChatTool(WireModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(WireModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: Schema = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format type 'json_schema' needs 'json_schema'")
        return self


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireRequest):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["auto", "required", "none"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # accepted; they change nothing here (sampling knobs beyond temperature, bookkeeping)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # meanings this server cannot honour: rejected unless they ask for the default
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        unsupported = {
            "n": self.n not in (None, 1) and "only n=1 is supported",
            "logprobs": bool(self.logprobs) and "logprobs are not returned by this server",
            "top_logprobs": bool(self.top_logprobs) and "logprobs are not returned by this server",
            "logit_bias": bool(self.logit_bias) and "logit_bias is not supported",
            "modalities": bool(self.modalities and set(self.modalities) - {"text"})
            and "only the text modality is served",
            "audio": self.audio is not None and "audio output is not supported",
            "functions": self.functions is not None and "the legacy 'functions' field is not supported; use 'tools'",
            "function_call": self.function_call is not None
            and "the legacy 'function_call' field is not supported; use 'tool_choice'",
        }
        for field, problem in unsupported.items():
            if problem:
                raise UnsupportedField(field, problem)
        return self


# --- chat completions: request -> lab.llm ------------------------------------------------------


def to_chat_kwargs(req: ChatCompletionRequest, default_max_tokens: int) -> dict[str, Any]:
    """``LLM.chat`` keyword arguments (messages, system, tools, ...) for one request."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, for the tool results that follow
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            if not messages:  # leading instructions are the system prompt
                system.append(m.text)
            else:
                messages.append({"role": "system", "content": m.text})
        elif m.role == "user":
            messages.append({"role": "user", "content": m.text})
        elif m.role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": m.text}
            if m.tool_calls:
                turn["tool_calls"] = [
                    _tool_call_in(c, f"messages.{i}.tool_calls.{j}.function.arguments")
                    for j, c in enumerate(m.tool_calls)
                ]
                names.update({c.id: c.function.name for c in m.tool_calls})
            messages.append(turn)
        else:  # tool
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": m.tool_call_id,
                    "name": m.name or names.get(m.tool_call_id or "", ""),
                    "content": m.text,
                }
            )

    tools = [
        {
            "name": t.function.name,
            "description": t.function.description or "",
            "input_schema": t.function.parameters or {"type": "object", "properties": {}},
        }
        for t in req.tools or []
    ]
    tool_choice: Any = req.tool_choice or "auto"
    if isinstance(tool_choice, NamedToolChoice):
        tool_choice = {"name": tool_choice.function.name}

    json_schema = None
    if req.response_format is not None and req.response_format.type == "json_object":
        json_schema = {"type": "object"}
    elif (
        req.response_format is not None
        and req.response_format.type == "json_schema"
        and req.response_format.json_schema is not None
    ):  # always given for this type (ResponseFormat checks)
        json_schema = req.response_format.json_schema.schema_

    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    kwargs: dict[str, Any] = dict(
        messages=messages,
        system="\n\n".join(system) or None,
        tools=tools or None,
        max_tokens=req.max_completion_tokens or req.max_tokens or default_max_tokens,
        json_schema=json_schema,
        tool_choice=tool_choice,
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        stop=stop or None,
    )
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    return kwargs


def _tool_call_in(call: ToolCallIn, param: str) -> ToolCall:
    try:
        args = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as exc:
        raise bad_request(param, f"{param}: not valid JSON ({exc.msg})") from None
    if not isinstance(args, dict):
        raise bad_request(param, f"{param}: must be a JSON object")
    return ToolCall(call.id, call.function.name, args)


# --- chat completions: responses ---------------------------------------------------------------


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo
    system_fingerprint: str | None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_of(reply: ChatResponse) -> UsageInfo:
    n_in, n_out = reply.usage.input_tokens, reply.usage.output_tokens
    return UsageInfo(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out)


def finish_reason(reply: ChatResponse) -> str:
    if reply.tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(reply.stop_reason, "stop")


def tool_calls_out(reply: ChatResponse) -> list[ToolCallOut]:
    return [
        ToolCallOut(
            id=c.id,
            function=FunctionCallOut(
                name=c.name, arguments=json.dumps(c.arguments) if c.raw_arguments is None else c.raw_arguments
            ),
        )
        for c in reply.tool_calls
    ]


def chat_response(reply: ChatResponse, cid: str, created: int) -> ChatCompletionResponse:
    calls = tool_calls_out(reply)
    message = AssistantMessage(content=reply.text if reply.text or not calls else None, tool_calls=calls or None)
    return ChatCompletionResponse(
        id=cid,
        created=created,
        model=reply.model,
        choices=[Choice(message=message, finish_reason=finish_reason(reply))],
        usage=usage_of(reply),
    )


# --- chat completions: stream chunks -----------------------------------------------------------


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class ChunkWriter:
    """Builds the SSE lines of one streamed completion, in the order OpenAI sends them."""

    def __init__(self, model: str, include_usage: bool):
        self.id, self.created, self.model = completion_id(), int(time.time()), model
        self.include_usage = include_usage

    def _line(self, choices: list[ChunkChoice], usage: UsageInfo | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        data = chunk.model_dump(exclude_none=True)
        for choice in data["choices"]:
            choice.setdefault("finish_reason", None)  # present (null) on every chunk, as OpenAI sends it
        if self.include_usage and "usage" not in data:
            data["usage"] = None
        return f"data: {json.dumps(data)}\n\n"

    def role(self) -> str:
        return self._line([ChunkChoice(delta=Delta(role="assistant", content=""))])

    def text(self, delta: str) -> str:
        return self._line([ChunkChoice(delta=Delta(content=delta))])

    def tool_calls(self, reply: ChatResponse) -> list[str]:
        """Each call as two chunks: index, id and name first, then its arguments."""
        lines = []
        for i, call in enumerate(tool_calls_out(reply)):
            lines.append(
                self._line(
                    [
                        ChunkChoice(
                            delta=Delta(
                                tool_calls=[
                                    ToolCallDelta(
                                        index=i,
                                        id=call.id,
                                        type="function",
                                        function=FunctionDelta(name=call.function.name, arguments=""),
                                    )
                                ]
                            )
                        )
                    ]
                )
            )
            lines.append(
                self._line(
                    [
                        ChunkChoice(
                            delta=Delta(
                                tool_calls=[
                                    ToolCallDelta(index=i, function=FunctionDelta(arguments=call.function.arguments))
                                ]
                            )
                        )
                    ]
                )
            )
        return lines

    def finish(self, reply: ChatResponse) -> list[str]:
        lines = [self._line([ChunkChoice(delta=Delta(), finish_reason=finish_reason(reply))])]
        if self.include_usage:
            lines.append(self._line([], usage=usage_of(reply)))
        return lines + ["data: [DONE]\n\n"]

    @staticmethod
    def error(err: APIError) -> str:
        return f"data: {json.dumps(error_body(err))}\n\n"


# --- embeddings and models ---------------------------------------------------------------------


class EmbeddingRequest(WireRequest):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_input(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            if any(isinstance(x, (int, list)) for x in value):
                raise ValueError("token arrays are not supported; send text (a string or a list of strings)")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lab"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
