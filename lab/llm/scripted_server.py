"""A scripted OpenAI/Anthropic-compatible server: a double of a model's wire protocol, for tests and exercises.

    from lab.llm.scripted_server import ScriptedServer, call, error, say

    with ScriptedServer([say("hello"), call("calculator", '{"expression": 12'), error(503, "busy")]) as srv:
        llm = OpenAILLM("scripted", base_url=srv.openai_url, api_key="sk-scripted", max_attempts=1)
        ...
        srv.requests[0].body["messages"]     # every request the script answered, in arrival order

Bound to 127.0.0.1 on a free port while the ``with`` block lasts (``url``: the root, the Anthropic SDK's
base URL; ``openai_url``: ``url/v1``), it serves

- ``POST /v1/chat/completions``: the OpenAI wire, plain or streamed (``"stream": true``: SSE chunks, a usage
  chunk when ``stream_options.include_usage`` asks for one), with tool calls and usage;
- ``POST /v1/messages``: the Anthropic wire (plain; a streamed request is refused with a 400);
- ``GET /v1/models``: the ``models`` cards (``models=None``: a 404, like a server without a model list).

Only the model's replies are scripted: clients talk to it over a real socket through their real SDKs.
The script is a list (the n-th request gets the n-th reply, the last one repeats forever) or a callable
from the request's JSON body to a reply. A reply (`Reply`; `say`, `call`, `error` and `raw` build one)
is text, tool calls with *raw* argument strings (invalid JSON, tools never offered), an HTTP error, a raw
payload, a delay, a stream cut into chunks or a dropped connection: the bytes a broken provider sends.

`LoopbackServer` is the HTTP core under it (a thread per connection, a handler from `Request` to a raw
`Reply`): the recording and fault-injecting proxies of Phases 14 and 15 are handlers on it too.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict, cast
from urllib.parse import urlsplit

from lab.serve.anthropic_protocol import ERROR_TYPES  # the Anthropic wire's error types, as lab serve sends them

DEFAULT_MODELS = ({"id": "scripted", "owned_by": "scripted"},)
WIRES = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}


class Reply(TypedDict, total=False):
    """What the server answers. The core (`LoopbackServer`) reads ``delay_s``, ``drop``, ``status``,
    ``headers``, ``body`` and ``stream``; `ScriptedServer` turns the model's keys into those."""

    # the model's turn (ScriptedServer renders it in the wire the request came on)
    content: str | None  # the assistant's text
    tool_calls: list[dict[str, Any]]  # {"name", "arguments"}: arguments sent as given (a raw string)
    usage: tuple[int, int] | None  # (prompt, completion) tokens; absent: words counted; None: no usage sent
    chunks: list[str]  # streamed, the text comes in these pieces (default: one piece)
    error: str  # an error's message, sent in the wire's error envelope with ``status``
    code: str  # the error's code (``context_length_exceeded`` ...; default: the status)
    # HTTP, as it is
    status: int  # the HTTP status (default 200)
    headers: dict[str, str]  # extra response headers (``retry-after``)
    body: Any  # a raw payload: JSON-encoded as given (bytes: sent as they are)
    stream: Iterable[bytes | str]  # a body sent piece by piece (chunked transfer encoding)
    delay_s: float  # wait this long before answering (a slow model, a hanging server)
    drop: bool  # close the connection instead of answering (after ``stream``/``chunks``: mid-stream)


def say(text: str, **extra: Any) -> Reply:
    """A text reply; ``extra`` adds reply keys (``delay_s``, ``usage``, ``chunks``, ``drop`` ...)."""
    return cast(Reply, {"content": text, "tool_calls": [], **extra})


def call(name: str, arguments: str | dict, **extra: Any) -> Reply:
    """A reply that asks for one tool call; ``arguments`` goes on the wire as given when it is a string."""
    raw_arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return cast(Reply, {"content": None, "tool_calls": [{"name": name, "arguments": raw_arguments}], **extra})


def error(status: int, message: str, *, retry_after: float | None = None, **extra: Any) -> Reply:
    """An HTTP error in the wire's error envelope (``retry_after``: a ``Retry-After`` header, seconds)."""
    headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
    return cast(Reply, {"status": status, "error": message, "headers": headers, **extra})


def raw(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    """A payload sent exactly as given (a provider's own wire format, byte for byte)."""
    return Reply(status=status, body=body, headers=dict(headers or {}))


@dataclass
class Request:
    """One request as the server received it (``headers``: case-insensitive; ``body``: the parsed JSON or None)."""

    method: str
    path: str  # with its query string
    headers: Message
    raw: bytes
    body: Any = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # quiet: tests read requests, not logs
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        data = self._read_body()
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        try:
            reply = self.server.owner.handle(Request(self.command, self.path, self.headers, data, body))
        except Exception as exc:  # a broken script is a 500 naming it, not a hung client
            reply = Reply(
                status=500,
                body={"error": {"message": f"handler failed: {type(exc).__name__}: {exc}", "type": "script_error"}},
            )
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _read_body(self) -> bytes:
        if "chunked" not in (self.headers.get("transfer-encoding") or "").lower():
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        data = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            data += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return data

    def _send(self, reply: Reply) -> None:
        if reply.get("delay_s"):
            time.sleep(reply["delay_s"])
        stream = reply.get("stream")
        if reply.get("drop") and stream is None:
            return self._drop()
        headers = {k.lower(): str(v) for k, v in (reply.get("headers") or {}).items()}
        if stream is None:
            data = reply.get("body", b"")
            data = data if isinstance(data, bytes) else json.dumps(data).encode()
            headers = {"content-type": "application/json", **headers, "content-length": str(len(data))}
        else:
            headers = {"content-type": "text/event-stream", **headers, "transfer-encoding": "chunked"}
        try:
            self.send_response(reply.get("status", 200))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if stream is None:
                self.wfile.write(data)
                return
            for piece in stream:
                piece = piece.encode() if isinstance(piece, str) else piece
                if piece:
                    self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
        finally:
            getattr(stream, "close", lambda: None)()  # a relayed upstream stream is closed, even on a disconnect
        if reply.get("drop"):
            return self._drop()
        self.wfile.write(b"0\r\n\r\n")

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client left first
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping (a hanging reply) never holds up the exit
    owner: LoopbackServer

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.connections: set[socket.socket] = set()  # open client connections, closed at the exit

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-request (OpenClaw aborting a turn) is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """``handle(request) -> Reply`` served on 127.0.0.1 (a free port) in a background thread while the
    ``with`` block lasts: the HTTP core of the scripted server and of the proxies built on it."""

    def __init__(self, handle: Callable[[Request], Reply] | None = None, *, name: str = "loopback"):
        if handle is not None:
            self.handle = handle  # type: ignore[assignment]  # a callable given in place of overriding handle
        self.name, self.url = name, ""
        self._httpd: _Server | None = None

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    @property
    def openai_url(self) -> str:
        """The base URL OpenAI SDKs take (the root + ``/v1``)."""
        return f"{self.url}/v1"

    def __enter__(self):
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None  # __enter__ made it
        self._httpd.shutdown()
        for connection in list(self._httpd.connections):  # a kept-alive connection is not served after the exit
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def _words(text: str | None) -> int:
    return len((text or "").split())


class ScriptedServer(LoopbackServer):
    """A model's wire protocol answered from ``script`` (see the module docstring); ``requests``: every
    chat/messages request it answered; ``models``: the ``GET /v1/models`` cards (None: no model list)."""

    def __init__(
        self,
        script: Sequence[Reply] | Callable[[dict[str, Any]], Reply],
        models: Sequence[dict[str, Any]] | None = DEFAULT_MODELS,
        *,
        name: str = "scripted-model",
    ):
        super().__init__(name=name)
        self.script = script
        self.models = None if models is None else [{"object": "model", "created": 0, **card} for card in models]
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Reply:
        path = urlsplit(request.path).path.rstrip("/")
        if request.method == "GET" and path == "/v1/models" and self.models is not None:
            return raw({"object": "list", "data": self.models})
        wire = WIRES.get(path) if request.method == "POST" else None
        if wire is None:
            return _render(error(404, f"no route {request.method} {request.path}"), "openai", {}, 0)
        if not isinstance(request.body, dict):
            return _render(error(400, "the body is not a JSON object"), wire, {}, 0)
        with self._lock:
            self.requests.append(request)
            n = len(self.requests)
        script = self.script
        if callable(script):
            reply = script(request.body)
        else:
            reply = script[min(n, len(script)) - 1] if script else error(500, "the script has no reply")
        return _render(reply, wire, request.body, n)


def _render(reply: Reply, wire: str, body: dict[str, Any], n: int) -> Reply:
    """A scripted reply as the HTTP reply ``wire`` ("openai" or "anthropic") sends to request ``body``
    (the ``n``-th); a raw one (``body``/``stream``) goes as it is."""
    if "body" in reply or "stream" in reply:
        return reply
    http = Reply(**{k: reply[k] for k in ("delay_s", "drop", "headers") if k in reply})  # type: ignore[typeddict-item]
    if "error" in reply:
        status = reply.get("status", 500)
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        if wire == "anthropic":
            envelope = {"type": "error", "error": {"type": kind, "message": reply["error"]}}
        else:
            envelope = {
                "error": {
                    "message": reply["error"],
                    "type": kind,
                    "param": None,
                    "code": reply.get("code") or str(status),
                }
            }
        return {**http, "status": status, "body": envelope}
    if reply.get("drop") and not body.get("stream"):
        return http
    if wire == "anthropic" and body.get("stream"):
        return _render(error(400, "the scripted server does not stream /v1/messages"), wire, body, n)
    calls = reply.get("tool_calls") or []
    text = reply.get("content")
    usage = (
        reply["usage"]
        if "usage" in reply
        else (
            _words(_text(body.get("system")))
            + sum(_words(_text(m.get("content"))) for m in body.get("messages") or []),
            _words(text) + sum(_words(c["arguments"]) for c in calls),
        )
    )
    model = body.get("model") or "scripted"
    if wire == "anthropic":
        blocks = ([{"type": "text", "text": text}] if text else []) + [
            {"type": "tool_use", "id": f"toolu_{n}_{i}", "name": c["name"], "input": _input(c["arguments"])}
            for i, c in enumerate(calls)
        ]
        message = {
            "id": f"msg_scripted_{n}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": "tool_use" if calls else "end_turn",
            "stop_sequence": None,
        }
        if usage is not None:
            message["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
        return {**http, "body": message}
    return {**http, **_openai(reply, body, n, model, usage)}


def _openai(reply: Reply, body: dict[str, Any], n: int, model: str, usage: tuple[int, int] | None) -> Reply:
    """A chat completion, or its SSE chunks when the request streams (cut short by ``drop``)."""
    text = reply.get("content")
    calls = [
        {"id": f"call_{n}_{i}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for i, c in enumerate(reply.get("tool_calls") or [])
    ]
    finish = "tool_calls" if calls else "stop"
    counted = (
        None
        if usage is None
        else {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
    )
    head = {"id": f"chatcmpl-scripted-{n}", "created": int(time.time()), "model": model}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        completion = {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        return Reply(body=completion if counted is None else {**completion, "usage": counted})

    def event(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": choices, **extra}) + "\n\n"

    events = [event({"role": "assistant", "content": ""})]
    events += [event({"content": piece}) for piece in reply.get("chunks") or ([text] if text else [])]
    events += [event({"tool_calls": [{"index": i, **c}]}) for i, c in enumerate(calls)]
    if not reply.get("drop"):
        events.append(event({}, finish))
        if counted is not None and (body.get("stream_options") or {}).get("include_usage"):
            events.append(event(None, usage=counted))
        events.append("data: [DONE]\n\n")
    return Reply(stream=events)


def _input(arguments: str) -> Any:
    """Anthropic's ``tool_use.input`` is an object: the arguments parsed, or the raw string when they are not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
