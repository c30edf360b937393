"""`lab doctor`: what a new user has and what is missing, with what to do about it."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Iterator

API_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "LAB_DATABASE_URL", "LAB_CRDB_URL", "LAB_LLM")

Check = tuple[str, bool | None, str]  # (name, ok / missing / optional, detail)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def checks() -> Iterator[Check]:
    yield "python", platform.python_version() >= "3.10", platform.python_version()
    torch_v = _version("torch")
    yield "torch", torch_v is not None, torch_v or "not installed: run `make setup`"
    if torch_v:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            yield "GPU / CUDA", True, f"{names}; CUDA {torch.version.cuda}"
        else:
            yield "GPU / CUDA", None, "no GPU: the cpu profile runs; the a100 profile needs a CUDA GPU"
    for pkg in ("transformers", "peft", "trl", "sentence-transformers", "chromadb", "psycopg", "pgserver",
                "anthropic", "openai", "tenacity"):
        v = _version(pkg)
        yield pkg, v is not None, v or "not installed: run `make setup`"

    from lab import models

    for key in models.EMBEDDED:
        path = models.local_path(key)
        yield f"model {key}", path is not None, str(path) if path else "not fetched: run `lab models fetch`"

    try:
        from lab import db

        info = db.server_version()
        where = "LAB_DATABASE_URL" if os.environ.get("LAB_DATABASE_URL") else "embedded pgserver"
        yield "database", True, f"{where}: {info['server']}, pgvector {info['pgvector']}"
    except Exception as exc:  # report, never crash the doctor
        yield "database", False, f"{type(exc).__name__}: {exc}"

    for key in API_KEYS:
        yield key, None, "set" if os.environ.get(key) else "not set"
