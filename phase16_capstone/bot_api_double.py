"""Telegram's Bot API on loopback, for the Phase 16 tests, phase16.load and OpenClaw's Telegram channel:
getMe, sendMessage and getUpdates, recording what was sent (python-telegram-bot talks to it through
``base_url``, OpenClaw's channel through ``channels.telegram.apiRoot``; parameters arrive form-encoded
or JSON).

``deliver(chat_id, text)`` queues an incoming private message that the next ``getUpdates`` returns (a
long poll waits up to ``POLL_WAIT_S`` for one, then answers an empty list, as Telegram does).

``refuse`` answers the next sendMessage calls with that many Bot API errors (status, description)
before it accepts again, e.g. ``[(502, "Bad Gateway")]`` or ``[(403, "Forbidden: bot was blocked")]``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

POLL_WAIT_S = 1.0


class FakeBotAPI:
    def __init__(self):
        self.sent, self.paths, self.refuse, self.updates = [], [], [], []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or "{}")
                else:
                    params = {k: v[0] for k, v in parse_qs(raw or urlsplit(self.path).query).items()}
                status, payload = fake.answer(self.path, params)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # a long poll whose client went away
                    pass

            do_GET = do_POST  # noqa: N815  (a few clients send parameterless calls as GET)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def deliver(self, chat_id: int, text: str, *, first_name: str = "Reader") -> int:
        """Queue a private message from user ``chat_id``; returns its update_id."""
        with self._arrived:
            update_id = len(self.updates) + 1
            self.updates.append(
                {
                    "update_id": update_id,
                    "message": {
                        "message_id": 1000 + update_id,
                        "date": int(time.time()),
                        "text": text,
                        "chat": {"id": chat_id, "type": "private", "first_name": first_name},
                        "from": {"id": chat_id, "is_bot": False, "first_name": first_name},
                    },
                }
            )
            self._arrived.notify_all()
            return update_id

    def _pending(self, params: dict) -> list[dict]:
        offset = int(params.get("offset") or 0)
        return [u for u in self.updates if u["update_id"] >= offset]

    def answer(self, path: str, params: dict) -> tuple[int, dict]:
        path = urlsplit(path).path
        if path.endswith("/getUpdates"):
            with self._arrived:
                self.paths.append(path)
                self._arrived.wait_for(lambda: self._pending(params), timeout=POLL_WAIT_S)
                return 200, {"ok": True, "result": self._pending(params)}
        with self._lock:
            self.paths.append(path)
            if path.endswith("/getMe"):
                return 200, {
                    "ok": True,
                    "result": {"id": 1, "is_bot": True, "first_name": "engine", "username": "engine_bot"},
                }
            if not path.endswith("/sendMessage"):
                return 200, {"ok": True, "result": True}
            if self.refuse:
                status, description = self.refuse.pop(0)
                return status, {"ok": False, "error_code": status, "description": description}
            self.sent.append(params)
            return 200, {
                "ok": True,
                "result": {
                    "message_id": len(self.sent),
                    "date": 1700000000,
                    "text": params.get("text"),
                    "chat": {"id": int(params["chat_id"]), "type": "private"},
                },
            }

    def to(self, chat_id: int) -> list[str]:
        """The texts sent to one chat, in order."""
        with self._lock:
            return [m["text"] for m in self.sent if int(m["chat_id"]) == chat_id]

    def message_ids(self, chat_id: int) -> list[int]:
        """The message ids this fake gave the messages sent to one chat (a message's id: its place in ``sent``)."""
        with self._lock:
            return [n for n, m in enumerate(self.sent, start=1) if int(m["chat_id"]) == chat_id]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
