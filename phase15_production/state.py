"""Shared state that several agents update at once: the retry contract and four counter strategies.

Agents that read a value, think, and write it back lose each other's updates unless the database
is told what the read-modify-write means. This module holds:

- ``run_transaction(connect, work)``: run ``work(conn)`` in ONE transaction and, when the database
  aborts it with SQLSTATE 40001 (serialization failure) or 40P01 (deadlock), run it again from the
  start after a jittered exponential backoff (tenacity). This is CockroachDB's client contract
  (every transaction there is SERIALIZABLE and may be asked to retry), and PostgreSQL raises the
  same codes at SERIALIZABLE, so the same code runs on both (``LAB_DATABASE_URL`` / ``LAB_CRDB_URL``).
- ``increment(conn, strategy, ...)``: one read-modify-write of a counter row by each strategy the
  ``phase15.contention`` exercise measures:

  ``naive``        read, then write the value read + 1 (two autocommit statements): lost updates;
  ``for_update``   ``SELECT ... FOR UPDATE`` inside a transaction: writers queue on the row lock;
  ``optimistic``   read value + version, ``UPDATE ... WHERE version = <read>``; 0 rows = someone
                   else won, read again (no locks held while "thinking");
  ``serializable`` plain read + write in a SERIALIZABLE transaction, retried on 40001.

Each returns how many times it had to start over, so the cost of correctness is measured too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

STRATEGIES = ("naive", "for_update", "optimistic", "serializable")
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
ISOLATION_LEVELS = ("serializable", "repeatable read", "read committed")
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass
class TxOutcome:
    value: Any  # what ``work`` returned on the attempt that committed
    retries: int  # attempts that were aborted with a retryable SQLSTATE and run again


class VersionConflict(Exception):
    """An optimistic write found the row's version changed since it was read: read again and retry."""


def is_retryable(exc: BaseException) -> bool:
    """True for the database's "run this transaction again" errors (40001, 40P01)."""
    return getattr(exc, "sqlstate", None) in RETRY_SQLSTATES


def _retrying(
    is_retryable_exc: Callable[[BaseException], bool], max_retries: int, base_s: float, max_s: float, counter: list[int]
):
    """A tenacity loop: full-jitter exponential waits, at most ``max_retries`` retries, then re-raise."""

    def count(_state) -> None:
        counter[0] += 1

    return Retrying(
        retry=retry_if_exception(is_retryable_exc),
        stop=stop_after_attempt(max_retries + 1),
        wait=wait_random_exponential(multiplier=base_s, max=max_s),
        before_sleep=count,
        reraise=True,
    )


def run_transaction(
    connect,
    work: Callable[[Any], Any],
    *,
    isolation: str = "serializable",
    max_retries: int = 100,
    backoff_s: float = 0.001,
    max_backoff_s: float = 0.1,
) -> TxOutcome:
    """Run ``work(conn)`` inside one transaction at ``isolation``; retry the whole of it on 40001/40P01.

    ``connect``: a zero-argument callable returning a psycopg connection (opened once, closed at the
    end) or an open connection that is not inside a transaction. ``work`` must be safe to run again:
    everything it did in an aborted attempt was rolled back, but anything outside the database (a
    message sent, a model called) was not — keep side effects out, or make them idempotent
    (``phase15_production.resilient_calls.IdempotentEffects``). After ``max_retries`` retries the last
    error is raised.
    """
    if isolation not in ISOLATION_LEVELS:
        raise ValueError(f"isolation {isolation!r}: expected one of {', '.join(ISOLATION_LEVELS)}")
    own = callable(connect)
    conn = connect() if own else connect
    retries = [0]
    try:
        from psycopg import pq  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise ValueError(
                "run_transaction needs a connection outside any transaction "
                "(open it with autocommit=True, or commit first)"
            )

        def attempt():
            with conn.transaction():
                conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation.upper()}")
                return work(conn)

        value = _retrying(is_retryable, max_retries, backoff_s, max_backoff_s, retries)(attempt)
        return TxOutcome(value, retries[0])
    finally:
        if own:
            conn.close()


# --- the counter the contention exercise fights over --------------------------------------------
def check_table(table: str) -> str:
    if not _TABLE.fullmatch(table):
        raise ValueError(f"table name {table!r} must match [a-z_][a-z0-9_]*")
    return table


def create_counters(conn, table: str, names: list[str]) -> None:
    """(Re)create ``table`` with one row per counter name at value 0, version 0 (autocommit conn)."""
    check_table(table)
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (name TEXT PRIMARY KEY, value BIGINT NOT NULL, version BIGINT NOT NULL)")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (name, value, version) VALUES (%s, 0, 0)", [(n,) for n in names])


def read_counter(conn, table: str, name: str) -> int:
    row = conn.execute(f"SELECT value FROM {check_table(table)} WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise KeyError(f"counter {name!r} not in table {table!r}")
    return int(row[0])


def increment(conn, strategy: str, table: str, name: str, delta: int = 1, *, max_retries: int = 1000) -> int:
    """One read-modify-write of counter ``name`` by ``strategy``; returns the retries it took.

    ``conn`` is an autocommit connection owned by the caller (one per agent).
    """
    check_table(table)
    select = f"SELECT value, version FROM {table} WHERE name = %s"
    if strategy == "naive":  # the bug: another agent's write between these two statements is lost
        value, _ = conn.execute(select, (name,)).fetchone()
        conn.execute(f"UPDATE {table} SET value = %s WHERE name = %s", (value + delta, name))
        return 0
    if strategy == "for_update":  # the row lock is held from the read to the commit

        def locked(c):
            value, _ = c.execute(select + " FOR UPDATE", (name,)).fetchone()
            c.execute(f"UPDATE {table} SET value = %s WHERE name = %s", (value + delta, name))

        return run_transaction(conn, locked, isolation="read committed", max_retries=max_retries).retries
    if strategy == "optimistic":  # no lock while thinking; the write checks nobody wrote in between
        retries = [0]

        def compare_and_set():
            value, version = conn.execute(select, (name,)).fetchone()
            cur = conn.execute(
                f"UPDATE {table} SET value = %s, version = version + 1 WHERE name = %s AND version = %s",
                (value + delta, name, version),
            )
            if cur.rowcount != 1:
                raise VersionConflict(f"{table}.{name} changed since version {version}")

        _retrying(lambda e: isinstance(e, VersionConflict), max_retries, 0.001, 0.1, retries)(compare_and_set)
        return retries[0]
    if strategy == "serializable":  # the database detects the conflict and aborts one side (40001)

        def read_write(c):
            value, _ = c.execute(select, (name,)).fetchone()
            c.execute(f"UPDATE {table} SET value = %s WHERE name = %s", (value + delta, name))

        return run_transaction(conn, read_write, isolation="serializable", max_retries=max_retries).retries
    raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
