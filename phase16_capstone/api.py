"""The engine's HTTP face (FastAPI): create and read jobs, and Telegram's webhook.

    POST /jobs {"topic": "..."}        201 + the job (queued)
    GET  /jobs                         id, topic, state, source, update_id, chat_id, post_url of each job
    GET  /jobs/{id}                    stages, revisions, gate decisions, citations, trace id, events, reply
    POST /telegram/webhook             a Telegram Update -> a job (header X-Telegram-Bot-Api-Secret-Token)
    GET  /health                       liveness, whether the webhook is on, Updates acknowledged without a job

Every handler reads and writes through the job store; workers (threads of this server, or
``python -m phase16_capstone worker`` processes anywhere that reach the database) do the work.

A bad request gets a 4xx whose ``error`` names the problem, never a traceback or a path of this
machine: a body over ``max_body_bytes`` is a 413 before it is read any further (``http_guard``), a
malformed job id a 400 (it never reaches SQL), an unknown one a 404, a bad field a 422. Whatever a
request carries reaches the log escaped (``http_guard.printable``).

The webhook exists only when ``ENGINE_TELEGRAM_SECRET`` is set: without it anyone who finds the
URL could make the engine publish, so the route is not mounted at all. A request without the
secret header is a 401, a wrong one a 403 — in both cases before the body is read, and no job is
made. Past the secret, Telegram re-delivers anything that is not a 2xx, forever, so every Update is
answered 200: one that is not well formed (not JSON, a field of the wrong type or out of range —
``telegram.parse_update`` names it) with ``"malformed"``, one that asks for no post (a sticker,
``/start``, an ``edited_message``: an edit is not a new request) with ``"ignored"``. Both are logged
with the reason, counted on ``/health`` and write nothing. A repeated ``update_id`` answers with the
job it already made. Only a job store that fails answers otherwise: 503, because then the Update is
good and Telegram's re-delivery is what keeps it from being lost.
"""

import logging
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from phase16_capstone.http_guard import MAX_BODY_BYTES, BodyLimit, printable
from phase16_capstone.job_store import JobStoreError, UnknownJob
from phase16_capstone.telegram import SECRET_HEADER, IgnoredUpdate, UpdateError, check_secret, parse_update
from phase16_capstone.untrusted import TOPIC, UntrustedInputError, admit

log = logging.getLogger("phase16.api")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(min_length=1, max_length=300, description="what the post is about")


def create_app(
    store, corpus: str | None = None, webhook_secret: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
):
    # no `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime
    from fastapi import FastAPI, Request  # noqa: PLC0415 (fastapi loads only on the path that uses it)
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415 (fastapi loads only on the path that uses it)
    from fastapi.responses import JSONResponse  # noqa: PLC0415 (fastapi loads only on the path that uses it)
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415 (starlette loads only on the path that uses it)
    from starlette.exceptions import HTTPException  # noqa: PLC0415 (starlette loads only on the path that uses it)

    app = FastAPI(title="phase16 content engine", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    unused_updates: Counter = Counter()  # Updates acknowledged without a job, by outcome (malformed / ignored)

    def problem(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404/405 of the router, BodyLimit's 413
        return problem(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return problem(422, f"field '{where}': {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, printable(request.url.path))
        return problem(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "ok": True,
            "telegram_webhook": "on" if webhook_secret else "off (set ENGINE_TELEGRAM_SECRET)",
            "telegram_updates_without_job": dict(unused_updates),
            "jobs": store.count_by_state(),
        }

    @app.post("/jobs", status_code=201)
    def create(req: JobRequest):
        try:
            topic = admit(req.topic, TOPIC, "api")
        except UntrustedInputError as exc:
            return problem(400, f"field 'topic': {exc}")
        job, _ = store.create_job(topic, "api", corpus=corpus)
        return job.summary()

    @app.get("/jobs")
    def jobs(limit: int = 100):
        if not 1 <= limit <= 1000:
            return problem(400, "query parameter 'limit' must be between 1 and 1000")
        return [j.summary() for j in store.list_jobs(limit)]

    @app.get("/jobs/{job_id}")
    def job(job_id: str):
        try:
            return store.detail(job_id)
        except UnknownJob as exc:
            return problem(404, str(exc))
        except JobStoreError as exc:  # a malformed id: refused before any SQL, and not echoed
            return problem(400, str(exc))

    if webhook_secret:

        def acknowledge(outcome: str, reason: str) -> dict[str, Any]:
            unused_updates[outcome] += 1
            log.info("telegram update %s, no job: %s", outcome, printable(reason))
            return {"ok": True, "job_id": None, outcome: reason}

        @app.post("/telegram/webhook")
        async def telegram_webhook(request: Request):
            status = check_secret(webhook_secret, request.headers.get(SECRET_HEADER))
            if status is not None:
                return problem(status, f"header {SECRET_HEADER} is {'missing' if status == 401 else 'wrong'}")
            try:
                data = await request.json()
            except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
                return acknowledge("malformed", "the body is not JSON (expected a Telegram Update)")
            try:
                req = parse_update(data)
            except IgnoredUpdate as exc:
                return acknowledge("ignored", str(exc))
            except UpdateError as exc:
                return acknowledge("malformed", str(exc))
            try:
                job, created = await run_in_threadpool(
                    store.create_job, req.topic, "telegram", update_id=req.update_id, chat_id=req.chat_id, corpus=corpus
                )
            except Exception as exc:  # noqa: BLE001 — the Update is good; Telegram re-delivers a 503
                log.error("telegram update %s not stored: %s", req.update_id, printable(f"{type(exc).__name__}: {exc}"))
                return problem(
                    503, "the job store is unavailable; the update will be re-delivered", {"Retry-After": "30"}
                )
            return {"ok": True, "job_id": job.id, "created": created, "state": job.state}

    return app
