"""Run the pinned OpenClaw headless, isolated, against any OpenAI-compatible model server.

OpenClaw is a Node program with a lot of ambient state: a config and a state directory under
``~/.openclaw``, a workspace, bundled and personal skill roots, an update check. To run it as an
experiment, and in tests, every one of those is made private to one folder:

- ``HOME``, ``OPENCLAW_STATE_DIR`` and ``OPENCLAW_CONFIG_PATH`` point inside that folder, so no
  personal config, credential or skill leaks in and nothing is written outside it;
- the config names a single model provider (``models.mode: "replace"``) whose base URL is the
  server you give (``lab serve``, or the recording proxy in front of it), and switches off the
  update check and telemetry (``OPENCLAW_NO_AUTO_UPDATE=1`` as well);
- the workspace holds the skills you install (``WORKSPACE/skills/NAME/SKILL.md``), the highest
  precedence skill root.

A turn is ``openclaw agent exec MSG --config CFG --model P/M --json --cwd WORKSPACE --timeout N``:
the embedded agent, no gateway, temporary session state, a stable JSON envelope on stdout (exit
0 ok, 1 error, 2 timeout). ``run_turn`` returns it as a ``TurnRecord``. The project's Node comes
first on PATH (``lab.toolchain.node_env``), and so does this Python (a skill's ``python3``).

A channel needs the gateway instead: ``add_telegram_channel`` adds a loopback gateway and OpenClaw's
own Telegram channel to the config, its Bot API root (``channels.telegram.apiRoot``) wherever you
point it — Telegram, or a local Bot API double in tests — and ``gateway(setup)`` runs
``openclaw gateway run`` for the length of a ``with`` block. The channel long-polls ``getUpdates``,
hands each allowed direct message to the agent and sends the agent's reply with ``sendMessage``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.processes import stop
from lab.toolchain import TELEMETRY_OFF, node_bin, node_env, openclaw_bin, version_of

PROVIDER = "lab"
SKILLS_DIR = Path(__file__).parent / "skills"
# a "narrow" agent for one job: the two tools the skill needs and no other skill in its catalog
NARROW_TOOLS = ("read", "exec")


class OpenClawMissing(RuntimeError):
    """Node or OpenClaw is not installed where ``lab.toolchain`` looks (``make setup`` installs them)."""


@dataclass(frozen=True)
class Setup:
    """One isolated OpenClaw: its folder, private HOME and state, config file and workspace."""

    root: Path
    home: Path
    state: Path
    config: Path
    workspace: Path
    model_ref: str  # "provider/model" as OpenClaw names it
    env: dict[str, str] = field(repr=False, default_factory=dict)  # extra variables for its processes


@dataclass
class TurnRecord:
    """One headless turn: what the process returned and what its JSON envelope says."""

    exit_code: int
    status: str  # ok | error | timeout (from the envelope), or "no-envelope"
    reply: str
    tool_calls: int
    tools_used: list[str]
    assistant_turns: int | None
    usage: dict[str, Any] | None
    latency_s: float
    error: str | None = None
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_openclaw() -> tuple[Path, Path]:
    node, openclaw = node_bin(), openclaw_bin()
    if node is None or openclaw is None:
        raise OpenClawMissing(
            "Node/OpenClaw are not installed in the project's node prefix "
            "(lab.toolchain.node_prefix()); run `make setup`"
        )
    return node, openclaw


def versions() -> dict[str, str | None]:
    node, openclaw = require_openclaw()
    return {"openclaw": version_of([str(openclaw), "--version"]), "node": version_of([str(node), "--version"])}


def openclaw_config(
    *,
    base_url: str,
    api_key: str,
    model: str,
    context_window: int,
    max_tokens: int,
    workspace: Path,
    narrow: bool = False,
    skills: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The config: one loopback provider, update check and telemetry off; ``narrow`` also limits the
    agent to ``NARROW_TOOLS`` and the catalog to ``skills`` (tool policy and skill allowlist)."""
    provider = {
        "baseUrl": f"{base_url.rstrip('/')}/v1",
        "apiKey": api_key,
        "api": "openai-completions",
        "models": [{"id": model, "name": model, "contextWindow": context_window, "maxTokens": max_tokens}],
    }
    defaults: dict[str, Any] = {"model": {"primary": f"{PROVIDER}/{model}"}, "workspace": str(workspace)}
    config: dict[str, Any] = {
        "update": {"checkOnStart": False},
        "telemetry": {"enabled": False},
        "models": {"mode": "replace", "providers": {PROVIDER: provider}},
        "agents": {"defaults": defaults},
    }
    if narrow:
        # toolSearch off: OpenClaw's structured Tool Search (on by default for a local model) would add its
        # meta-tools tool_search / tool_describe / tool_call beside the allowed ones (docs/tools/tool-search.md)
        # loopDetection on: OpenClaw's own guard stops a turn that repeats calls without progress (off by
        # default; docs/tools/loop-detection.md) — a small model otherwise loops until the window overflows
        config["tools"] = {"allow": list(NARROW_TOOLS), "toolSearch": False, "loopDetection": {"enabled": True}}
        defaults["skills"] = list(skills)
    return config


def install_skill(workspace: Path, source: Path) -> Path:
    """Copy a skill folder into ``WORKSPACE/skills/<folder name>`` (the workspace skill root)."""
    if not (source / "SKILL.md").is_file():
        raise FileNotFoundError(f"{source}: not a skill folder (no SKILL.md)")
    target = workspace / "skills" / source.name
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def make_setup(
    root: Path,
    *,
    base_url: str,
    api_key: str,
    model: str,
    context_window: int,
    max_tokens: int = 512,
    skills: tuple[Path, ...] = (SKILLS_DIR / "content-engine",),
    narrow: bool = False,
    env: dict[str, str] | None = None,
) -> Setup:
    """Create the folder layout, install ``skills`` into the workspace and write the config."""
    root = Path(root)
    home, state, workspace = root / "home", root / "state", root / "workspace"
    for folder in (home, state, workspace):
        folder.mkdir(parents=True, exist_ok=True)
    names = tuple(skill_name(install_skill(workspace, s)) for s in skills)
    config = openclaw_config(
        base_url=base_url,
        api_key=api_key,
        model=model,
        context_window=context_window,
        max_tokens=max_tokens,
        workspace=workspace,
        narrow=narrow,
        skills=names,
    )
    path = root / "openclaw.json"
    path.write_text(json.dumps(config, indent=2))
    return Setup(root, home, state, path, workspace, f"{PROVIDER}/{model}", dict(env or {}))


def skill_name(folder: Path) -> str:
    """The ``name`` in a SKILL.md's front matter (OpenClaw falls back to the folder name)."""
    return read_front_matter(folder / "SKILL.md").get("name") or folder.name


def read_front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a SKILL.md; a file without one is an error naming the file."""

    text = Path(path).read_text(encoding="utf-8")
    match = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n", text, re.S)
    if not match:
        raise ValueError(f"{path}: no YAML front matter (a '---' block at the top)")
    data = yaml.safe_load(match.group(1)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the front matter is not a mapping")
    return data


def process_env(setup: Setup) -> dict[str, str]:
    """The environment of every OpenClaw process: isolated paths, the project's Node and Python
    first on PATH, phone-home off."""
    env = node_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(TELEMETRY_OFF)
    env.update(
        HOME=str(setup.home),
        OPENCLAW_STATE_DIR=str(setup.state),
        OPENCLAW_CONFIG_PATH=str(setup.config),
        OPENCLAW_NO_AUTO_UPDATE="1",
        CLAWHUB_DISABLE_TELEMETRY="1",
        NO_COLOR="1",
    )
    env.update(setup.env)
    return env


def skills_list(setup: Setup, timeout_s: float = 120) -> list[dict[str, Any]]:
    """``openclaw skills list --json`` for this setup: every skill it found, with eligibility."""
    _, openclaw = require_openclaw()
    done = subprocess.run(
        [str(openclaw), "skills", "list", "--json"],
        capture_output=True,
        text=True,
        env=process_env(setup),
        timeout=timeout_s,
        cwd=setup.workspace,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openclaw skills list failed ({done.returncode}): {tail(done.stderr or done.stdout)}")
    return json.loads(done.stdout)["skills"]


def run_turn(setup: Setup, message: str, *, timeout_s: int = 600, strace_log: Path | None = None) -> TurnRecord:
    """One ``openclaw agent exec`` turn. ``strace_log``: run it under ``strace -f -e trace=connect``
    and write every connect() there (to check where the process tree connects)."""
    _, openclaw = require_openclaw()
    command = [
        str(openclaw),
        "agent",
        "exec",
        message,
        "--config",
        str(setup.config),
        "--model",
        setup.model_ref,
        "--json",
        "--cwd",
        str(setup.workspace),
        "--timeout",
        str(timeout_s),
    ]
    if strace_log is not None:
        command = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(strace_log), *command]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=process_env(setup),
            cwd=setup.workspace,
            timeout=timeout_s + 120,
        )
    except subprocess.TimeoutExpired as exc:
        return TurnRecord(
            124,
            "timeout",
            "",
            0,
            [],
            None,
            None,
            time.perf_counter() - started,
            error=f"openclaw did not exit within {timeout_s + 120} s",
            stderr_tail=tail(str(exc.stderr or "")),
        )
    latency = time.perf_counter() - started
    return parse_envelope(done.returncode, done.stdout, done.stderr, latency)


def parse_envelope(exit_code: int, stdout: str, stderr: str, latency_s: float) -> TurnRecord:
    """The ``--json`` envelope (``ok, status, final, usage, assistantTurns, toolSummary, error``)."""
    try:
        envelope = json.loads(stdout[stdout.index("{") :]) if "{" in stdout else None
    except json.JSONDecodeError:
        envelope = None
    if not isinstance(envelope, dict):
        return TurnRecord(
            exit_code,
            "no-envelope",
            "",
            0,
            [],
            None,
            None,
            latency_s,
            error=f"no JSON envelope on stdout ({len(stdout)} chars)",
            stderr_tail=tail(stderr),
        )
    summary = envelope.get("toolSummary") or {}
    error = envelope.get("error")
    return TurnRecord(
        exit_code=exit_code,
        status=str(envelope.get("status") or ("ok" if envelope.get("ok") else "error")),
        reply=str(envelope.get("final") or ""),
        tool_calls=int(summary.get("calls") or 0),
        tools_used=list(summary.get("tools") or []),
        assistant_turns=envelope.get("assistantTurns"),
        usage=envelope.get("usage"),
        latency_s=latency_s,
        error=(error.get("message") if isinstance(error, dict) else str(error)) if error else None,
        stderr_tail=tail(stderr),
    )


def add_telegram_channel(setup: Setup, *, api_root: str, bot_token: str, allow_from: list[int]) -> int:
    """Add a loopback gateway (a free port, token auth) and the Telegram channel to the setup's config:
    Bot API root ``api_root`` (the root only: OpenClaw appends ``/bot<TOKEN>/<method>``), direct messages
    only from the numeric user ids in ``allow_from``. Returns the gateway's port."""
    if not allow_from:
        raise ValueError("add_telegram_channel: allow_from needs at least one numeric Telegram user id")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = json.loads(setup.config.read_text())
    config["gateway"] = {
        "mode": "local",
        "port": port,
        "bind": "loopback",
        "auth": {"mode": "token", "token": secrets.token_hex(16)},
    }
    config["channels"] = {
        "telegram": {
            "enabled": True,
            "botToken": bot_token,
            "apiRoot": api_root.rstrip("/"),
            "dmPolicy": "allowlist",
            "allowFrom": [str(u) for u in allow_from],
        }
    }
    setup.config.write_text(json.dumps(config, indent=2))
    return port


@contextmanager
def gateway(setup: Setup, log: Path) -> Iterator[subprocess.Popen]:
    """``openclaw gateway run`` on the config's port while the block runs (its output to ``log``); stopped
    with SIGTERM on leaving (OpenClaw drains the work in flight first), killed if it does not exit."""
    _, openclaw = require_openclaw()
    port = json.loads(setup.config.read_text())["gateway"]["port"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(openclaw), "gateway", "run", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=process_env(setup),
            cwd=setup.workspace,
        )
        try:
            yield proc
        finally:
            stop(proc, grace_s=60)


def connect_destinations(strace_log: Path) -> list[str]:
    """Every ``connect()`` destination in an strace log: ``host:port`` for IP sockets, ``unix:PATH``."""
    found = []
    for line in Path(strace_log).read_text(errors="replace").splitlines():
        if "connect(" not in line:
            continue
        if (unix := re.search(r'sun_path=@?"([^"]*)"', line)) is not None:
            found.append(f"unix:{unix.group(1)}")
        elif (host := re.search(r'inet_(?:addr|pton)\((?:AF_INET6, )?"([^"]+)"', line)) is not None:
            port = re.search(r"sin6?_port=htons\((\d+)\)", line)
            found.append(f"{host.group(1)}:{port.group(1) if port else '?'}")
    return found


def is_loopback(destination: str) -> bool:
    if destination.startswith("unix:"):
        return True
    host = destination.rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or host.startswith("::ffff:127.")


def tail(text: str, chars: int = 2000) -> str:
    return text[-chars:]
