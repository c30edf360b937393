"""What the two hosted providers share: API key lookup, bounded retries, errors that say where.

The SDKs' own retry loops are switched off (``max_retries=0``) so that both providers retry the
same way, with tenacity: 408/409/429/5xx (529 is Anthropic's "overloaded") and connection errors,
``max_attempts`` tries in all, exponential waits from ``retry_wait_s`` (a server's Retry-After
header wins, capped at 30 s). Anything else, or the last failure, becomes an LLMError naming the
provider, model, server and HTTP status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt

from lab.errors import MissingResource
from lab.llm.base import LLM, LLMError
from lab.models import EMBEDDED_LLM

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
MAX_RETRY_AFTER_S = 30.0


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        return min(float(headers.get("retry-after")), MAX_RETRY_AFTER_S) if headers else None
    except (TypeError, ValueError):  # absent, or an HTTP date: use the exponential wait
        return None


class HostedLLM(LLM):
    """A model behind an HTTP API reached with its official SDK (``self._client``, set by each provider)."""

    key_env: str = ""
    connection_errors: tuple[type[BaseException], ...] = ()  # set by each provider from its SDK
    _client: Any  # the SDK client, set by each provider

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_attempts: int = 3,
        retry_wait_s: float = 1.0,
        timeout_s: float = 120.0,
    ):
        super().__init__(model)
        self.base_url = base_url
        self.api_key = api_key or os.environ.get(self.key_env) or None
        self.max_attempts = max_attempts
        self.retry_wait_s = retry_wait_s
        self.timeout_s = timeout_s

    def _require_key(self) -> str:
        if not self.api_key:
            raise MissingResource(
                f"{self.spec}: {self.key_env} is not set; export it, or use --llm {EMBEDDED_LLM.spec}"
            )
        return self.api_key

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self.connection_errors) or _status(exc) in RETRY_STATUSES

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception()
        after = _retry_after(exc) if exc is not None else None
        if after is not None:
            return after
        return min(self.retry_wait_s * 2 ** (retry_state.attempt_number - 1), MAX_RETRY_AFTER_S)

    def _send(self, call: Callable[[], T]) -> tuple[T, float]:
        """Run one SDK call with retries; returns (reply, seconds the successful attempt took)."""

        def timed() -> tuple[T, float]:
            start = time.perf_counter()
            reply = call()
            return reply, time.perf_counter() - start

        retrying = Retrying(
            retry=retry_if_exception(self._transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            reraise=True,
        )
        try:
            return retrying(timed)
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc

    def _error(self, exc: BaseException) -> LLMError:
        status = _status(exc)
        where = self.base_url or str(self._client.base_url)  # the SDK's default or its *_BASE_URL env
        what = f"HTTP {status}" if status is not None else type(exc).__name__
        tries = f" after {self.max_attempts} attempts" if self._transient(exc) else ""
        detail = getattr(exc, "message", None) or str(exc)
        return LLMError(f"{self.provider}:{self.model} at {where}: {what}{tries}: {detail}", status=status)

    @property
    def spec(self) -> str:
        """The spec that rebuilds this client: ``provider:model`` plus ``@base_url`` when set."""
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")
