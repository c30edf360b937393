"""Serve any ASGI app on a free loopback port in a background thread.

``lab.serve.background.serving`` does this for a model; the OpenClaw lesson also needs it for two
small apps of its own: the recording proxy in front of ``lab serve`` (``model_recorder``) and the
double of the content-engine API (``engine_double``). The port is bound before the server starts,
so there is no race for a "free" port; leaving the block stops the server and joins its thread.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

START_TIMEOUT_S = 30.0


@contextmanager
def serving_app(app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "asgi") -> Iterator[str]:
    """Yield ``http://127.0.0.1:PORT`` while ``app`` is served there."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
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
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
