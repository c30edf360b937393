"""Errors the server answers with: one exception type, rendered in the OpenAI or Anthropic shape.

OpenAI: ``{"error": {"message", "type", "param", "code"}}``. Anthropic:
``{"type": "error", "error": {"type", "message"}, "request_id"}`` (the shapes are in each wire
format's protocol module; ``app.py`` renders them). Messages name the field or the
condition; they never carry a stack trace, an exception's text from inside the server, or a key.
"""

from __future__ import annotations

from collections.abc import Mapping


class APIError(Exception):
    """An HTTP error answer: status, a message naming the problem, the request field (``param``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def bad_request(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


class UnsupportedField(ValueError):
    """Raised inside request validation: ``field`` asks for something this server cannot honour."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
