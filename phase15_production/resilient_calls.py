"""Calls that survive a flaky provider: retry, circuit breaker, provider fallback, idempotent effects.

Four layers, each a maintained library where one exists, composed in this order per call::

    ResilientLLM.chat ─▶ for each provider in the chain (e.g. anthropic → openai-compatible → local):
                           RetryPolicy (tenacity) ─▶ Breaker (pybreaker) ─▶ provider.chat (ONE attempt)
                         first provider that answers serves the call; the next one is tried when a
                         provider's retries are spent or its breaker is open
    IdempotentEffects.run_once(key, effect) ─▶ the effect runs at most once per key (PostgreSQL row)

- ``RetryPolicy``: jittered exponential backoff; a server's ``Retry-After`` wins over the backoff;
  only transient errors are retried (408/429/500/502/503/504/529, timeouts, connection resets,
  truncated replies). A 400 is the caller's bug: retrying it only repeats it.
- ``Breaker``: after ``fail_max`` transient failures in a row the provider is skipped without a
  request (open) for ``reset_timeout_s``; then one trial call (half-open) closes it again or re-opens
  it. Every transition is counted.
- Retries are layered once: ``lab.llm``'s hosted clients retry on their own (``max_attempts``, see
  ``lab/llm/hosted.py``); ResilientLLM builds its providers with ``max_attempts=1`` and refuses a
  hosted client that still retries, so a call is never retried 3 × 4 times by two loops unaware of
  each other, and the breaker sees every failed attempt.
- The chain offers what its primary offers: with a local primary, ``scores_choices`` stays True and a
  judge keeps reading choice probabilities; ``choice_probs`` falls back only to providers that score
  choices too (a hosted fallback cannot), so adding fallbacks never changes how a judge scores.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from lab.db import connect, database_url
from lab.llm import from_spec
from lab.llm.anthropic_client import AnthropicLLM
from lab.llm.base import LLM, ChatResponse, LLMError
from lab.llm.hosted import HostedLLM
from lab.llm.openai_client import OpenAILLM
from lab.llm.wrapper import LLMWrapper
from lab.migrations import Migration, Schema, migrate
from phase15_production.state import check_table

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
CALLER_FAULT_STATUSES = frozenset({400, 422})  # the same request fails at every provider: never fall back
# Timeouts, connection resets and cut-off bodies, by class name so no SDK is imported to check them:
# openai/anthropic APIConnectionError (APITimeoutError is one), httpx TransportError and its
# subclasses (ReadTimeout, RemoteProtocolError...), a reply body that is not JSON because it was cut.
TRANSIENT_CLASS_NAMES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "TransportError",
        "TimeoutException",
        "RemoteProtocolError",
        "JSONDecodeError",
        "TruncatedReplyError",
    }
)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and what caused it (``raise ... from``), outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error (LLMError.status, an SDK's status_code), if any."""
    for e in _chain(exc):
        for attr in ("status", "status_code"):
            value = getattr(e, attr, None)
            if isinstance(value, int):
                return value
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a transient HTTP status, a timeout, a dropped connection, a truncated reply."""
    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES
    return any(
        isinstance(e, (TimeoutError, ConnectionError)) or TRANSIENT_CLASS_NAMES & {c.__name__ for c in type(e).__mro__}
        for e in _chain(exc)
    )


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds from a ``Retry-After`` header on the HTTP response behind ``exc`` (None: absent or a date)."""
    for e in _chain(exc):
        headers = getattr(getattr(e, "response", None), "headers", None)
        if headers is not None and headers.get("retry-after") is not None:
            try:
                return max(0.0, float(headers.get("retry-after")))
            except ValueError:
                return None
    return None


@dataclass
class RetryPolicy:
    """Retry transient failures with full-jitter exponential backoff (tenacity); Retry-After wins.

    ``max_attempts`` counts the first try. ``sleep`` is how the policy waits (tests pass a recorder).
    """

    max_attempts: int = 4
    base_wait_s: float = 0.25
    max_wait_s: float = 4.0
    max_retry_after_s: float = 30.0  # a server asking for longer is not waited for longer than this
    sleep: Callable[[float], None] = time.sleep

    def wait_s(self, retry_state) -> float:

        after = retry_after_s(retry_state.outcome.exception())
        if after is not None:
            return min(after, self.max_retry_after_s)
        return wait_random_exponential(multiplier=self.base_wait_s, max=self.max_wait_s)(retry_state)

    def call(self, fn: Callable[[], T], on_retry: Callable[[BaseException, float], None] | None = None) -> T:
        """``fn()``, retried; ``on_retry(error, wait_s)`` is told before each wait. The last error is raised."""

        def before_sleep(state) -> None:
            if on_retry:
                on_retry(state.outcome.exception(), state.next_action.sleep)

        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait_s,
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )(fn)


class Breaker:
    """A pybreaker circuit breaker that counts only transient failures and every state transition.

    ``state``: "closed" | "open" | "half-open"; ``transitions``: Counter of "old->new". A call while
    open raises ``pybreaker.CircuitBreakerError`` without calling (not transient: not retried).
    """

    def __init__(self, name: str, fail_max: int = 3, reset_timeout_s: float = 10.0):
        import pybreaker  # noqa: PLC0415 (pybreaker loads only on the path that uses it)

        breaker = self
        self.transitions: Counter[str] = Counter()
        self._lock = threading.Lock()

        class Listener(pybreaker.CircuitBreakerListener):
            def state_change(self, cb, old_state, new_state) -> None:
                with breaker._lock:
                    breaker.transitions[f"{old_state.name if old_state else 'new'}->{new_state.name}"] += 1

        # throw_new_error_on_trip=False: the call that trips it raises its own (transient) error, so
        # the retry policy retries and finds the breaker open; excluded errors don't count as failures
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            name=name,
            exclude=[lambda e: not is_transient(e)],
            listeners=[Listener()],
            throw_new_error_on_trip=False,
        )

    @property
    def state(self) -> str:
        return self._cb.current_state

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._cb.call(fn, *args, **kwargs)

    @property
    def n_transitions(self) -> int:
        return sum(self.transitions.values())


# --- the fallback chain ------------------------------------------------------------------------
def client_for(spec: str, timeout_s: float = 60.0) -> LLM:
    """A ``lab.llm`` client for ``spec`` with its own retries OFF (ResilientLLM retries, once)."""
    provider, _, rest = spec.partition(":")
    model, _, base_url = rest.partition("@")
    if provider == "openai":
        return OpenAILLM(model, base_url=base_url or None, max_attempts=1, timeout_s=timeout_s)
    if provider == "anthropic":
        return AnthropicLLM(model, base_url=base_url or None, max_attempts=1, timeout_s=timeout_s)

    return from_spec(spec)  # local models have no retry loop of their own


@dataclass
class CallRecord:
    """One ResilientLLM call (chat or choice_probs): who served it (None: nobody), after how many retries
    and fallbacks."""

    served_by: str | None
    provider_index: int | None  # 0 = the primary; > 0 = a fallback
    retries: int
    latency_s: float
    errors: list[str] = field(default_factory=list)  # one line per provider that failed this call


class ResilientLLM(LLMWrapper):
    """A ``lab.llm.LLM`` drop-in over an ordered chain of providers, each behind retry + breaker.

    ``chain``: specs (built with ``client_for``: retries off) or LLM objects (a hosted one must have
    ``max_attempts=1``). ``records``/``served()`` say which provider served each call.
    ``fail_max=None`` puts no breaker in front of the providers (a client with retries only).

    It is an ``LLMWrapper`` whose ``inner`` is the primary (``clients[0]``): what the chain offers is what
    the primary offers — ``scores_choices``, ``parallel_requests``, ``count_tokens`` are the primary's, so
    adding fallbacks never changes how a caller uses the model (a judge on a local primary reads choice
    probabilities with or without ``--fallback``). The calls go through the chain:

    - ``chat``: the first provider that answers serves it;
    - ``stream``: one resilient ``chat``, its text yielded at once (``LLM.stream``'s default): a stream
      half-delivered by one provider cannot be resumed by another;
    - ``choice_probs``: the first provider *that scores choices* serves it; a fallback that cannot
      (a hosted model) is skipped, named in the error if no one could serve it. Scores never come
      from a different method than the one the caller chose;
    - ``prepare``: nothing ahead of the call — which provider serves is decided per call (a prompt
      too long for the primary may fit a fallback), so ``chat`` runs each provider's checks.
    """

    provider = "resilient"

    def __init__(
        self,
        chain: Sequence[LLM | str],
        policy: RetryPolicy | None = None,
        fail_max: int | None = 3,
        reset_timeout_s: float = 10.0,
        timeout_s: float = 60.0,
        keep_records: int = 10_000,
    ):

        if not chain:
            raise ValueError("ResilientLLM needs at least one provider")
        clients = [client_for(c, timeout_s) if isinstance(c, str) else c for c in chain]
        for c in clients:
            if isinstance(c, HostedLLM) and c.max_attempts > 1:
                raise ValueError(
                    f"{c.spec} retries on its own (max_attempts={c.max_attempts}): pass its spec string, "
                    "or build it with max_attempts=1, so retries are not multiplied"
                )
        super().__init__(clients[0])
        self.model = " > ".join(c.spec for c in clients)
        self.clients = clients
        self.breakers = [Breaker(c.spec, fail_max, reset_timeout_s) for c in clients] if fail_max else []
        self.policy = policy or RetryPolicy()
        self.records: deque[CallRecord] = deque(maxlen=keep_records)  # the latest calls: a server runs for weeks
        self._lock = threading.Lock()

    @property
    def spec(self) -> str:
        return f"resilient:{self.model}"

    def chat(
        self,
        messages,
        system=None,
        tools=None,
        max_tokens=512,
        temperature=0.0,
        json_schema=None,
        tool_choice="auto",
        parallel_tool_calls=True,
        stop=None,
    ) -> ChatResponse:
        kwargs = dict(
            system=system,
            tools=tools,
            max_tokens=max_tokens,
            temperature=temperature,
            json_schema=json_schema,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            stop=stop,
        )
        return self._through_chain(lambda client: client.chat(messages, **kwargs))

    def stream(self, messages, **kwargs) -> Iterator[str | ChatResponse]:
        return LLM.stream(self, messages, **kwargs)  # one resilient chat (see the class doc)

    def prepare(self, messages, *, timeout_s=None, **kwargs) -> None:
        """Nothing ahead of the call: the provider that serves it is chosen then (see the class doc)."""

    def choice_probs(self, messages, choices, system=None, prefix="", **kwargs) -> dict[str, float]:
        if not self.scores_choices:  # the primary cannot: the caller should have asked with chat
            return LLM.choice_probs(self, messages, choices, system=system, prefix=prefix, **kwargs)
        return self._through_chain(
            lambda client: client.choice_probs(messages, choices, system=system, prefix=prefix, **kwargs),
            skip=lambda client: None if client.scores_choices else "cannot score choices (scores_choices is False)",
        )

    def _through_chain(self, call: Callable[[LLM], T], skip: Callable[[LLM], str | None] = lambda client: None) -> T:
        """``call(client)`` on each provider in turn, behind its retries and breaker, until one answers;
        a provider ``skip`` names a reason for is not asked. Every provider failing is an LLMError."""
        start, retries, errors = time.perf_counter(), [0], []

        def count(_exc, _wait) -> None:
            retries[0] += 1

        for i, client in enumerate(self.clients):
            reason = skip(client)
            if reason:
                errors.append(f"{client.spec}: {reason}")
                continue
            guarded = self.breakers[i].call if self.breakers else (lambda fn, *a, **k: fn(*a, **k))
            try:
                result = self.policy.call(partial(guarded, call, client), on_retry=count)
            except Exception as exc:
                if http_status(exc) in CALLER_FAULT_STATUSES:
                    raise  # a bad request is bad everywhere: falling back would only hide it
                errors.append(f"{client.spec}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            self._record(CallRecord(client.spec, i, retries[0], time.perf_counter() - start, errors))
            return result
        self._record(CallRecord(None, None, retries[0], time.perf_counter() - start, errors))
        raise LLMError("every provider failed: " + "; ".join(errors))

    def _record(self, record: CallRecord) -> None:
        with self._lock:
            self.records.append(record)

    def served(self) -> Counter[str]:
        """Calls served per provider spec ("none" for calls every provider failed)."""
        with self._lock:
            return Counter(r.served_by or "none" for r in self.records)

    def describe(self) -> dict[str, Any]:
        return {"id": self.spec, "chain": [c.spec for c in self.clients]}


# --- side effects that run at most once --------------------------------------------------------
class EffectInProgress(Exception):
    """Another caller holds the key's claim and has not finished within the wait (or it crashed)."""


def effects_schema(table: str):
    """An effects table's migrations (``lab.migrations``): versions in ``p15_schema_migrations``, one owner
    per table (the table is the caller's choice; throwaway runs drop theirs). Version 1 is the table as
    the code before migrations created it."""

    return Schema(
        "p15",
        f"phase15.effects.{table}",
        tables=(table,),
        migrations=(
            Migration(
                1,
                "idempotency keys and results",
                (
                    (
                        f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
                        "result JSONB, claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(), done_at TIMESTAMPTZ)"
                    ),
                ),
            ),
        ),
    )


class IdempotentEffects:
    """Side effects (publish, send, write) keyed by an idempotency key in a PostgreSQL table.

    ``run_once(key, effect)`` claims the key by inserting its row (a committed claim, before the
    effect runs), runs ``effect()``, then stores its JSON result. A second caller with the same key —
    a retry, a redelivered job, a concurrent duplicate — never runs the effect: it waits for the
    owner and returns the stored result. If the effect raises, its claim is released so a later
    retry may run it; if the process dies mid-effect, the claim stays "running" and callers get
    ``EffectInProgress`` rather than a second effect (at most once, not exactly once: reconcile those
    by hand). Works on CockroachDB too (same SQL).
    """

    def __init__(
        self, url: str | None = None, table: str = "idempotent_effects", wait_s: float = 60.0, poll_s: float = 0.02
    ):

        self.url, self.table = url or database_url(), check_table(table)
        self.wait_s, self.poll_s = wait_s, poll_s
        self.executed = 0  # effects this object ran
        self.deduplicated = 0  # calls answered from a stored result instead of running the effect
        self._lock = threading.Lock()
        migrate(self.url, effects_schema(table))

    def run_once(self, key: str, effect: Callable[[], Any]) -> Any:
        """The effect's result; the effect itself runs at most once per ``key`` (result must be JSON)."""
        from psycopg.types.json import Jsonb  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        deadline = time.monotonic() + self.wait_s
        with connect(self.url, autocommit=True) as conn:
            while True:
                claimed = conn.execute(
                    f"INSERT INTO {self.table} (key, status) VALUES (%s, 'running') "
                    "ON CONFLICT (key) DO NOTHING RETURNING key",
                    (key,),
                ).fetchone()
                if claimed:
                    try:
                        result = effect()
                        json.dumps(result)  # fail before marking done if it cannot be stored
                    except BaseException:
                        conn.execute(f"DELETE FROM {self.table} WHERE key = %s AND status = 'running'", (key,))
                        raise
                    conn.execute(
                        f"UPDATE {self.table} SET status = 'done', result = %s, done_at = now() WHERE key = %s",
                        (Jsonb(result), key),
                    )
                    with self._lock:
                        self.executed += 1
                    return result
                row = conn.execute(f"SELECT status, result FROM {self.table} WHERE key = %s", (key,)).fetchone()
                if row and row[0] == "done":
                    with self._lock:
                        self.deduplicated += 1
                    return row[1]
                if time.monotonic() > deadline:
                    raise EffectInProgress(
                        f"effect {key!r} is claimed by another caller and not done after "
                        f"{self.wait_s:g} s (still running, or its process died)"
                    )
                time.sleep(self.poll_s)  # running elsewhere (or released: the next INSERT claims it)
