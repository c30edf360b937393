"""Versioned schema migrations: each owner of tables keeps an ordered list; a version table records them.

The pattern of the checkpoint savers (LangGraph's ``PostgresSaver`` keeps a ``MIGRATIONS`` list and a
``checkpoint_migrations(v)`` table), with three things added: every migration runs in one transaction
together with the row that records it, two processes starting at once apply a version once, and a
database made before migrations existed is adopted rather than recreated.

    SCHEMA = Schema("p13", "phase13.agent_state", tables=("p13_agent_runs", "p13_agent_steps"), migrations=(
        Migration(1, "runs and steps", ("CREATE TABLE IF NOT EXISTS p13_agent_runs (...)", ...)),
        Migration(2, "a column", ("ALTER TABLE p13_agent_runs ADD COLUMN IF NOT EXISTS tag TEXT",)),
    ))
    migrate(url, SCHEMA)        # at every start: applies what is missing, else only reads

- **The version table.** One per namespace (the owner's table prefix): ``<namespace>_schema_migrations``
  with a row ``(owner, version, name, applied_at)`` per applied migration; several owners may share a
  namespace (``p16``: the engine's default namespace and the corpus registry).
- **Version 1 is the schema the code created before migrations**, written with ``IF NOT EXISTS`` as it
  was, so on a database made by that code it changes nothing (or adds what an older copy lacked) and is
  recorded: the database is adopted, its rows kept. Later versions append; they need not be idempotent.
- **One transaction per migration**: its statements first, then the INSERT of its version row, then
  COMMIT. A statement that fails rolls back the whole migration: the recorded version is unchanged and
  the next start tries again. (The version row goes last because CockroachDB refuses a schema change
  after a write in the same transaction.)
- **Concurrent starters: a portable conflict on commit, not a lock.** ``(owner, version)`` is the version
  table's primary key, so of two processes running the same migration exactly one commits; the other's
  transaction fails (its version-row INSERT on the key, or earlier on an object the winner created) and
  rolls back whole; the runner then reads the versions again, finds the migration recorded and moves
  on. SQLSTATE 40001/40P01 are retried. Why not an advisory lock: ``pg_advisory_xact_lock`` is
  PostgreSQL's own (CockroachDB does not take it), and claiming the version row *before* the DDL, which
  would make the loser wait instead of retry, is refused by CockroachDB (no schema change after a write
  in the same transaction). The price: a losing starter may execute a migration's statements once and
  roll them back, so a migration must not have effects outside the database (``apply`` callables too).
- **CockroachDB**: the runner turns ``autocommit_before_ddl`` off on its own connection (on by default
  from v25.1, it would commit the migration's transaction before each DDL statement) and refuses to
  record a version if the server ended the transaction anyway. CockroachDB runs a transaction's schema
  changes after its commit; if one fails then (SQLSTATE XXA00) the version row that did commit is
  deleted again, so the version stays unchanged. Since CockroachDB does not make several schema changes
  in one transaction fully atomic, write migrations with ``IF [NOT] EXISTS`` where you can: a retry then
  converges.
- **Tables dropped outside the runner.** ``Schema.tables`` names the owner's tables at the latest
  version. When versions are recorded but none of them exists (a test or a throwaway run dropped the
  tables and left the version rows), the stale rows are deleted and the migrations run from version 1;
  when only some are missing, ``MigrationError`` names them rather than guess.

Every statement the runner itself issues is plain SQL that PostgreSQL and CockroachDB both accept
(``CREATE TABLE IF NOT EXISTS``, ``INSERT``, ``DELETE``, ``information_schema``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.db import connect

log = logging.getLogger(__name__)

_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
MAX_IDENT = 63  # PostgreSQL truncates longer names (NAMEDATALEN - 1)
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock: run it again
SCHEMA_CHANGE_FAILED_AFTER_COMMIT = "XXA00"  # CockroachDB: the DML committed, a schema change did not
RETRIES = 20


class MigrationError(Exception):
    """A migration failed (the recorded version is unchanged), or the database is not what the versions say."""


@dataclass(frozen=True)
class Migration:
    """One version: ``statements`` run in order, then ``apply(conn)`` if given, in one transaction.

    ``apply`` is for what SQL text cannot say (a data rewrite computed in Python); it receives the
    runner's connection inside the transaction and must only touch the database (a losing concurrent
    starter's run is rolled back, not undone elsewhere). On CockroachDB put DDL before any write."""

    version: int
    name: str
    statements: tuple[str, ...] = ()
    apply: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Schema:
    """An owner's tables and its migrations, in version order 1, 2, 3 ..."""

    namespace: str  # the owner's table prefix: the version table is <namespace>_schema_migrations
    owner: str  # who the versions belong to (several owners may share a namespace)
    migrations: tuple[Migration, ...]
    tables: tuple[str, ...] = ()  # the owner's tables at the latest version (the dropped-tables check)

    def __post_init__(self):
        check_identifier(version_table(self.namespace))
        for t in self.tables:
            check_identifier(t)
        if not self.owner:
            raise ValueError("a Schema needs an owner name")
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.owner}: migration versions must be 1, 2, 3 ... in order, got {versions}")
        if not all(m.name for m in self.migrations):
            raise ValueError(f"{self.owner}: every migration needs a name")

    @property
    def latest(self) -> int:
        return len(self.migrations)


@dataclass
class Outcome:
    """What ``migrate`` found and did."""

    owner: str
    version: int  # the recorded version now
    applied: list[int]  # versions this call applied (the rest were there, or a concurrent starter's)
    adopted: bool = False  # nothing was recorded but the owner's tables existed: made before migrations
    reset: bool = False  # versions were recorded but every table was gone: they ran again from 1


def check_identifier(name: str) -> str:
    if not _IDENT.fullmatch(name) or len(name) > MAX_IDENT:
        raise ValueError(f"identifier {name!r} must match [a-z_][a-z0-9_]* and have at most {MAX_IDENT} characters")
    return name


def version_table(namespace: str) -> str:
    return check_identifier(f"{namespace}_schema_migrations")


# --- reading and forgetting versions (a connection in autocommit mode) -------------------------------
def _cursor(conn):
    from psycopg.rows import tuple_row  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    return conn.cursor(row_factory=tuple_row)  # whatever row factory the caller's connection has


def _table_exists(conn, table: str) -> bool:
    return bool(_existing(conn, [table]))


def _existing(conn, tables: Sequence[str]) -> set[str]:
    if not tables:
        return set()
    with _cursor(conn) as cur:
        rows = cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_name = ANY(%s)",
            (list(tables),),
        ).fetchall()
    return {r[0] for r in rows}


def recorded(conn, namespace: str, owner: str) -> list[tuple[int, str, Any]]:
    """The owner's applied migrations as ``(version, name, applied_at)``, in version order."""
    table = version_table(namespace)
    if not _table_exists(conn, table):
        return []
    with _cursor(conn) as cur:
        return cur.execute(
            f"SELECT version, name, applied_at FROM {table} WHERE owner = %s ORDER BY version", (owner,)
        ).fetchall()


def forget(conn, namespace: str, owner: str) -> None:
    """Delete the owner's version rows (call it when the owner's tables are dropped), and the version
    table itself once no owner is left in it."""
    table = version_table(namespace)
    if not _table_exists(conn, table):
        return
    with _cursor(conn) as cur:
        cur.execute(f"DELETE FROM {table} WHERE owner = %s", (owner,))
        if cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0:
            cur.execute(f"DROP TABLE IF EXISTS {table}")


# --- the runner ----------------------------------------------------------------------------------------
def migrate(url: str, schema: Schema) -> Outcome:
    """Bring ``schema``'s owner to its latest version on the database at ``url`` (own connection)."""

    with connect(url, autocommit=True) as conn:
        _prepare_session(conn)
        _ensure_version_table(conn, schema.namespace)
        return _migrate(conn, schema)


def _prepare_session(conn) -> None:
    with _cursor(conn) as cur:
        server = cur.execute("SELECT version()").fetchone()[0]
        if "CockroachDB" in server:
            try:  # v25.1+ commits an explicit transaction before each DDL statement unless told not to
                cur.execute("SET autocommit_before_ddl = off")
            except Exception as exc:  # noqa: BLE001  older servers lack the variable: they never did that
                log.debug("autocommit_before_ddl not settable: %s", exc)


def _ensure_version_table(conn, namespace: str) -> None:
    """Create the version table; two starters creating it at once may collide on PostgreSQL's catalog
    (a unique violation instead of IF NOT EXISTS): the loser tries again and finds it there."""
    import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    table = version_table(namespace)
    for attempt in range(RETRIES):
        if _table_exists(conn, table):
            return
        try:
            with _cursor(conn) as cur:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (owner TEXT NOT NULL, version INT NOT NULL, "
                    f"name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
                    f"PRIMARY KEY (owner, version))"
                )
            return
        except (
            psycopg.errors.UniqueViolation,
            psycopg.errors.DuplicateTable,
            psycopg.errors.DuplicateObject,
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
        ):
            time.sleep(0.05 * (attempt + 1))
    raise MigrationError(f"could not create {table} after {RETRIES} tries")


def _migrate(conn, schema: Schema) -> Outcome:
    rows = recorded(conn, schema.namespace, schema.owner)
    versions = [r[0] for r in rows]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(
            f"{schema.owner}: recorded versions {versions} in {version_table(schema.namespace)} "
            f"have a gap; repair the table by hand"
        )
    present = _existing(conn, schema.tables)
    outcome = Outcome(schema.owner, len(versions), [])
    if versions and schema.tables and not present:
        log.warning(
            "%s: versions %s recorded in %s but none of its tables exists (dropped outside the migrations):"
            " running them again from version 1",
            schema.owner,
            versions,
            version_table(schema.namespace),
        )
        with _cursor(conn) as cur:  # only the rows read above: a concurrent starter's fresh rows are newer
            cur.execute(
                f"DELETE FROM {version_table(schema.namespace)} WHERE owner = %s AND applied_at <= %s",
                (schema.owner, max(r[2] for r in rows)),
            )
        versions, outcome.reset = [], True
    adopting = not versions and bool(present)  # made before migrations (or by a starter racing this one)
    if len(versions) > schema.latest:
        log.warning(
            "%s: the database is at version %d, this code knows %d (newer code migrated it)",
            schema.owner,
            len(versions),
            schema.latest,
        )
    for migration in schema.migrations[len(versions) :]:
        if _apply(conn, schema, migration):
            outcome.applied.append(migration.version)
    outcome.adopted = adopting and 1 in outcome.applied
    if outcome.applied or len(versions) < schema.latest:  # something changed here or by a concurrent starter
        outcome.version = len(recorded(conn, schema.namespace, schema.owner))
        present = _existing(conn, schema.tables)
    missing = sorted(set(schema.tables) - present)
    if missing:
        raise MigrationError(
            f"{schema.owner} is at version {outcome.version} but its tables {', '.join(missing)} "
            f"are missing (dropped outside the migrations?): recreate them, or drop the rest "
            f"and call lab.migrations.forget"
        )
    return outcome


def _is_recorded(conn, table: str, owner: str, version: int) -> bool:
    with _cursor(conn) as cur:
        return (
            cur.execute(f"SELECT 1 FROM {table} WHERE owner = %s AND version = %s", (owner, version)).fetchone()
            is not None
        )


def _apply(conn, schema: Schema, migration: Migration) -> bool:
    """Run one migration and record it, in one transaction. False when a concurrent starter did."""
    import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)
    from psycopg import pq  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    table = version_table(schema.namespace)
    label = f"{schema.owner} migration {migration.version} ({migration.name})"
    for attempt in range(RETRIES):
        if _is_recorded(conn, table, schema.owner, migration.version):
            return False
        try:
            with conn.transaction(), _cursor(conn) as cur:
                for statement in migration.statements:
                    cur.execute(statement)
                if migration.apply is not None:
                    migration.apply(conn)
                if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
                    raise MigrationError(
                        f"{label}: the server ended the transaction before the version was "
                        f"recorded (CockroachDB's autocommit_before_ddl?); not recorded"
                    )
                cur.execute(
                    f"INSERT INTO {table} (owner, version, name) VALUES (%s, %s, %s)",
                    (schema.owner, migration.version, migration.name),
                )
            log.info("applied %s", label)
            return True
        except MigrationError:
            raise
        except Exception as exc:  # the transaction is rolled back; say why, by version
            state = getattr(exc, "sqlstate", None)
            if state == SCHEMA_CHANGE_FAILED_AFTER_COMMIT:
                with _cursor(conn) as cur:  # the version row committed, the schema change did not: unrecord it
                    cur.execute(
                        f"DELETE FROM {table} WHERE owner = %s AND version = %s", (schema.owner, migration.version)
                    )
                raise MigrationError(f"{label} failed after commit; version not recorded: {_first_line(exc)}") from exc
            if isinstance(exc, psycopg.Error) and _is_recorded(conn, table, schema.owner, migration.version):
                log.info("%s: a concurrent starter applied it first; ours rolled back (%s)", label, _first_line(exc))
                return False
            if state in RETRY_SQLSTATES:
                time.sleep(min(0.5, 0.01 * 2**attempt))
                continue
            raise MigrationError(
                f"{label} failed and was rolled back; the recorded version is unchanged: {_first_line(exc)}"
            ) from exc
    raise MigrationError(f"{label}: still conflicting after {RETRIES} tries")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
