"""The engine's single source of truth: jobs, their stages and everything each stage produced.

Every writer of the engine — the CLI, the HTTP API, the Telegram webhook, the workers — creates and
reads jobs here, and the database is the distributed coordinator:

- a worker **claims** a job with ``FOR UPDATE SKIP LOCKED`` and a **lease** (owner, token, expiry).
  Two workers never claim the same live job; a worker that dies (kill -9) stops renewing, its lease
  expires and the next claim picks the job up **at the state it had reached**;
- every **stage transition is one transaction** that checks the lease token (a worker whose lease
  was taken over can no longer write: fencing), stores what the stage produced (evidence, draft,
  review, publication) and moves the state. A crash mid-stage leaves nothing half-written: the stage
  simply runs again;
- uniqueness does the rest: a Telegram ``update_id`` makes at most one job (Telegram retries its
  webhook), a job has at most one publication;
- a job's chat reply is claimed like a job (a token and an expiry), so it is sent at least once and
  by one sender at a time: see ``take_reply`` for the contract, duplicates included.

Job ids are what ``create_job`` makes (32 lowercase hex characters); anything else is refused before
it reaches SQL (``check_job_id``).

States: ``queued → researching → writing → editing → (writing …) → publishing → published``, or the
terminal ``escalated`` (the Editor gave up after the revision limit) and ``failed``.

Every transaction goes through ``phase15_production.state.run_transaction`` (the 40001/40P01 retry
contract), so the same code runs on PostgreSQL + pgvector (``LAB_DATABASE_URL`` or the embedded
server) and on CockroachDB (``LAB_CRDB_URL``). All objects carry one name prefix (``namespace``,
default ``p16``) so several engines — or tests — share one database without clashing. The tables are
made and changed only by the versioned migrations of ``schema`` (``lab.migrations``), run at every start.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lab import db
from lab.db import connect
from lab.migrations import Migration, Schema, forget, migrate
from phase15_production.state import run_transaction

STATES = ("queued", "researching", "writing", "editing", "publishing", "published", "escalated", "failed")
ACTIVE = STATES[:5]
TERMINAL = STATES[5:]
SOURCES = ("cli", "api", "telegram", "load")
MAX_REPLY_ATTEMPTS = 5  # claims of one chat reply before it is given up as failed
_NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,30}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")


class JobStoreError(Exception):
    """Bad input to the store (a malformed job id, a bad topic); the message names the field."""


class UnknownJob(JobStoreError):
    """A well-formed job id that no job has."""


class LeaseLost(Exception):
    """This worker's lease on the job was taken over (it expired): stop; the new owner carries on."""


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str
    worker: str


@dataclass
class Job:
    id: str
    topic: str
    state: str
    source: str
    update_id: int | None
    chat_id: int | None
    corpus: str | None
    revisions: int
    attempts: int
    trace_id: str
    error: str | None
    post_url: str | None
    created_at: datetime
    finished_at: datetime | None
    lease: Lease | None = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def summary(self) -> dict[str, Any]:
        """The list view (``GET /jobs``)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "state": self.state,
            "source": self.source,
            "update_id": self.update_id,
            "chat_id": self.chat_id,
            "post_url": self.post_url,
        }


_JOB_COLUMNS = (
    "id, topic, state, source, update_id, chat_id, corpus, revisions, attempts, trace_id, error, "
    "post_url, created_at, finished_at"
)


def _job(row, lease: Lease | None = None) -> Job:
    return Job(*row, lease=lease)


def check_job_id(job_id: object) -> str:
    """``job_id`` when it has the shape of one (``uuid4().hex``); else JobStoreError, without echoing it."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise JobStoreError("field 'job_id' must be a job id: 32 lowercase hexadecimal characters")
    return job_id


TABLES = ("jobs", "stage_runs", "evidence", "drafts", "citations", "reviews", "publications", "events", "sites")
OWNER = "phase16.job_store"


def schema(ns: str):
    """Every table of the engine and its migrations (``lab.migrations``), versioned in ``<ns>_schema_migrations``.

    Version 1 is the schema as the code created it before migrations (``CREATE ... IF NOT EXISTS`` and
    the ``ADD COLUMN IF NOT EXISTS`` of columns added since), so a database made by that code is adopted
    as it is. A change to the schema is a new version appended here, never an edit of an applied one."""

    return Schema(
        ns,
        OWNER,
        tables=tuple(f"{ns}_{t}" for t in TABLES),
        migrations=(
            Migration(
                1,
                "jobs, stage runs, evidence, drafts, citations, reviews, publications, events, sites",
                tuple(_schema_v1(ns)),
            ),
        ),
    )


def _schema_v1(ns: str) -> list[str]:
    """Migration 1: the engine's tables as the code before migrations made them (keep it as it is)."""
    states = ", ".join(f"'{s}'" for s in STATES)
    return [
        f"""CREATE TABLE IF NOT EXISTS {ns}_jobs (
            id TEXT PRIMARY KEY, topic TEXT NOT NULL, source TEXT NOT NULL,
            update_id BIGINT UNIQUE,           -- a Telegram update: a retried webhook never makes a 2nd job
            chat_id BIGINT, corpus TEXT,
            state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ({states})),
            revisions INT NOT NULL DEFAULT 0,  -- Writer passes after the first draft
            attempts INT NOT NULL DEFAULT 0,   -- claims so far (a crash makes another)
            lease_owner TEXT, lease_token TEXT, lease_expires TIMESTAMPTZ,
            trace_id TEXT NOT NULL, error TEXT, post_url TEXT,
            reply_state TEXT,                  -- NULL | sending | sent | failed: the chat reply (take_reply)
            reply_token TEXT, reply_expires TIMESTAMPTZ,  -- the claim of the one sender allowed to send it
            reply_attempts INT NOT NULL DEFAULT 0, reply_message_id BIGINT,  -- Telegram's id of the sent reply
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            finished_at TIMESTAMPTZ)""",
        # tables made before replies were claimed get the claim's columns
        *(
            f"ALTER TABLE {ns}_jobs ADD COLUMN IF NOT EXISTS {column}"
            for column in (
                "reply_token TEXT",
                "reply_expires TIMESTAMPTZ",
                "reply_attempts INT NOT NULL DEFAULT 0",
                "reply_message_id BIGINT",
            )
        ),
        f"CREATE INDEX IF NOT EXISTS {ns}_jobs_claimable ON {ns}_jobs (state, created_at)",
        f"""CREATE TABLE IF NOT EXISTS {ns}_stage_runs (
            id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), stage TEXT NOT NULL,
            attempt INT NOT NULL, worker TEXT NOT NULL,
            status TEXT NOT NULL,              -- running | done | abandoned (its worker died) | failed
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(), finished_at TIMESTAMPTZ, seconds DOUBLE PRECISION,
            tokens_in INT NOT NULL DEFAULT 0, tokens_out INT NOT NULL DEFAULT 0, cost_usd DOUBLE PRECISION,
            detail JSONB NOT NULL DEFAULT '{{}}')""",
        f"CREATE INDEX IF NOT EXISTS {ns}_stage_runs_job ON {ns}_stage_runs (job_id, started_at)",
        f"""CREATE TABLE IF NOT EXISTS {ns}_evidence (
            job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), n INT NOT NULL, chunk_id TEXT NOT NULL,
            source TEXT NOT NULL, text TEXT NOT NULL, score DOUBLE PRECISION, PRIMARY KEY (job_id, n))""",
        f"""CREATE TABLE IF NOT EXISTS {ns}_drafts (
            job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), revision INT NOT NULL, title TEXT NOT NULL,
            body TEXT NOT NULL, coverage DOUBLE PRECISION, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, revision))""",
        f"""CREATE TABLE IF NOT EXISTS {ns}_citations (
            job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), revision INT NOT NULL, n INT NOT NULL,
            chunk_id TEXT NOT NULL, PRIMARY KEY (job_id, revision, n))""",
        f"""CREATE TABLE IF NOT EXISTS {ns}_reviews (
            job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), revision INT NOT NULL, verdict TEXT NOT NULL,
            scores JSONB NOT NULL, mean DOUBLE PRECISION, flagged BOOLEAN, reasons JSONB NOT NULL,
            reasoning TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (job_id, revision))""",
        # whether an APPROVE counted as a review (a calibrated judge) and whose citations are whose
        f"ALTER TABLE {ns}_reviews ADD COLUMN IF NOT EXISTS reviewed BOOLEAN",
        f"ALTER TABLE {ns}_reviews ADD COLUMN IF NOT EXISTS citations JSONB",
        f"""CREATE TABLE IF NOT EXISTS {ns}_publications (
            job_id TEXT PRIMARY KEY REFERENCES {ns}_jobs (id),  -- one post per job, whatever retries happen
            slug TEXT NOT NULL UNIQUE, url TEXT NOT NULL, post JSONB NOT NULL,
            published_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        f"""CREATE TABLE IF NOT EXISTS {ns}_events (
            id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES {ns}_jobs (id), kind TEXT NOT NULL,
            detail JSONB NOT NULL DEFAULT '{{}}', at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
        f"CREATE INDEX IF NOT EXISTS {ns}_events_job ON {ns}_events (job_id, at)",
        f"""CREATE TABLE IF NOT EXISTS {ns}_sites (  -- one row per deploy target: publishers serialize on it
            site TEXT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 0)""",
    ]


def _new_id() -> str:
    return uuid.uuid4().hex


def _jsonb(value: Any):
    from psycopg.types.json import Jsonb  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    return Jsonb(value)


class JobStore:
    """Jobs and their stage records in one database. Thread-safe: one connection per thread.

    ``url``: a PostgreSQL/CockroachDB URL (default ``LAB_CRDB_URL`` if set, else ``lab.db.database_url()``).
    """

    def __init__(self, url: str | None = None, namespace: str = "p16", lease_s: float = 30.0, max_attempts: int = 5):

        if not _NAMESPACE.fullmatch(namespace):
            raise JobStoreError(f"namespace {namespace!r} must match [a-z][a-z0-9_]{{0,30}}")
        self.url = url or db.crdb_url() or db.database_url()
        self.ns, self.lease_s, self.max_attempts = namespace, float(lease_s), max_attempts
        self._local = threading.local()
        self._connections: list = []
        self._lock = threading.Lock()
        self.migrated = migrate(self.url, schema(namespace))  # to the latest version; a no-op when there

    # --- connections and transactions ---------------------------------------------------
    def _conn(self):

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def tx(self, work: Callable[[Any], Any]) -> Any:
        """``work(conn)`` in one SERIALIZABLE transaction, retried on 40001/40P01 (the Phase 15 contract)."""

        return run_transaction(self._conn(), work).value

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                if not conn.closed:
                    conn.close()
            self._connections.clear()

    def drop(self) -> None:
        """Remove every table of this namespace and its recorded versions (tests, throwaway runs)."""

        conn = self._conn()
        for table in reversed(TABLES):
            conn.execute(f"DROP TABLE IF EXISTS {self.ns}_{table} CASCADE")
        forget(conn, self.ns, OWNER)

    def _event(self, conn, job_id: str, kind: str, **detail: Any) -> None:
        conn.execute(
            f"INSERT INTO {self.ns}_events (id, job_id, kind, detail) VALUES (%s, %s, %s, %s)",
            (_new_id(), job_id, kind, _jsonb(detail)),
        )

    # --- creating and reading jobs --------------------------------------------------------
    def create_job(
        self,
        topic: str,
        source: str = "api",
        update_id: int | None = None,
        chat_id: int | None = None,
        corpus: str | None = None,
    ) -> tuple[Job, bool]:
        """A queued job; ``(job, created)``. An ``update_id`` seen before returns the existing job and
        ``created=False`` (the UNIQUE constraint decides, so two racing webhook deliveries agree)."""
        if not isinstance(topic, str) or not topic.strip():
            raise JobStoreError("field 'topic' must be a non-empty string")
        if source not in SOURCES:
            raise JobStoreError(f"field 'source' {source!r} must be one of {', '.join(SOURCES)}")
        job_id = _new_id()

        def work(conn):
            row = conn.execute(
                f"INSERT INTO {self.ns}_jobs (id, topic, source, update_id, chat_id, corpus, trace_id) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (update_id) DO NOTHING RETURNING id",
                (job_id, topic.strip(), source, update_id, chat_id, corpus, uuid.uuid4().hex),
            ).fetchone()
            if row is None:
                return False
            self._event(conn, job_id, "created", source=source, update_id=update_id)
            return True

        created = self.tx(work)
        job = self.get(job_id) if created else self.by_update_id(update_id)
        return job, created

    def get(self, job_id: str) -> Job:
        """The job (JobStoreError for a malformed id, UnknownJob for one no job has)."""
        row = (
            self._conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM {self.ns}_jobs WHERE id = %s", (check_job_id(job_id),))
            .fetchone()
        )
        if row is None:
            raise UnknownJob(f"no job with id {job_id!r}")
        return _job(row)

    def by_update_id(self, update_id: int) -> Job:
        row = (
            self._conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM {self.ns}_jobs WHERE update_id = %s", (update_id,))
            .fetchone()
        )
        if row is None:
            raise JobStoreError(f"no job for Telegram update_id {update_id}")
        return _job(row)

    def list_jobs(self, limit: int = 100) -> list[Job]:
        rows = (
            self._conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM {self.ns}_jobs ORDER BY created_at DESC LIMIT %s", (limit,))
            .fetchall()
        )
        return [_job(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self._conn().execute(f"SELECT state, count(*) FROM {self.ns}_jobs GROUP BY state").fetchall()
        return {state: int(n) for state, n in rows}

    def leases(self) -> list[tuple[str, str, str]]:
        """(job id, state, lease owner) of every active job under a live lease."""
        rows = (
            self._conn()
            .execute(
                f"SELECT id, state, lease_owner FROM {self.ns}_jobs WHERE lease_expires > now() "
                f"AND state IN ({', '.join(repr(s) for s in ACTIVE)})"
            )
            .fetchall()
        )
        return [tuple(r) for r in rows]

    # --- leases ---------------------------------------------------------------------------
    def claim(self, worker: str, job_id: str | None = None) -> Job | None:
        """Take the oldest claimable job (or ``job_id``): active, and unleased or its lease expired.

        ``SKIP LOCKED`` lets concurrent claimers pass over a row another one is claiming right now
        instead of queueing behind it; the lease (token + expiry) is what keeps it theirs afterwards.
        A job reclaimed after a crash has its orphaned ``running`` stage runs marked ``abandoned``.
        A job claimed more than ``max_attempts`` times fails (a stage that kills every worker).
        """
        token = _new_id()
        only = "AND id = %(job)s" if job_id else ""
        active = ", ".join(f"'{s}'" for s in ACTIVE)

        def work(conn):
            row = conn.execute(
                f"UPDATE {self.ns}_jobs SET lease_owner = %(w)s, lease_token = %(t)s, "
                f"lease_expires = now() + (%(s)s * interval '1 second'), attempts = attempts + 1, "
                f"state = CASE WHEN state = 'queued' THEN 'researching' ELSE state END, updated_at = now() "
                f"WHERE id = (SELECT id FROM {self.ns}_jobs WHERE state IN ({active}) "
                f"AND (lease_expires IS NULL OR lease_expires < now()) {only} "
                f"ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_JOB_COLUMNS}",
                {"w": worker, "t": token, "s": self.lease_s, "job": job_id},
            ).fetchone()
            if row is None:
                return None
            job = _job(row, Lease(row[0], token, worker))
            abandoned = conn.execute(
                f"UPDATE {self.ns}_stage_runs SET status = 'abandoned', finished_at = now() "
                f"WHERE job_id = %s AND status = 'running'",
                (job.id,),
            ).rowcount
            self._event(
                conn,
                job.id,
                "claimed",
                worker=worker,
                attempt=job.attempts,
                state=job.state,
                abandoned_stage_runs=abandoned,
            )
            return job

        job = self.tx(work)
        if job is not None and job.attempts > self.max_attempts:
            self.finish(
                job.lease,
                "failed",
                error=f"claimed {job.attempts} times (limit {self.max_attempts}): a stage keeps dying",
            )
            return self.claim(worker, job_id) if job_id is None else None
        return job

    def renew(self, lease: Lease) -> bool:
        """Extend the lease (the worker's heartbeat); False when it was taken over."""
        cur = self._conn().execute(
            f"UPDATE {self.ns}_jobs SET lease_expires = now() + (%s * interval '1 second') "
            f"WHERE id = %s AND lease_token = %s",
            (self.lease_s, lease.job_id, lease.token),
        )
        return cur.rowcount == 1

    def release(self, lease: Lease) -> None:
        """Give an unfinished job back at once (a clean shutdown), instead of waiting for expiry."""
        self._conn().execute(
            f"UPDATE {self.ns}_jobs SET lease_owner = NULL, lease_token = NULL, lease_expires = NULL "
            f"WHERE id = %s AND lease_token = %s",
            (lease.job_id, lease.token),
        )

    def _fence(self, conn, lease: Lease, expect: str | tuple[str, ...]) -> tuple[str, int]:
        """Lock the job row; raise LeaseLost unless this lease still holds it in an expected state."""
        row = conn.execute(
            f"SELECT state, revisions, lease_token FROM {self.ns}_jobs WHERE id = %s FOR UPDATE", (lease.job_id,)
        ).fetchone()
        expected = (expect,) if isinstance(expect, str) else expect
        if row is None or row[2] != lease.token or row[0] not in expected:
            raise LeaseLost(f"job {lease.job_id}: lease of {lease.worker} lost (now {row[0] if row else 'gone'})")
        return row[0], row[1]

    # --- stage runs -----------------------------------------------------------------------
    def start_stage(self, lease: Lease, stage: str, attempt: int) -> str:
        run_id = _new_id()

        def work(conn):
            self._fence(conn, lease, stage)
            conn.execute(
                f"INSERT INTO {self.ns}_stage_runs (id, job_id, stage, attempt, worker, status) "
                f"VALUES (%s, %s, %s, %s, %s, 'running')",
                (run_id, lease.job_id, stage, attempt, lease.worker),
            )

        self.tx(work)
        return run_id

    def _end_stage(self, conn, run_id: str, status: str, seconds: float, usage: dict[str, Any], detail: dict) -> None:
        conn.execute(
            f"UPDATE {self.ns}_stage_runs SET status = %s, finished_at = now(), seconds = %s, tokens_in = %s, "
            f"tokens_out = %s, cost_usd = %s, detail = %s WHERE id = %s",
            (
                status,
                seconds,
                int(usage.get("input_tokens", 0)),
                int(usage.get("output_tokens", 0)),
                usage.get("cost_usd"),
                _jsonb(detail),
                run_id,
            ),
        )

    def complete_stage(
        self,
        lease: Lease,
        run_id: str,
        from_state: str,
        to_state: str,
        *,
        seconds: float,
        usage: dict[str, Any],
        detail: dict | None = None,
        write: Callable[[Any, int], None] | None = None,
        revisions_delta: int = 0,
    ) -> int:
        """ONE transaction: check the lease, store the stage's output (``write(conn, revisions)``),
        close its stage run and move the job ``from_state → to_state``. Returns the job's revisions."""
        if to_state not in STATES:
            raise JobStoreError(f"unknown state {to_state!r}")

        def work(conn):
            _, revisions = self._fence(conn, lease, from_state)
            if write is not None:
                write(conn, revisions)
            self._end_stage(conn, run_id, "done", seconds, usage, detail or {})
            terminal = to_state in TERMINAL
            conn.execute(
                f"UPDATE {self.ns}_jobs SET state = %s, revisions = revisions + %s, updated_at = now(), "
                f"finished_at = CASE WHEN %s THEN now() ELSE finished_at END, "
                f"lease_expires = now() + (%s * interval '1 second') WHERE id = %s",
                (to_state, revisions_delta, terminal, self.lease_s, lease.job_id),
            )
            self._event(
                conn,
                lease.job_id,
                "stage",
                stage=from_state,
                to=to_state,
                worker=lease.worker,
                seconds=round(seconds, 3),
                **(detail or {}),
            )
            return revisions + revisions_delta

        return self.tx(work)

    def finish(self, lease: Lease, state: str, error: str | None = None, run_id: str | None = None) -> None:
        """Move the job to a terminal state outside the normal flow (``failed``) and drop the lease."""
        if state not in TERMINAL:
            raise JobStoreError(f"finish() needs a terminal state, got {state!r}")

        def work(conn):
            self._fence(conn, lease, ACTIVE)
            if run_id:
                self._end_stage(conn, run_id, "failed", 0.0, {}, {"error": error})
            conn.execute(
                f"UPDATE {self.ns}_jobs SET state = %s, error = %s, finished_at = now(), updated_at = now(), "
                f"lease_owner = NULL, lease_token = NULL, lease_expires = NULL WHERE id = %s",
                (state, error, lease.job_id),
            )
            self._event(conn, lease.job_id, state, error=error, worker=lease.worker)

        self.tx(work)

    # --- what stages write (called inside complete_stage's transaction) --------------------
    def write_evidence(self, conn, job_id: str, evidence: list[dict[str, Any]]) -> None:
        conn.execute(f"DELETE FROM {self.ns}_evidence WHERE job_id = %s", (job_id,))
        for e in evidence:
            conn.execute(
                f"INSERT INTO {self.ns}_evidence (job_id, n, chunk_id, source, text, score) "
                f"VALUES (%s, %s, %s, %s, %s, %s)",
                (job_id, e["n"], e["chunk_id"], e["source"], e["text"], e.get("score")),
            )

    def write_draft(
        self, conn, job_id: str, revision: int, title: str, body: str, coverage: float, citations: dict[int, str]
    ) -> None:
        conn.execute(
            f"INSERT INTO {self.ns}_drafts (job_id, revision, title, body, coverage) VALUES (%s, %s, %s, %s, %s) "
            f"ON CONFLICT (job_id, revision) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body, "
            f"coverage = EXCLUDED.coverage",
            (job_id, revision, title, body, coverage),
        )
        conn.execute(f"DELETE FROM {self.ns}_citations WHERE job_id = %s AND revision = %s", (job_id, revision))
        for n, chunk_id in sorted(citations.items()):
            conn.execute(
                f"INSERT INTO {self.ns}_citations (job_id, revision, n, chunk_id) VALUES (%s, %s, %s, %s)",
                (job_id, revision, n, chunk_id),
            )

    def write_review(self, conn, job_id: str, revision: int, decision: dict[str, Any]) -> None:
        conn.execute(
            f"INSERT INTO {self.ns}_reviews (job_id, revision, verdict, scores, mean, flagged, reasons, reasoning, "
            f"reviewed, citations) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id, revision) "
            f"DO UPDATE SET verdict = EXCLUDED.verdict, scores = EXCLUDED.scores, mean = EXCLUDED.mean, "
            f"flagged = EXCLUDED.flagged, reasons = EXCLUDED.reasons, reasoning = EXCLUDED.reasoning, "
            f"reviewed = EXCLUDED.reviewed, citations = EXCLUDED.citations",
            (
                job_id,
                revision,
                decision["verdict"],
                _jsonb(decision["scores"]),
                decision.get("mean"),
                decision.get("confident_hallucination"),
                _jsonb(list(decision["reasons"])),
                decision.get("reasoning"),
                decision.get("reviewed"),
                _jsonb(decision.get("citations")),
            ),
        )

    def lock_site(self, conn, site: str) -> None:
        """Serialize publishers of one site: each renders the index from every published post, so two
        at once would each miss the other's entry. The upsert row-locks the site; the second publisher
        waits, then (SERIALIZABLE) retries with a snapshot that sees the first one's publication."""
        conn.execute(
            f"INSERT INTO {self.ns}_sites (site, version) VALUES (%s, 1) "
            f"ON CONFLICT (site) DO UPDATE SET version = {self.ns}_sites.version + 1",
            (site,),
        )

    def published_posts_in(self, conn) -> list[dict[str, Any]]:
        return [r[0] for r in conn.execute(f"SELECT post FROM {self.ns}_publications ORDER BY published_at").fetchall()]

    def write_publication(self, conn, job_id: str, slug: str, url: str, post: dict[str, Any]) -> None:
        conn.execute(
            f"INSERT INTO {self.ns}_publications (job_id, slug, url, post) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (job_id) DO NOTHING",
            (job_id, slug, url, _jsonb(post)),
        )
        conn.execute(f"UPDATE {self.ns}_jobs SET post_url = %s WHERE id = %s", (url, job_id))

    # --- reads the stages and the API need -----------------------------------------------
    def evidence(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                f"SELECT n, chunk_id, source, text, score FROM {self.ns}_evidence WHERE job_id = %s ORDER BY n",
                (job_id,),
            )
            .fetchall()
        )
        return [{"n": n, "chunk_id": c, "source": s, "text": t, "score": sc} for n, c, s, t, sc in rows]

    def drafts(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                f"SELECT revision, title, body, coverage FROM {self.ns}_drafts WHERE job_id = %s ORDER BY revision",
                (job_id,),
            )
            .fetchall()
        )
        return [{"revision": r, "title": t, "body": b, "coverage": c} for r, t, b, c in rows]

    def citations(self, job_id: str, revision: int) -> dict[int, str]:
        rows = (
            self._conn()
            .execute(
                f"SELECT n, chunk_id FROM {self.ns}_citations WHERE job_id = %s AND revision = %s ORDER BY n",
                (job_id, revision),
            )
            .fetchall()
        )
        return {n: c for n, c in rows}

    def reviews(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                f"SELECT revision, verdict, scores, mean, flagged, reasons, reasoning, reviewed, "
                f"citations FROM {self.ns}_reviews WHERE job_id = %s ORDER BY revision",
                (job_id,),
            )
            .fetchall()
        )
        return [
            {
                "revision": r,
                "verdict": v,
                "scores": s,
                "mean": m,
                "confident_hallucination": f,
                "reasons": rs,
                "reasoning": why,
                "reviewed": ok,
                "citations": c,
            }
            for r, v, s, m, f, rs, why, ok, c in rows
        ]

    def stage_runs(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                f"SELECT stage, attempt, worker, status, seconds, tokens_in, tokens_out, cost_usd, detail "
                f"FROM {self.ns}_stage_runs WHERE job_id = %s ORDER BY started_at",
                (job_id,),
            )
            .fetchall()
        )
        keys = ("stage", "attempt", "worker", "status", "seconds", "tokens_in", "tokens_out", "cost_usd", "detail")
        return [dict(zip(keys, r)) for r in rows]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(f"SELECT kind, detail, at FROM {self.ns}_events WHERE job_id = %s ORDER BY at", (job_id,))
            .fetchall()
        )
        return [{"kind": k, "detail": d, "at": at.isoformat()} for k, d, at in rows]

    def publication(self, job_id: str) -> dict[str, Any] | None:
        row = (
            self._conn()
            .execute(f"SELECT slug, url, post FROM {self.ns}_publications WHERE job_id = %s", (job_id,))
            .fetchone()
        )
        return None if row is None else {"slug": row[0], "url": row[1], "post": row[2]}

    def publications_count(self) -> dict[str, int]:
        rows = self._conn().execute(f"SELECT job_id, count(*) FROM {self.ns}_publications GROUP BY job_id").fetchall()
        return {j: int(n) for j, n in rows}

    def detail(self, job_id: str) -> dict[str, Any]:
        """Everything ``GET /jobs/{id}`` shows: stages, revisions, gate decisions, citations, trace id."""
        job = self.get(job_id)
        drafts = self.drafts(job_id)
        last = drafts[-1]["revision"] if drafts else None
        evidence = {e["n"]: e for e in self.evidence(job_id)}
        cited = self.citations(job_id, last) if last is not None else {}
        reviews = self.reviews(job_id)
        return {
            **job.summary(),
            "trace_id": job.trace_id,
            "revisions": job.revisions,
            "attempts": job.attempts,
            "error": job.error,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "stages": self.stage_runs(job_id),
            "drafts": [{k: d[k] for k in ("revision", "title", "coverage")} for d in drafts],
            "gate_decisions": reviews,
            # did a calibrated judge approve it? False: approved by an uncalibrated judge (published UNREVIEWED)
            "reviewed": reviews[-1]["reviewed"] if reviews else None,
            "citations": [
                {"n": n, "chunk_id": c, "source": evidence.get(n, {}).get("source")} for n, c in cited.items()
            ],
            "events": self.events(job_id),
            "reply": self.reply(job_id),
        }

    # --- the chat reply: at least once, one sender at a time ----------------------------------
    def take_reply(self, job_id: str) -> str | None:
        """Claim the chat reply of a terminal job: a token for ONE sender at a time, or None (no chat,
        already sent or given up, or another sender's claim is live).

        The contract (Telegram's Bot API has no idempotency key, so it cannot be exactly once):

        - a reply is claimable while it is unsent (``NULL``) or still ``sending`` under an EXPIRED
          claim (a claim lasts ``lease_s``): its sender died between claiming and recording the
          result — e.g. a worker killed right after publishing — or its try failed in a way worth
          retrying (``reply_failed``). Every worker's loop sweeps these (``pending_replies``), so
          after a crash the next worker, or the restarted one, sends it: **at least once**;
        - a live claim keeps every other sender out, and ``reply_sent`` moves ``sending → sent`` in the
          same transaction that records Telegram's ``message_id``, fenced by the claim's token, so a
          reply recorded as sent is never sent again: **no second post from a retry**;
        - the one window left: Telegram accepted the message (its 200 is on the wire) and the sender
          died, or its claim expired, before that transaction committed. Then the retry posts it a
          second time. We accept that duplicate rather than risk a chat that never hears back;
        - the ``MAX_REPLY_ATTEMPTS``-th claim that would be one too many gives the reply up: ``failed``.
        """
        token = _new_id()
        terminal = ", ".join(repr(s) for s in TERMINAL)

        def work(conn):
            row = conn.execute(
                f"UPDATE {self.ns}_jobs SET reply_state = 'sending', reply_token = %s, reply_attempts = reply_attempts + 1, "
                f"reply_expires = now() + (%s * interval '1 second') WHERE id = %s AND chat_id IS NOT NULL "
                f"AND state IN ({terminal}) AND (reply_state IS NULL OR (reply_state = 'sending' AND reply_expires < now())) "
                f"RETURNING reply_attempts",
                (token, self.lease_s, job_id),
            ).fetchone()
            if row is None:
                return None
            if row[0] > MAX_REPLY_ATTEMPTS:
                conn.execute(
                    f"UPDATE {self.ns}_jobs SET reply_state = 'failed', reply_token = NULL WHERE id = %s", (job_id,)
                )
                self._event(conn, job_id, "reply", ok=False, detail=f"given up after {MAX_REPLY_ATTEMPTS} attempts")
                return None
            return token

        return self.tx(work)

    def reply_sent(self, job_id: str, token: str, message_id: int | None) -> bool:
        """``sending → sent`` with Telegram's message id, one transaction, fenced by the claim's token.
        False when the claim was lost meanwhile (it expired and another sender took it: the chat may
        get the reply twice — the window ``take_reply`` describes)."""

        def work(conn):
            held = (
                conn.execute(
                    f"UPDATE {self.ns}_jobs SET reply_state = 'sent', reply_message_id = %s, "
                    f"reply_token = NULL WHERE id = %s AND reply_token = %s AND reply_state = 'sending'",
                    (message_id, job_id, token),
                ).rowcount
                == 1
            )
            self._event(conn, job_id, "reply", ok=True, message_id=message_id, claim_held=held)
            return held

        return self.tx(work)

    def reply_failed(self, job_id: str, token: str, detail: str, retry: bool) -> None:
        """A try that did not go through. ``retry``: the claim is dropped but left to expire, so a
        sweep tries again after it (up to ``MAX_REPLY_ATTEMPTS``); otherwise ``failed`` for good."""

        def work(conn):
            conn.execute(
                f"UPDATE {self.ns}_jobs SET reply_state = %s, reply_token = NULL WHERE id = %s AND reply_token = %s",
                ("sending" if retry else "failed", job_id, token),
            )
            self._event(conn, job_id, "reply", ok=False, retry=retry, detail=detail)

        self.tx(work)

    def pending_replies(self) -> list[str]:
        """Terminal jobs with a chat whose reply is claimable (unsent, or ``sending`` under an expired claim)."""
        rows = (
            self._conn()
            .execute(
                f"SELECT id FROM {self.ns}_jobs WHERE chat_id IS NOT NULL AND state IN "
                f"({', '.join(repr(s) for s in TERMINAL)}) AND (reply_state IS NULL OR "
                f"(reply_state = 'sending' AND reply_expires < now()))"
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def rewind(self, job_id: str, state: str) -> None:
        """Move a terminal job back to an earlier active ``state``, as if its later checkpoints were lost
        (the negative control of the crash tests: stages that already finished must then run again,
        and the re-execution counter must see them). Never called by the engine."""
        if state not in ACTIVE:
            raise JobStoreError(f"rewind() needs an active state, got {state!r}")

        def work(conn):
            conn.execute(
                f"UPDATE {self.ns}_jobs SET state = %s, finished_at = NULL, lease_owner = NULL, "
                f"lease_token = NULL, lease_expires = NULL, updated_at = now() WHERE id = %s",
                (state, check_job_id(job_id)),
            )
            self._event(conn, job_id, "rewound", state=state)

        self.tx(work)

    def stages_reexecuted(self, job_id: str) -> int:
        """Stage runs that finished (``done``) more often than the job's path needs: research and publish
        once, write and edit once per draft. A crash that resumes at the last committed stage adds 0
        (an abandoned run is not ``done``); a resume from an older checkpoint adds one per stage redone."""
        job = self.get(job_id)
        drafts = len(self.drafts(job_id))
        done: dict[str, int] = {}
        for r in self.stage_runs(job_id):
            if r["status"] == "done":
                done[r["stage"]] = done.get(r["stage"], 0) + 1
        expected = {
            "researching": 1,
            "writing": drafts,
            "editing": len(self.reviews(job_id)),
            "publishing": 1 if job.state == "published" else 0,
        }
        return sum(max(0, n - expected.get(stage, 0)) for stage, n in done.items())

    def unsent_replies(self) -> int:
        """Terminal jobs with a chat whose reply is neither sent nor given up — including a ``sending``
        claim still live for a sender that died: a worker leaving when idle must wait for it to expire
        and send it, or the chat never hears back."""
        row = (
            self._conn()
            .execute(
                f"SELECT count(*) FROM {self.ns}_jobs WHERE chat_id IS NOT NULL AND state IN "
                f"({', '.join(repr(s) for s in TERMINAL)}) AND (reply_state IS NULL OR reply_state = 'sending')"
            )
            .fetchone()
        )
        return int(row[0])

    def reply(self, job_id: str) -> dict[str, Any]:
        """The chat reply's state, tries so far and Telegram's message id (``GET /jobs/{id}``)."""
        row = (
            self._conn()
            .execute(
                f"SELECT reply_state, reply_attempts, reply_message_id FROM {self.ns}_jobs WHERE id = %s", (job_id,)
            )
            .fetchone()
        )
        return {"state": row[0], "attempts": row[1], "message_id": row[2]} if row else {}
