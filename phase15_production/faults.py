"""A fault-injecting loopback proxy in front of any OpenAI-compatible server (e.g. ``lab serve``).

Resilience code is only as good as the failures it was tried against. This proxy forwards every
request to ``upstream`` unchanged, except that a seeded share ``rate`` of them get a fault instead,
drawn by weight from ``kinds``:

- ``429``: rate limited, with ``Retry-After: retry_after_s`` (a client must wait that long);
- ``500`` / ``529``: server error / Anthropic-style "overloaded" (transient: retry);
- ``timeout``: no answer for ``hang_s`` (set it above the client's timeout: the client gives up);
- ``slow``: forwarded after ``slow_s`` (succeeds, late);
- ``truncated``: forwarded, but only the first half of the reply body comes back (status 200).

Faults are dealt in arrival order from shuffled decks of ``deck`` requests, each holding exactly
``round(rate × deck)`` faults (``random.Random(seed)``): the rate holds over every deck — a short
run at 10% is not fault-free by bad luck — while faults still come in bursts, as real ones do. A run
with one client at a time sees the same faults on the same requests. Replies are buffered (a ``stream: true`` request comes back
whole, not as it is generated). ``counts`` says what was injected; ``log`` holds one row per
request (see ``LogRow``), written with ``write_log`` so a figure computed from the client's side can be
recomputed from what the proxy actually did (``first_attempts_served``). The proxy is a handler on
the scripted server's HTTP core (``lab.llm.scripted_server.LoopbackServer``: a thread per connection).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from lab.jsonl import read_jsonl, write_jsonl
from lab.llm.scripted_server import LoopbackServer, Reply, Request, raw

FAULT_KINDS = ("429", "500", "529", "timeout", "slow", "truncated")
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "accept-encoding"}


@dataclass
class FaultSpec:
    rate: float = 0.0  # share of requests that get a fault
    kinds: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in FAULT_KINDS})  # kind -> weight
    seed: int = 0
    retry_after_s: float = 1.0
    slow_s: float = 1.0
    hang_s: float = 30.0
    deck: int = 20  # requests per shuffled deck

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate} must be within [0, 1]")
        unknown = sorted(set(self.kinds) - set(FAULT_KINDS))
        if unknown or not self.kinds or any(w < 0 for w in self.kinds.values()) or sum(self.kinds.values()) <= 0:
            raise ValueError(f"fault kinds {self.kinds}: weights >= 0 (not all 0) for kinds among {list(FAULT_KINDS)}")


class LogRow(TypedDict):
    """One request as the proxy handled it."""

    i: int  # arrival order
    fault: str | None  # the injected kind (None: forwarded untouched)
    status: int  # the HTTP status the proxy answered with (0: no answer yet when the log was read)
    served: bool  # a complete 200 reply went back (a truncated body is not served)
    tokens: int  # tokens the upstream model processed for it (billed even when the client got nothing usable)
    seconds: float  # time in the proxy
    prompt: str  # the last message's text: groups a job's requests (its first attempt is its first row)


def _prompt(body: bytes) -> str:
    try:
        messages = json.loads(body).get("messages") or [{}]
        return str(messages[-1].get("content", ""))[:200]
    except (ValueError, AttributeError):
        return ""


def _tokens(body: bytes) -> int:
    try:
        return int((json.loads(body).get("usage") or {}).get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


def write_log(rows: list[LogRow], path: Path) -> None:
    """The proxy's log as JSON lines (one request a line)."""
    write_jsonl(path, rows)


def read_log(path: Path) -> list[LogRow]:
    return read_jsonl(path)


def first_attempts_served(rows: list[LogRow], within_s: float) -> tuple[int, int]:
    """(served, jobs): of the distinct prompts, how many had their FIRST request served within
    ``within_s`` (the client's timeout) — what a bare client (one attempt, no fallback) completes."""
    first: dict[str, LogRow] = {}
    for row in sorted(rows, key=lambda r: r["i"]):
        first.setdefault(row["prompt"], row)
    return sum(r["served"] and r["seconds"] < within_s for r in first.values()), len(first)


class FaultProxy(LoopbackServer):
    """The proxy (a context manager; clients go to ``url``) and what it injected (``counts``: kind or
    "pass" -> requests)."""

    def __init__(self, upstream: str, spec: FaultSpec):
        super().__init__(name="fault-proxy")
        self.upstream, self.spec = upstream.rstrip("/"), spec
        self.counts: Counter[str] = Counter()
        self.log: list[LogRow] = []
        self._rng = random.Random(spec.seed)
        self._dealt: list[bool] = []  # what is left of the current deck (True = fault)
        self._lock = threading.RLock()

    def draw(self) -> str | None:
        """The fault for the next request (None: pass it through)."""
        with self._lock:
            if not self._dealt:
                faults = round(self.spec.rate * self.spec.deck)
                self._dealt = [True] * faults + [False] * (self.spec.deck - faults)
                self._rng.shuffle(self._dealt)
            hit = self._dealt.pop()
            kinds, weights = zip(*self.spec.kinds.items())
            kind = self._rng.choices(kinds, weights)[0] if hit else None
            self.counts[kind or "pass"] += 1
        return kind

    def handle(self, request: Request) -> Reply:
        start = time.perf_counter()
        with self._lock:  # logged on arrival: a request still hanging when the run ends is in the log too
            row = LogRow(
                i=len(self.log),
                fault=self.draw(),
                status=0,
                served=False,
                tokens=0,
                seconds=0.0,
                prompt=_prompt(request.raw),
            )
            self.log.append(row)
        reply, tokens = self._answer(request, row["fault"])
        with self._lock:
            row.update(
                status=reply["status"],
                served=reply["status"] == 200 and row["fault"] != "truncated",
                tokens=tokens,
                seconds=round(time.perf_counter() - start, 4),
            )
        return reply

    def _answer(self, request: Request, kind: str | None) -> tuple[Reply, int]:
        """The reply to one request and the tokens the upstream processed for it."""
        import httpx  # noqa: PLC0415 (httpx loads only on the path that uses it)

        if kind in ("429", "500", "529"):
            status = int(kind)
            headers = {"retry-after": f"{self.spec.retry_after_s:g}"} if status == 429 else {}
            return raw(
                {
                    "error": {
                        "message": f"injected fault: HTTP {status}",
                        "type": "injected_fault",
                        "param": None,
                        "code": kind,
                    }
                },
                status,
                headers,
            ), 0
        if kind == "timeout":
            time.sleep(self.spec.hang_s)
            return raw(
                {
                    "error": {
                        "message": "injected fault: upstream timeout",
                        "type": "injected_fault",
                        "param": None,
                        "code": "timeout",
                    }
                },
                504,
            ), 0
        if kind == "slow":
            time.sleep(self.spec.slow_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = httpx.request(
            request.method, f"{self.upstream}{request.path}", headers=headers, content=request.raw, timeout=None
        )
        reply = upstream.content
        tokens = _tokens(reply) if upstream.status_code == 200 else 0
        if kind == "truncated" and upstream.status_code == 200:
            reply = reply[: len(reply) // 2]
        return raw(
            reply, upstream.status_code, {"content-type": upstream.headers.get("content-type", "application/json")}
        ), tokens


def fault_proxy(upstream: str, spec: FaultSpec) -> FaultProxy:
    """A FaultProxy in front of ``upstream`` (root URL, e.g. ``http://127.0.0.1:8088``), served while its
    ``with`` block lasts; point clients at ``proxy.url`` (+ ``/v1`` for OpenAI SDKs)."""
    return FaultProxy(upstream, spec)
