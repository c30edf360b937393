#!/usr/bin/env python3
"""The content-engine skill's command: start a job, or read one, over the engine's HTTP API.

    content_engine.py start "topic"     POST {CONTENT_ENGINE_URL}/jobs {"topic": ...}  -> the job (JSON)
    content_engine.py status JOB_ID     GET  {CONTENT_ENGINE_URL}/jobs/JOB_ID           -> the job (JSON)

The skill is the only bridge between an OpenClaw agent and the engine, so it speaks the engine's
wire contract and nothing else: it imports no project code (an installed skill is a folder copied
into an agent's workspace, run by whatever ``python3`` the agent's shell finds) and uses only the
standard library. Exit codes: 0 ok, 1 the engine answered with an error (its message is printed),
2 bad usage, 3 the engine cannot be reached. Errors go to stderr as one line the agent can relay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8090"
TIMEOUT_S = 30.0
MAX_TOPIC_CHARS = 500


def engine_url() -> str:
    url = (os.environ.get("CONTENT_ENGINE_URL") or DEFAULT_URL).rstrip("/")
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise UsageError(f"CONTENT_ENGINE_URL={url!r} is not an http(s) URL")
    return url


class UsageError(Exception):
    """Bad arguments or settings (exit 2)."""


class EngineError(Exception):
    """The engine answered with an error status (exit 1)."""


class Unreachable(Exception):
    """No answer from the engine (exit 3)."""


def call(method: str, path: str, body: dict | None = None) -> dict:
    url = engine_url() + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise EngineError(f"{method} {url} -> HTTP {exc.code}: {error_message(exc)}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(
            f"cannot reach the content engine at {engine_url()} ({reason}); is it running? (set CONTENT_ENGINE_URL)"
        ) from None
    except json.JSONDecodeError:
        raise EngineError(f"{method} {url} answered with something that is not JSON") from None


def error_message(exc: urllib.error.HTTPError) -> str:
    """The error's message from the body (FastAPI's ``detail`` or an ``error`` object), else its reason."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        return str(exc.reason)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"].get("message")
    if isinstance(detail, list):  # FastAPI validation errors: name the fields
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return str(detail or exc.reason)


def start(topic: str) -> dict:
    topic = " ".join(topic.split())
    if not topic:
        raise UsageError("the topic is empty")
    if len(topic) > MAX_TOPIC_CHARS:
        raise UsageError(f"the topic is {len(topic)} characters; at most {MAX_TOPIC_CHARS}")
    job = call("POST", "/jobs", {"topic": topic})
    if "id" not in job:
        raise EngineError(f"POST /jobs answered without a job id: {json.dumps(job)[:200]}")
    return job


def status(job_id: str) -> dict:
    job_id = job_id.strip()
    if not job_id or "/" in job_id:
        raise UsageError(f"{job_id!r} is not a job id")
    return call("GET", f"/jobs/{urllib.parse.quote(job_id)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="content_engine.py", description="Start or inspect content-engine jobs.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("start", help="start a job on a topic").add_argument("topic", nargs="+")
    commands.add_parser("status", help="show a job").add_argument("job_id")
    args = parser.parse_args(argv)
    try:
        job = start(" ".join(args.topic)) if args.command == "start" else status(args.job_id)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(job, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
