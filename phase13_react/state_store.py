"""Agent state in PostgreSQL: a run and its steps, written after every step, so a killed run resumes.

    store = AgentStateStore()                      # LAB_DATABASE_URL, else the embedded PostgreSQL
    store.start(run_id, task, meta={...})          # idempotent: a resumed run keeps its first row
    run = run_agent(..., prior_steps=store.steps(run_id), on_step=lambda s: store.append(run_id, s))
    store.finish(run_id, run)

Each step is one row keyed by ``(run_id, step index)`` inserted in its own transaction: a step is
either stored whole or not at all, and appending the same index twice is an error rather than a
silent second copy. A process killed mid-step loses only the step in flight; the next process
replays the stored steps into messages and continues from there (``phase13_react.loop``).
"""

from __future__ import annotations

import json
from typing import Any

from lab import db
from lab.migrations import Migration, Schema, migrate
from phase13_react.steps import AgentRun, Step

RUNS_V1 = """CREATE TABLE IF NOT EXISTS p13_agent_runs (
    run_id      text PRIMARY KEY,
    task        text NOT NULL,
    meta        jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'running',
    answer      text,
    stop_reason text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
)"""
STEPS_V1 = """CREATE TABLE IF NOT EXISTS p13_agent_steps (
    run_id     text NOT NULL REFERENCES p13_agent_runs(run_id) ON DELETE CASCADE,
    idx        integer NOT NULL,
    record     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, idx)
)"""


def schema():
    """The agent-state tables and their migrations (``lab.migrations``; versions in
    ``p13_schema_migrations``). Version 1 is the schema as the code before migrations created it, so a
    database it made is adopted as it is; a change appends a version."""

    return Schema(
        "p13",
        "phase13.agent_state",
        tables=("p13_agent_runs", "p13_agent_steps"),
        migrations=(Migration(1, "agent runs and their steps", (RUNS_V1, STEPS_V1)),),
    )


class AgentStateStore:
    """Runs and their step records in one database (PostgreSQL, or CockroachDB through the same SQL)."""

    def __init__(self, url: str | None = None):

        self.url = url or db.database_url()
        migrate(self.url, schema())

    def _connect(self):

        return db.connect(self.url)

    def start(self, run_id: str, task: str, meta: dict[str, Any] | None = None) -> bool:
        """Create the run; False when it already exists (a resume), whose task must then match."""
        with self._connect() as conn:
            created = (
                conn.execute(
                    "INSERT INTO p13_agent_runs (run_id, task, meta) VALUES (%s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
                    (run_id, task, json.dumps(meta or {})),
                ).rowcount
                == 1
            )
            if not created:
                stored = conn.execute("SELECT task FROM p13_agent_runs WHERE run_id = %s", (run_id,)).fetchone()[0]
                if stored != task:
                    raise ValueError(
                        f"run {run_id!r} exists with another task ({stored[:80]!r}); "
                        "resume it with its own task or pick a new run id"
                    )
        return created

    def append(self, run_id: str, step: Step) -> None:
        """Store one finished step (its own transaction)."""
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO p13_agent_steps (run_id, idx, record) VALUES (%s, %s, %s)",
                (run_id, step.index, json.dumps(step.to_dict(), default=str)),
            )
            conn.execute("UPDATE p13_agent_runs SET updated_at = now() WHERE run_id = %s", (run_id,))

    def steps(self, run_id: str) -> list[Step]:
        """The stored steps of a run, in order (empty for an unknown run)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT record FROM p13_agent_steps WHERE run_id = %s ORDER BY idx", (run_id,)
            ).fetchall()
        return [Step.from_dict(r[0]) for r in rows]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row (task, meta, status, answer, stop_reason), or None."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT task, meta, status, answer, stop_reason FROM p13_agent_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("task", "meta", "status", "answer", "stop_reason"), row))

    def finish(self, run_id: str, run: AgentRun) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE p13_agent_runs SET status = 'finished', answer = %s, stop_reason = %s, "
                "updated_at = now() WHERE run_id = %s",
                (run.answer, run.stop_reason, run_id),
            )
