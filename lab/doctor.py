"""`lab doctor`: what a new user has and what is missing, with what to do about it."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from importlib import metadata

from lab import db, models, toolchain
from lab.doctor_a100 import a100_checks
from lab.llm.engine import llama_cpp_unavailable

API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "LAB_DATABASE_URL", "LAB_CRDB_URL", "LAB_LLM")

Check = tuple[str, bool | None, str]  # (name, ok / missing / optional, detail)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


# the agent layer (Phases 13-16): structured generation, the HTTP face, frameworks, resilience, tracing
AGENT_PACKAGES = (
    "xgrammar",
    "fastapi",
    "uvicorn",
    "langgraph",
    "langgraph-checkpoint-postgres",
    "langchain-openai",
    "crewai",
    "python-telegram-bot",
    "opentelemetry-sdk",
    "pybreaker",
)


def agent_toolchain() -> Iterator[Check]:

    for pkg in AGENT_PACKAGES:
        v = _version(pkg)
        yield pkg, v is not None, v or "not installed: run `make setup`"
    node = toolchain.node_bin()
    node_v = toolchain.version_of([str(node), "--version"]) if node else None
    if node_v:
        ok = toolchain.node_ok(node_v)
        yield "node (for OpenClaw)", ok, f"{node_v} at {node}" + ("" if ok else ": OpenClaw needs 24.16+ or 26.1+")
    else:
        yield "node (for OpenClaw)", False, f"not in {toolchain.node_prefix()}: run `make setup`"
    claw = toolchain.openclaw_bin()
    claw_v = toolchain.version_of([str(claw), "--version"]) if claw and node_v else None
    yield "openclaw", claw_v is not None, claw_v or f"not in {toolchain.node_prefix()}: run `make setup`"
    quiet = [k for k, v in toolchain.TELEMETRY_OFF.items() if os.environ.get(k) == v]
    loud = [k for k in toolchain.TELEMETRY_OFF if k not in quiet]
    yield (
        "framework telemetry",
        not loud,
        (
            "off (lab.toolchain.TELEMETRY_OFF)"
            if not loud
            else "switched back on in the environment: " + ", ".join(loud)
        ),
    )


def engine_check() -> Check:
    """Which engine runs the embedded chat model here (lab.llm.engine), and why."""

    why = llama_cpp_unavailable()
    if why is None:
        return (
            "llama.cpp engine",
            True,
            f"llama-cpp-python {_version('llama-cpp-python')}: local GGUF models decode on it",
        )
    return "llama.cpp engine", False, f"{why}; local models fall back to transformers (about 4x slower decode)"


def checks() -> Iterator[Check]:
    yield "python", sys.version_info >= (3, 11), f"{platform.python_version()} (3.11+ needed: transformers, trl)"
    torch_v = _version("torch")
    yield "torch", torch_v is not None, torch_v or "not installed: run `make setup`"
    if torch_v:
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            yield "GPU / CUDA", True, f"{names}; CUDA {torch.version.cuda}"
        else:
            yield "GPU / CUDA", None, "no GPU: the cpu profile runs; the a100 profile needs a CUDA GPU"

        yield from a100_checks(torch.version.cuda, torch.cuda.is_available())
    yield engine_check()
    for pkg in (
        "transformers",
        "peft",
        "trl",
        "sentence-transformers",
        "chromadb",
        "psycopg",
        "pgserver",
        "anthropic",
        "openai",
        "tenacity",
    ):
        v = _version(pkg)
        yield pkg, v is not None, v or "not installed: run `make setup`"
    yield from agent_toolchain()

    for key in models.EMBEDDED:
        path = models.local_path(key)
        yield f"model {key}", path is not None, str(path) if path else "not fetched: run `lab models fetch`"

    try:
        info = db.server_version()
        where = "LAB_DATABASE_URL" if os.environ.get("LAB_DATABASE_URL") else "embedded pgserver"
        yield "database", True, f"{where}: {info['server']}, pgvector {info['pgvector']}"
    except Exception as exc:  # report, never crash the doctor
        yield "database", False, f"{type(exc).__name__}: {exc}"

    for key in API_KEYS:
        yield key, None, "set" if os.environ.get(key) else "not set"
