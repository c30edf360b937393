"""A double of the content-engine API's wire contract, which records what the skill sent it.

The real engine is the Phase 16 capstone (``python -m phase16_capstone serve``), and imports only
go one way: Phase 14 may not import it. The skill needs only the engine's HTTP contract, so this
module serves that contract and nothing more — ``POST /jobs {"topic"}`` creates a ``queued`` job,
``GET /jobs`` lists jobs, ``GET /jobs/{id}`` returns one — and keeps every ``POST /jobs`` it
received. It is how the OpenClaw lesson answers "did the skill's command actually run?" when no
engine URL is given: a request arrived here, or it did not. No job ever leaves ``queued``; nothing
is researched or published.
"""

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from lab.serve.background import serving_app

MAX_TOPIC_CHARS = 500


class EngineDouble:
    """The contract's three routes over an in-memory job table; ``posts`` holds each POST /jobs body."""

    def __init__(self):
        self.jobs: dict[str, dict[str, Any]] = {}
        self.posts: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def app(self):
        from fastapi import FastAPI, HTTPException  # noqa: PLC0415 (fastapi loads only on the path that uses it)

        # defined here and annotated without `from __future__ import annotations`: FastAPI must see
        # the class itself to read the body from JSON rather than from the query string
        class JobRequest(BaseModel):
            topic: str = Field(min_length=1, max_length=MAX_TOPIC_CHARS)

        app = FastAPI(title="content-engine API (double)", docs_url=None, redoc_url=None)

        @app.post("/jobs", status_code=201)
        def create_job(body: JobRequest) -> dict[str, Any]:
            with self._lock:
                self.posts.append(body.model_dump())
                job_id = f"job-{next(self._ids):04d}"
                job = {
                    "id": job_id,
                    "topic": body.topic,
                    "state": "queued",
                    "source": "api",
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "stages": [],
                    "post_url": None,
                }
                self.jobs[job_id] = job
            return job

        @app.get("/jobs")
        def list_jobs() -> list[dict[str, Any]]:
            return [{k: job[k] for k in ("id", "topic", "state", "source", "post_url")} for job in self.jobs.values()]

        @app.get("/jobs/{job_id}")
        def get_job(job_id: str) -> dict[str, Any]:
            if job_id not in self.jobs:
                raise HTTPException(404, f"no job {job_id!r}")
            return self.jobs[job_id]

        return app

    @contextmanager
    def serving(self) -> Iterator[str]:
        with serving_app(self.app(), name="engine-double") as url:
            yield url
