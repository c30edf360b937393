"""What a hostile request can do to the engine's server before and around its handlers, and the guards.

- **Size.** Starlette reads a whole body before FastAPI can refuse it, so without a limit a 20 MB
  body is buffered and parsed just to be told it is a 422. ``BodyLimit`` answers 413 instead: at
  once when the declared ``Content-Length`` is over the limit (not a byte of the body is read), and,
  for a streamed (chunked) body, as soon as what arrived crosses it (the rest is never read). Both
  answers carry ``Connection: close``, so the client stops sending.
- **Logs.** A request path, a header or a field can carry a newline (``GET /jobs/%00%0a...``), and
  a newline in a log line starts a line the attacker wrote. Anything from a request that a handler
  logs goes through ``printable`` (control and other unprintable characters escaped, length capped),
  and ``serve`` formats every record as ONE line (``OneLineFormatter``: the same escaping over the
  whole record, traceback included), so even an exception message quoting a request cannot start
  a forged line. Lone UTF-16 surrogates are escaped too: writing one to a UTF-8 stream would fail
  inside the logging handler.
"""

from __future__ import annotations

import logging

from lab.serve.limits import limited, too_large

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a Telegram Update or a job request is a few KB at most


def printable(value: object, limit: int = 200) -> str:
    """``value`` as one safe log token: unprintable characters as Python escapes (``\\n``,
    ``\\x00``, ``\\ud800``), at most ``limit`` characters of the original, ``…`` when cut."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    escaped = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in cut)
    return escaped + ("…" if len(text) > limit else "")


class OneLineFormatter(logging.Formatter):
    """Every record on one line: the formatted record (message, exception, stack) with every
    unprintable character escaped, newlines included."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record), limit=1 << 16)


def log_config(level: str = "INFO") -> dict:
    """A ``logging.config.dictConfig`` (also uvicorn's ``log_config``): one stderr handler with
    ``OneLineFormatter`` that the root, uvicorn's and the engine's loggers all write through."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": OneLineFormatter, "fmt": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


class BodyLimit:
    """ASGI middleware (``app.add_middleware(BodyLimit, max_bytes=...)``): a body over ``max_bytes``
    is a 413, declared or streamed (see the module docstring). The streamed count is ``lab serve``'s
    (``lab.serve.limits.limited``): crossing the limit raises Starlette's ``HTTPException(413)`` out
    of ``receive``, which the app's HTTPException handler answers."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import JSONResponse  # noqa: PLC0415 (starlette loads only on the path that uses it)

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:  # the server's parser already refused non-digits
            response = JSONResponse(
                {"error": too_large(f"over {self.max_bytes}", self.max_bytes)},
                status_code=413,
                headers={"Connection": "close"},
            )
            return await response(scope, receive, send)
        await self.app(scope, limited(receive, self.max_bytes), send)
