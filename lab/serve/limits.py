"""What a request may hold, checked before any model work: a bounded body, valid Unicode text, and
JSON schemas a grammar can be compiled from.

- ``limited(receive)``: the ASGI ``receive`` of a request whose body may not pass ``MAX_BODY_BYTES``,
  counted as it arrives, so a chunked body (no Content-Length) is cut off as soon as it passes the limit,
  before anything parses it. (Starlette's own ``RequestBodyLimitMiddleware`` answers in plain text and
  replaces every answer to a request whose declared length is too large; this server answers in the
  caller's wire format.)
- ``WireModel`` / ``WireRequest``: the bases of the request models; a string holding a lone UTF-16
  surrogate (JSON ``"\\ud800"``: valid JSON, not valid text) is refused naming its field, before it
  reaches a tokenizer or an encoder that would fail on it.
- ``Schema``: a JSON schema field, held to ``lab.llm.constrained.check_schema`` (depth, size, and no
  keyword the grammar engine would not enforce).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from lab.llm.constrained import check_schema
from lab.serve.errors import UnsupportedField

MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body past this is refused (413), unread or as soon as it passes

_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str only an unpaired one is left


def too_large(size: str, max_bytes: int = MAX_BODY_BYTES) -> str:
    return f"the request body is {size} bytes; this server takes at most {max_bytes} bytes"


def limited(receive: Receive, max_bytes: int = MAX_BODY_BYTES) -> Receive:
    """``receive`` counting the body: past ``max_bytes`` it raises a 413 HTTPException (with
    ``Connection: close``: the rest of the body is never read), which the app answers in its own
    format (FastAPI passes an HTTPException raised while it reads a body on to the app's handler)."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise HTTPException(413, too_large(f"over {max_bytes}", max_bytes), headers={"Connection": "close"})
        return message

    return receive_limited


def lone_surrogate_at(value: Any) -> str | None:
    """The path (``messages.0.content``) of a string in ``value`` (keys too) holding a lone surrogate,
    or None. Walks without recursion: the body's nesting is the client's choice."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return ".".join(path) or "the request body"
        elif isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return ".".join(path) or "the request body"
                stack.append((child, (*path, str(key))))
        elif isinstance(node, list):
            stack.extend((child, (*path, str(i))) for i, child in enumerate(node))
    return None


class WireModel(BaseModel):
    """Part of a request of either wire format: fields it does not know are accepted and ignored
    (clients send many)."""

    model_config = ConfigDict(extra="allow")


class WireRequest(WireModel):
    """A whole request: its text, every string and key of it, must be valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        path = lone_surrogate_at(data)
        if path is not None:
            raise UnsupportedField(
                path,
                "holds a lone UTF-16 surrogate (such as \\ud800), which is not valid "
                "Unicode text; send text as UTF-8 or as surrogate pairs",
            )
        return data


def _compilable(schema: dict[str, Any]) -> dict[str, Any]:
    check_schema(schema)
    return schema


Schema = Annotated[dict[str, Any], AfterValidator(_compilable)]
