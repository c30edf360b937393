"""The engine's HTTP face (FastAPI): create and read jobs, and Telegram's webhook.

    POST /jobs {"topic": "..."}        201 + the job (queued)
    GET  /jobs                         id, topic, state, source, update_id, chat_id, post_url of each job
    GET  /jobs/{id}                    stages, revisions, gate decisions, citations, trace id, events
    POST /telegram/webhook             a Telegram Update -> a job (header X-Telegram-Bot-Api-Secret-Token)
    GET  /health                       liveness + whether the webhook is on

Every handler reads and writes through the job store; workers (threads of this server, or
``python -m phase16_capstone worker`` processes anywhere that reach the database) do the work.

The webhook exists only when ``ENGINE_TELEGRAM_SECRET`` is set: without it anyone who finds the
URL could make the engine publish, so the route is not mounted at all. A request without the
secret header is a 401, a wrong one a 403 — in both cases before the body is read, and no job is
made. A malformed Update is a 400 naming the field; a well-formed one that asks for nothing (a
sticker, ``/start``) is a 200 with the reason, because Telegram re-delivers anything that is not a
2xx. A repeated ``update_id`` answers with the job it already made. Errors never carry a traceback.
"""

import logging
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("phase16.api")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(min_length=1, max_length=300, description="what the post is about")


def create_app(store, corpus: Optional[str] = None, webhook_secret: Optional[str] = None):
    # no `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from phase16_capstone.job_store import JobStoreError
    from phase16_capstone.telegram import SECRET_HEADER, IgnoredUpdate, UpdateError, check_secret, parse_update
    from phase16_capstone.untrusted import TOPIC, UntrustedInputError, admit

    app = FastAPI(title="phase16 content engine", docs_url=None, redoc_url=None, openapi_url=None)

    def problem(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return problem(422, f"field '{where}': {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "telegram_webhook": "on" if webhook_secret else "off (set ENGINE_TELEGRAM_SECRET)",
                "jobs": store.count_by_state()}

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
        except JobStoreError as exc:
            return problem(404, str(exc))

    if webhook_secret:
        @app.post("/telegram/webhook")
        async def telegram_webhook(request: Request):
            status = check_secret(webhook_secret, request.headers.get(SECRET_HEADER))
            if status is not None:
                return problem(status, f"header {SECRET_HEADER} is {'missing' if status == 401 else 'wrong'}")
            try:
                data = await request.json()
            except ValueError:
                return problem(400, "the body is not JSON (expected a Telegram Update)")
            try:
                req = parse_update(data)
            except IgnoredUpdate as exc:
                return {"ok": True, "job_id": None, "ignored": str(exc)}
            except UpdateError as exc:
                return problem(400, str(exc))
            job, created = store.create_job(req.topic, "telegram", update_id=req.update_id, chat_id=req.chat_id,
                                            corpus=corpus)
            return {"ok": True, "job_id": job.id, "created": created, "state": job.state}

    return app
