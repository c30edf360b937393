"""Find, or start, the OpenAI-compatible model server an ``openai:<model>@<url>`` spec points at.

Why this exists: the a100 profiles of the agentic phases (13–16) talk to a capable open model over
HTTP, and nothing else brings that server up. vLLM cannot share the lab's venv (its pins fight
torch, transformers and fastapi here), so it runs from its own (``make vllm``); the fallback the lab
can start by itself is ``lab serve`` on the same GPU. A result must also say which of the two
answered and which model it served, since "the a100 run" means nothing if a small model stood in.

``ensure_server(spec)`` decides, in this order:

1. A spec that is not ``openai:<model>@<url>`` (``local:``, ``anthropic:``, ``openai:<model>`` on
   api.openai.com) needs no server here: it is used as given.
2. ``GET <url>/models`` answers: that server is used. Its kind comes from the model card's
   ``owned_by`` (``vllm`` for vLLM, ``lab`` for ``lab serve``); its model is the one asked for if it
   is listed, else the first one it lists (and the spec handed back names that one, so requests do
   not 404: the substitution shows in ``Served.model`` instead). A server that answers without a
   model list is used as given, its model marked "(unverified)" so no result claims it.
3. Nothing answers, the URL is on loopback and ``start`` is allowed: ``lab serve --llm <serve_spec>``
   (default ``local:<model>``) is started as a subprocess on that host and port, waited for until
   ``/models`` answers, and stopped when the ``with`` block ends.
4. Otherwise: ``MissingResource`` naming the two ways to start one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lab.errors import LabError, MissingResource
from lab.processes import stop

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROBE_TIMEOUT_S = 3.0
# a first `lab serve` of an 8B model downloads ~16 GB before it listens: allow for it
START_TIMEOUT_S = float(os.environ.get("LAB_SERVER_START_TIMEOUT_S", "1800"))
SERVER_KINDS = {"vllm": "vLLM", "lab": "lab serve"}  # owned_by -> the server's name
VLLM_HINT = (
    "start vLLM from its own venv (`make vllm`, then the launch command it prints) or let the lab start "
    "`lab serve` on loopback"
)


@dataclass(frozen=True)
class Served:
    """What a run talks to: the spec to build its client with and what was found behind it."""

    spec: str  # the spec to pass to lab.llm.from_spec (names the served model)
    requested: str  # the spec the run asked for
    server: str  # "vLLM" | "lab serve" | "in-process" | "hosted" | "owned_by <x>"
    model: str  # the model id that answers
    base_url: str | None = None
    started_here: bool = False  # this process started the server (and stops it)

    def runs(self, model: str) -> bool:
        """Is ``model`` the one served? Equal ids, or the same repo name under another owner or a
        local path (vLLM serves ``/models/Llama-3.1-8B-Instruct`` under its path unless renamed)."""
        return same_model(self.model, model)

    def provenance(self) -> dict[str, Any]:
        """Fields for ``ctx.model(...)``: which server, which model, where, started by whom."""
        return {
            "server": self.server,
            "served_model": self.model,
            "base_url": self.base_url,
            "server_started_here": self.started_here,
        }


def same_model(a: str, b: str) -> bool:
    """Model ids equal up to case, or with the same last path component (owner or folder aside)."""

    def last(model_id: str) -> str:
        return model_id.rstrip("/").rsplit("/", 1)[-1].lower()

    return a.lower() == b.lower() or last(a) == last(b)


def openai_endpoint(spec: str) -> tuple[str, str] | None:
    """``(model, base_url)`` of an ``openai:<model>@<url>`` spec; None for any other spec."""
    provider, _, rest = spec.partition(":")
    model, sep, url = rest.rpartition("@")
    if provider != "openai" or not sep or not model or not url.startswith(("http://", "https://")):
        return None
    return model, url.rstrip("/")


def server_kind(card: dict[str, Any]) -> str:
    owner = str(card.get("owned_by") or "unknown")
    return SERVER_KINDS.get(owner, f"owned_by {owner}")


def probe(base_url: str, api_key: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> list[dict] | None:
    """The model cards ``GET <base_url>/models`` lists, None when nothing answers there, ``[]`` when a
    server answers without a model list (some OpenAI-compatible servers and test doubles lack the
    route: it is used, but what it serves cannot be checked)."""
    import httpx  # noqa: PLC0415 (httpx loads only on the path that uses it)

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        reply = httpx.get(f"{base_url}/models", headers=headers, timeout=timeout_s)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError):
        return None
    if reply.status_code in (401, 403):
        raise MissingResource(
            f"{base_url}/models answered {reply.status_code}: the server wants an API key; "
            "export OPENAI_API_KEY with it"
        )
    try:
        cards = reply.json().get("data") if reply.status_code == 200 else None
    except (ValueError, AttributeError):
        cards = None
    return [c for c in cards if isinstance(c, dict) and c.get("id")] if isinstance(cards, list) else []


def pick(cards: list[dict], wanted: str) -> dict:
    """The card of ``wanted`` if listed, else the first base model (vLLM lists LoRA modules with a parent)."""
    for card in cards:
        if card.get("id") == wanted:
            return card
    return next((c for c in cards if not c.get("parent")), cards[0])


def found(spec: str, model: str, base_url: str, card: dict, started: bool) -> Served:
    return Served(
        spec=f"openai:{card['id']}@{base_url}",
        requested=spec,
        server=server_kind(card),
        model=str(card["id"]),
        base_url=base_url,
        started_here=started,
    )


@contextmanager
def ensure_server(
    spec: str,
    *,
    serve_spec: str | None = None,
    start: bool = True,
    api_key: str | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    log: Callable[[str], None] = lambda _: None,
) -> Iterator[Served]:
    """Yield what ``spec`` runs on, finding or starting its server first (see the module doc).

    ``serve_spec``: what a started ``lab serve`` serves (default ``local:<model of spec>``: the same
    model on this machine's GPU); ``start=False`` only finds. A server started here is stopped when
    the block ends; one that was found is left running."""
    endpoint = openai_endpoint(spec)
    if endpoint is None:
        provider, _, rest = spec.partition(":")
        yield Served(
            spec=spec,
            requested=spec,
            server="in-process" if provider == "local" else "hosted",
            model=rest.rpartition("@")[0] or rest,
        )
        return
    model, base_url = endpoint
    key = api_key or os.environ.get("OPENAI_API_KEY")
    cards = probe(base_url, key)
    if cards == []:  # it answers, but does not say what it serves: never counted as the model asked for
        log(f"a server answers at {base_url} without a model list; using it as {model} (unverified)")
        yield Served(
            spec=spec,
            requested=spec,
            server="unknown (no model list)",
            model=f"{model} (unverified)",
            base_url=base_url,
        )
        return
    if cards is not None:
        card = pick(cards, model)
        log(f"found {server_kind(card)} at {base_url} serving {card['id']}")
        yield found(spec, model, base_url, card, started=False)
        return
    parts = urlsplit(base_url)
    if not start or parts.hostname not in LOOPBACK:
        why = "" if start else " (starting one was not allowed)"
        raise MissingResource(
            f"no OpenAI-compatible server answers at {base_url}{why}: {VLLM_HINT}"
            + ("" if parts.hostname in LOOPBACK else "; the lab starts servers only on loopback")
        )
    with started_lab_serve(
        serve_spec or f"local:{model}", parts.hostname, parts.port or 80, base_url, start_timeout_s, log
    ) as cards:
        if not cards:
            raise LabError(f"the lab serve started at {base_url} lists no model: another program holds that port")
        yield found(spec, model, base_url, pick(cards, model), started=True)


@contextmanager
def started_lab_serve(
    serve_spec: str, host: str, port: int, base_url: str, timeout_s: float, log: Callable[[str], None]
) -> Iterator[list[dict]]:
    """Run ``lab serve --llm serve_spec`` on host:port until the block ends; yields its model cards once
    ``/models`` answers. Its output goes to a log file whose tail any failure quotes."""
    command = [sys.executable, "-m", "lab", "serve", "--llm", serve_spec, "--host", host, "--port", str(port)]
    log(f"nothing answers at {base_url}: starting {' '.join(command[1:])}")
    with tempfile.NamedTemporaryFile("w+b", prefix="lab-serve-", suffix=".log") as out:
        env = {k: v for k, v in os.environ.items() if k not in ("LAB_LLM", "LAB_SERVE_API_KEY")}
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            cards = wait_ready(proc, base_url, timeout_s, lambda: _tail(out.name))
            log(f"lab serve ready at {base_url} (pid {proc.pid})")
            yield cards
        finally:
            stop(proc, grace_s=15)


def wait_ready(proc: subprocess.Popen, base_url: str, timeout_s: float, tail: Callable[[], str]) -> list[dict]:
    """Poll ``/models`` until it answers; the process exiting or the deadline passing is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise LabError(
                f"lab serve for {base_url} exited with status {proc.returncode} before it answered; "
                f"its log ends:\n{tail()}"
            )
        cards = probe(base_url, timeout_s=1.0)
        if cards is not None:
            return cards
        if time.monotonic() > deadline:
            raise LabError(
                f"lab serve for {base_url} did not answer within {timeout_s:.0f} s "
                f"(LAB_SERVER_START_TIMEOUT_S); its log ends:\n{tail()}"
            )
        time.sleep(0.25)


def _tail(path: str, n_bytes: int = 2000) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return data[-n_bytes:].decode("utf-8", "replace").strip() or "(empty)"
