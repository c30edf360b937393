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
whole, not as it is generated). ``counts`` says what was injected.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

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


class FaultProxy:
    """The ASGI app (``app``) and what it injected (``counts``: kind or "pass" -> requests)."""

    def __init__(self, upstream: str, spec: FaultSpec):
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.upstream, self.spec = upstream.rstrip("/"), spec
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(spec.seed)
        self._dealt: list[bool] = []  # what is left of the current deck (True = fault)
        self._lock = threading.Lock()
        self.url = ""  # set by fault_proxy() once bound
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

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

    async def handle(self, request):
        import httpx
        from starlette.responses import JSONResponse, Response

        kind = self.draw()
        if kind in ("429", "500", "529"):
            status = int(kind)
            headers = {"retry-after": f"{self.spec.retry_after_s:g}"} if status == 429 else {}
            return JSONResponse({"error": {"message": f"injected fault: HTTP {status}", "type": "injected_fault",
                                           "param": None, "code": kind}}, status_code=status, headers=headers)
        if kind == "timeout":
            await asyncio.sleep(self.spec.hang_s)
            return JSONResponse({"error": {"message": "injected fault: upstream timeout", "type": "injected_fault",
                                           "param": None, "code": "timeout"}}, status_code=504)
        if kind == "slow":
            await asyncio.sleep(self.spec.slow_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with httpx.AsyncClient(timeout=None) as client:
            upstream = await client.request(request.method, f"{self.upstream}/{request.path_params['path']}",
                                            params=request.query_params, headers=headers, content=await request.body())
        body = upstream.content
        if kind == "truncated" and upstream.status_code == 200:
            body = body[: len(body) // 2]
        return Response(body, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"))


@contextmanager
def fault_proxy(upstream: str, spec: FaultSpec) -> Iterator[FaultProxy]:
    """A running FaultProxy in front of ``upstream`` (root URL, e.g. ``http://127.0.0.1:8088``);
    point clients at ``proxy.url`` (+ ``/v1`` for OpenAI SDKs)."""
    proxy = FaultProxy(upstream, spec)
    from lab.serve.background import serving_app

    with serving_app(proxy.app, name="fault proxy") as url:
        proxy.url = url
        yield proxy
