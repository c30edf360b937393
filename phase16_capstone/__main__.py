"""``python -m phase16_capstone run|worker|serve`` — the engine's command line.

    run "topic" [--corpus DIR] [--site DIR]     one job, here and now; prints its stages and the post path
    worker                                      claim and run jobs until stopped (any number, any machine)
    serve [--host 127.0.0.1] [--port 8090]      the HTTP API + Telegram webhook, with worker threads

Common options: the engine's settings (``phase16_capstone.engine.EngineSettings``; ``--help`` lists them
with their defaults): ``--llm SPEC`` (else ``$LAB_LLM``, else the embedded chat model), ``--namespace``
(the tables' prefix), ``--lease-s``, ``--k``, ... The database is ``LAB_CRDB_URL`` if set, else
``LAB_DATABASE_URL``, else the embedded PostgreSQL. The site is ``--site DIR`` (default ``runs/site``) or
``--site git+URL`` (commit + push); ``--site-url`` (else ``ENGINE_SITE_URL``) is where readers find it, so
a job's ``post_url`` is that URL + the post's path (the site-relative path when unset). Telegram:
``ENGINE_TELEGRAM_SECRET`` (the webhook), ``ENGINE_TELEGRAM_TOKEN`` and ``ENGINE_TELEGRAM_API`` (the
replies). ``serve`` logs one line per record, request data escaped (``http_guard``).
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import sys
import threading

from rich.console import Console

from lab.errors import LabError
from lab.llm import DEFAULT_SPEC, from_spec
from lab.toolchain import quiet_frameworks
from phase15_production.resilient_calls import ResilientLLM
from phase16_capstone.api import create_app
from phase16_capstone.engine import Engine, EngineSettings, deploy_for
from phase16_capstone.http_guard import log_config
from phase16_capstone.job_store import JobStore
from phase16_capstone.site_builder import PostRecord, post_path
from phase16_capstone.telegram import Replier, webhook_secret
from phase16_capstone.untrusted import TOPIC, admit


def _parser() -> argparse.ArgumentParser:

    common = argparse.ArgumentParser(add_help=False)
    EngineSettings.add_flags(common)
    parser = argparse.ArgumentParser(prog="python -m phase16_capstone", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run one job now and print the post path")
    run.add_argument("topic")
    worker = sub.add_parser("worker", parents=[common], help="claim and run jobs in a loop")
    worker.add_argument("--exit-when-idle", action="store_true", help="stop once no job is left to do")
    serve = sub.add_parser("serve", parents=[common], help="HTTP API + Telegram webhook")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8090)
    serve.add_argument("--workers", type=int, default=1, help="worker threads in this process (0: external workers)")
    return parser


def build_engine(args, on_event=None):

    settings = EngineSettings.from_args(args)
    store = JobStore(namespace=settings.namespace, lease_s=settings.lease_s)
    return Engine(
        store,
        engine_llm(settings.llm, settings.fallback),
        deploy_for(settings.site),
        settings,
        on_event=on_event,
        replier=Replier.from_env(),
    )


def engine_llm(spec: str | None, fallbacks: list[str]):
    """The engine's model: ``spec`` alone, or with fallbacks the Phase 15 chain (retries, a breaker per
    provider, the next provider when one is open). Specs, not clients, so each provider is built with
    its own retries off and retries are never multiplied (see ResilientLLM)."""

    if not fallbacks:
        return from_spec(spec)

    return ResilientLLM([spec or os.environ.get("LAB_LLM") or DEFAULT_SPEC, *fallbacks])


def printer(console):
    """The rich progress lines ``run`` prints as the job moves."""

    def on_event(kind: str, info: dict) -> None:
        if kind == "stage":
            console.print(f"[cyan]{info['stage']}[/cyan] …")
        elif kind == "stage_done":
            extra = ""
            if info["stage"] == "writing":
                extra = f"revision {info['revision']}, citation coverage {info['coverage']:.2f}"
            elif info["stage"] == "editing":
                extra = f"{info['verdict']} (mean {info['mean']})" if info.get("mean") is not None else info["verdict"]
            elif info["stage"] == "researching":
                extra = ", ".join(info["evidence"])
            console.print(
                f"  done in {info['seconds']:.1f} s, {info['input_tokens']}+{info['output_tokens']} tokens "
                f"→ [bold]{info['to']}[/bold]  {extra}"
            )
        elif kind == "claimed":
            console.print(f"job {info['job']} claimed at [bold]{info['state']}[/bold] (attempt {info['attempt']})")

    return on_event


def cmd_run(args) -> int:

    console = Console()
    topic = admit(args.topic, TOPIC, "cli")
    engine = build_engine(args, printer(console))
    job, _ = engine.store.create_job(topic, "cli", corpus=args.corpus)
    engine.work(job_id=job.id)
    final = engine.store.get(job.id)
    colour = {"published": "green", "escalated": "yellow"}.get(final.state, "red")
    console.print(f"[{colour}]{final.state}[/{colour}] job {final.id}" + (f": {final.error}" if final.error else ""))
    publication = engine.store.publication(final.id)
    if publication:
        written = engine.deploy.location(post_path(PostRecord.from_dict(publication["post"])))
        console.print(f"post: {final.post_url} (written to {written})")
    console.print(f"site: {engine.deploy.location('index.html')}")
    return 0 if final.state in ("published", "escalated") else 1


def cmd_worker(args) -> int:

    engine = build_engine(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        engine.work(stop=stop, exit_when_idle=args.exit_when_idle)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_serve(args) -> int:

    import uvicorn  # noqa: PLC0415 (uvicorn loads only on the path that uses it)

    logging.config.dictConfig(log_config())
    secret = webhook_secret()
    if not secret:
        logging.getLogger("phase16.api").warning("ENGINE_TELEGRAM_SECRET is not set: /telegram/webhook is NOT exposed")
    stop = threading.Event()
    engines = [build_engine(args) for _ in range(args.workers)]
    threads = [
        threading.Thread(target=e.work, kwargs={"stop": stop}, daemon=True, name=f"engine-worker-{i}")
        for i, e in enumerate(engines)
    ]
    for t in threads:
        t.start()
    store = engines[0].store if engines else build_engine(args).store
    try:
        uvicorn.run(
            create_app(store, corpus=args.corpus, webhook_secret=secret),
            host=args.host,
            port=args.port,
            log_config=log_config(),
            log_level="info",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    return 0


def main(argv: list[str] | None = None) -> int:

    quiet_frameworks()
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "worker": cmd_worker, "serve": cmd_serve}[args.command](args)
    except (LabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
