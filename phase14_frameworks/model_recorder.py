"""A recording proxy in front of an OpenAI-compatible server: what a framework really sends the model.

A framework's prompt is the part of it you never see: OpenClaw builds a system prompt from its
own sections, the workspace's files and the skills it found, and offers the model a tool list, on
every turn. Put this proxy between the framework and ``lab serve`` (or any OpenAI-compatible
server) and each chat request is kept as sent — body and the reply streamed back — so the lesson
can measure the system prompt, the tools offered and the tokens, and see which tool the model
called. Request headers are forwarded but never stored (they carry the API key). Replies are relayed
as they arrive (a stream stays a stream); the proxy is a handler on the scripted server's HTTP core
(``lab.llm.scripted_server.LoopbackServer``).

    recorder = ModelRecorder(upstream="http://127.0.0.1:8088")
    with recorder:                       # point the framework's base URL at f"{recorder.url}/v1"
        ...
    recorder.exchanges[0].system_prompt, recorder.exchanges[0].tool_names, ...
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lab.llm.scripted_server import LoopbackServer, Reply, Request

CHAT_PATHS = ("/v1/chat/completions",)
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Exchange:
    """One chat request as the framework sent it, and the reply as the server streamed it back."""

    body: dict[str, Any]
    status: int = 0
    reply_text: str = ""
    reply_tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments"} as sent
    usage: dict[str, Any] | None = None
    error_code: str | None = None  # the server's error code on a refusal (``context_length_exceeded`` ...)

    @property
    def context_overflow(self) -> bool:
        """The server refused the request because the prompt does not fit the model's window (HTTP 413
        ``context_length_exceeded`` from ``lab serve``; other servers say it with 400 and the same code)."""
        return self.error_code == "context_length_exceeded" or (self.status == 413 and self.error_code is None)

    @property
    def system_prompt(self) -> str:
        """The leading system/developer messages, joined (what OpenAI-wire servers treat as the system prompt)."""
        parts = []
        for message in self.body.get("messages") or []:
            if message.get("role") not in ("system", "developer"):
                break
            parts.append(text_of(message.get("content")))
        return "\n\n".join(parts)

    @property
    def tool_names(self) -> list[str]:
        return [(t.get("function") or {}).get("name", "") for t in self.body.get("tools") or []]

    @property
    def tools_json_chars(self) -> int:
        return len(json.dumps(self.body.get("tools") or [], ensure_ascii=False))

    def mentions(self, text: str) -> bool:
        """Does ``text`` appear in the system prompt (XML/HTML escapes undone)?"""
        return text in html.unescape(self.system_prompt)


def text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def parse_reply(exchange: Exchange, raw: bytes, content_type: str) -> None:
    """Fill the reply fields from the upstream's response: one JSON body, or an SSE stream of chunks."""
    if "text/event-stream" in content_type:
        chunks = []
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                try:
                    chunks.append(json.loads(line[5:]))
                except json.JSONDecodeError:
                    continue
    else:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            exchange.error_code = str(error.get("code") or error.get("type") or "") or None
            return
        message = ((body.get("choices") or [{}])[0]).get("message") or {}
        chunks = [{"choices": [{"delta": message}], "usage": body.get("usage")}]
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk.get("usage"):
            exchange.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            exchange.reply_text += delta.get("content") or ""
            for i, call in enumerate(delta.get("tool_calls") or []):
                slot = calls.setdefault(call.get("index", i), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
    exchange.reply_tool_calls = [calls[i] for i in sorted(calls)]


class ModelRecorder(LoopbackServer):
    """A proxy to ``upstream`` (a context manager; clients go to ``url``) that keeps every chat request
    (``exchanges``, in arrival order)."""

    def __init__(self, upstream: str):
        super().__init__(name="model-recorder")
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Reply:
        import httpx  # noqa: PLC0415 (httpx loads only on the path that uses it)

        exchange = None
        if request.method == "POST" and urlsplit(request.path).path in CHAT_PATHS:
            exchange = Exchange(request.body if request.body is not None else {"unparsed_chars": len(request.raw)})
            with self._lock:
                self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        client = httpx.Client(timeout=None)
        upstream = client.send(
            client.build_request(
                request.method, f"{self.upstream}{request.path}", headers=headers, content=request.raw
            ),
            stream=True,
        )

        def relay() -> Iterator[bytes]:
            received = bytearray()
            try:
                for piece in upstream.iter_raw():
                    received.extend(piece)
                    yield piece
            finally:
                upstream.close()
                client.close()
                if exchange is not None:
                    exchange.status = upstream.status_code
                    parse_reply(exchange, bytes(received), upstream.headers.get("content-type", ""))

        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return Reply(status=upstream.status_code, headers=out_headers, stream=relay())

    def summary(
        self, count_tokens: Callable[[dict[str, Any]], int | None] | None = None, needles: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per recorded request: sizes, tools offered, tokens, whether each needle is in the
        system prompt, and what the model answered. ``count_tokens(body)`` counts an OpenAI request
        body with the served model's tokenizer (None where it cannot: the reply's usage is used)."""
        rows = []
        for i, ex in enumerate(self.exchanges):
            system = ex.system_prompt
            prompt_tokens = count_tokens(ex.body) if count_tokens else None
            system_tokens = (
                count_tokens({**ex.body, "messages": [{"role": "system", "content": system}], "tools": None})
                if count_tokens and system
                else None
            )
            reported = (ex.usage or {}).get("prompt_tokens")
            rows.append(
                {
                    "request": i + 1,
                    "status": ex.status,
                    "messages": len(ex.body.get("messages") or []),
                    "system_prompt_chars": len(system),
                    "system_prompt_tokens": system_tokens,
                    "prompt_tokens": prompt_tokens if prompt_tokens is not None else reported,
                    "prompt_tokens_reported": reported,
                    "tools_offered": len(ex.tool_names),
                    "tool_names": ex.tool_names,
                    "tools_json_chars": ex.tools_json_chars,
                    "stream": bool(ex.body.get("stream")),
                    "in_system_prompt": {k: ex.mentions(v) for k, v in (needles or {}).items()},
                    "reply_chars": len(ex.reply_text),
                    "reply_tool_calls": [c["name"] for c in ex.reply_tool_calls],
                    "error_code": ex.error_code,
                }
            )
        return rows
