"""A scripted OpenAI-compatible chat server: the model double that misbehaves on purpose.

    with scripted_openai([say("hello"), call("calculator", '{"expression": 12'), call("nope", "{}")]) as srv:
        llm = OpenAILLM("scripted", base_url=srv.url, api_key="sk-scripted", max_attempts=1)
        ...                                  # srv.requests: every request body it received

It speaks ``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models`` (the ``models`` cards,
by default one model ``scripted`` owned by ``scripted``; pass vLLM's or ``lab serve``'s card shape to
stand in for either when a test finds a server), and answers each request with the next reply
of its script (the last one repeats forever: "the same call forever"), or with whatever a callable
script returns for the request body. A reply can carry any text, tool calls with *raw* argument
strings (invalid JSON, wrong fields, tools never offered) and a delay before answering (a slow
model). It is how Phase 13 injects every model-side failure without a model, in the exercise and
in the tests: the agent sees exactly the bytes a broken provider would send.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator


def say(text: str, delay_s: float = 0.0) -> dict[str, Any]:
    """A plain text reply."""
    return {"content": text, "tool_calls": [], "delay_s": delay_s}


def call(name: str, arguments: str | dict, delay_s: float = 0.0) -> dict[str, Any]:
    """A reply that requests one tool call; ``arguments`` is sent as given when it is a string."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"content": None, "tool_calls": [{"name": name, "arguments": raw}], "delay_s": delay_s}


@dataclass
class ScriptedServer:
    url: str  # the OpenAI base URL (ends in /v1)
    requests: list[dict[str, Any]] = field(default_factory=list)


def _completion(reply: dict[str, Any], n: int) -> dict[str, Any]:
    calls = [{"id": f"call_{n}_{i}", "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
             for i, c in enumerate(reply.get("tool_calls") or [])]
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-scripted-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": "scripted", "choices": [{"index": 0, "message": message,
                                              "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


@contextmanager
def scripted_openai(script: list[dict[str, Any]] | Callable[[dict[str, Any]], dict[str, Any]],
                    models: list[dict[str, Any]] | None = None) -> Iterator[ScriptedServer]:
    """Serve ``script`` on a free loopback port for the duration of the ``with`` block; ``GET /v1/models``
    lists ``models`` (``{"id", "owned_by", ...}`` cards)."""
    cards = [{"object": "model", "created": 0, **card} for card in models or [{"id": "scripted", "owned_by": "scripted"}]]
    server_state = ScriptedServer(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tests read requests, not logs
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            self._send(200, {"object": "list", "data": cards})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except json.JSONDecodeError as exc:
                return self._send(400, {"error": {"message": f"body is not JSON: {exc.msg}", "type": "invalid_request"}})
            with lock:
                server_state.requests.append(body)
                n = len(server_state.requests)
            reply = script(body) if callable(script) else script[min(n - 1, len(script) - 1)]
            if reply.get("delay_s"):
                time.sleep(reply["delay_s"])
            try:
                self._send(200, _completion(reply, n))
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, name="scripted-openai", daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()
