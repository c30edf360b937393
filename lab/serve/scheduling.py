"""As many generations at a time per model as it decodes together, a bounded wait queue, and streams
run off the event loop.

``ModelQueue.acquire`` admits a request only while fewer than ``parallel + max_waiting`` hold or wait
for the model (``parallel``: 1 for most models; the llama.cpp engine batches several sequences per
step); the next one is a 429 whose Retry-After estimates the wait from recent hold times.

``StreamRun`` runs ``LLM.stream(...)`` in a thread of its own: the generator is created, advanced
and closed in that one thread (a local model's generation state never hops threads), and its
items reach the event loop through an ``asyncio.Queue``. ``stop()`` (a client went away) makes the
thread close the generator after the item in hand, which stops generation; the model slot is
released only when that thread is done, so a stream holds the model until it really ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from lab.serve.errors import APIError

log = logging.getLogger("lab.serve")

MAX_RETRY_AFTER_S = 60


class ModelQueue:
    def __init__(self, name: str, max_waiting: int, parallel: int = 1):
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.name = name
        self.max_waiting = max_waiting
        self.parallel = parallel
        self._lock = asyncio.Semaphore(parallel)
        self._admitted = 0  # holding the model + waiting for it
        self._mean_hold_s = 1.0  # running mean of how long a request holds the model

    @property
    def admitted(self) -> int:
        return self._admitted

    def retry_after_s(self) -> int:
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(self._mean_hold_s * self._admitted / self.parallel)))

    async def acquire(self) -> Slot:
        """Wait for the model (FIFO); a 429 APIError when the queue is full."""
        if self._admitted >= self.parallel + self.max_waiting:
            wait = self.retry_after_s()
            raise APIError(
                429,
                f"model {self.name!r} is busy: {self._admitted} requests are running or queued "
                f"(at most {self.parallel} + {self.max_waiting}); retry after {wait} s",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            )
        self._admitted += 1
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting
            self._admitted -= 1
            raise
        return Slot(self)

    def _release(self, held_s: float) -> None:
        self._admitted -= 1
        self._mean_hold_s = 0.7 * self._mean_hold_s + 0.3 * held_s
        self._lock.release()


class Slot:
    """The right to run the model; ``release()`` (on the event loop thread) is idempotent."""

    def __init__(self, queue: ModelQueue):
        self._queue = queue
        self._start = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release(time.monotonic() - self._start)


class StreamRun:
    """Iterate ``make_iter()`` in its own thread; ``await next()`` for each item."""

    def __init__(self, slot: Slot, make_iter: Callable[[], Iterator[Any]]):
        self._slot = slot
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(make_iter,), name="lab-serve-stream", daemon=True).start()

    def _send(self, callback: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
            pass

    def _run(self, make_iter: Callable[[], Iterator[Any]]) -> None:
        iterator = None
        try:
            iterator = make_iter()
            for item in iterator:
                self._send(self._items.put_nowait, ("item", item))
                if self._stop.is_set():
                    break
        except BaseException as exc:  # handed to the event loop, which maps it to an HTTP error
            self._send(self._items.put_nowait, ("error", exc))
        finally:
            try:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # stops generation when the client left early
            except Exception:
                log.exception("closing a model stream failed")
            self._send(self._items.put_nowait, ("end", None))
            self._send(self._slot.release)

    async def next(self) -> Any:
        """The next item; StopAsyncIteration at the end; the generator's exception if it raised."""
        kind, value = await self._items.get()
        if kind == "error":
            raise value
        if kind == "end":
            self._items.put_nowait(("end", None))  # stay at the end for later calls
            raise StopAsyncIteration
        return value

    def stop(self) -> None:
        self._stop.set()
