"""Serve a model on a free loopback port in a background thread, for tests and exercises::

    from lab.serve.background import serving

    with serving(EMBEDDED_LLM.spec, api_key="sk-test") as url:                # lab.models.EMBEDDED_LLM
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test")      # OpenAI SDKs: url + /v1
        claude = anthropic.Anthropic(base_url=url, api_key="sk-test")         # Anthropic SDK: url

``serving_app(app)`` does the same for any ASGI app (the capstone's API, an engine double). The port is bound
before the server starts (no race for a "free" port); leaving the block stops the server and joins
its thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lab.llm import from_spec
from lab.llm.base import LLM
from lab.serve.app import create_app

START_TIMEOUT_S = 30.0


@contextmanager
def serving(
    llm: LLM | str | Sequence[LLM | str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    **app_kwargs: Any,
) -> Iterator[str]:
    """Yield the root URL (``http://127.0.0.1:PORT``) of ``lab serve`` for ``llm`` (an LLM or a spec, or a
    list of them, the first the default; None = $LAB_LLM or the embedded chat model). ``app_kwargs`` go to
    ``create_app`` (api_key, max_queue, embedders, default_max_tokens, model_names)."""

    given: list[LLM | str | None] = [llm] if llm is None or isinstance(llm, (LLM, str)) else list(llm)
    models = [m if isinstance(m, LLM) else from_spec(m) for m in given]
    with serving_app(
        create_app(models, **app_kwargs), host=host, port=port, log_level=log_level, name="lab serve"
    ) as url:
        yield url


@contextmanager
def serving_app(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", name: str = "asgi app"
) -> Iterator[str]:
    """Yield the root URL while any ASGI app (an API, a double of one) is served there by uvicorn
    in a daemon thread; leaving the block stops the server and joins the thread."""
    import uvicorn  # noqa: PLC0415 (uvicorn loads only on the path that uses it)

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{bound}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name} on {host}:{bound} stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} on {host}:{bound} did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        yield f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
