"""The conditions a result was produced under: git, package versions, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lab.paths import REPO_ROOT

KEY_PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "gguf",
    "peft",
    "trl",
    "datasets",
    "bitsandbytes",
    "sentence-transformers",
    "chromadb",
    "psycopg",
    "pgvector",
    "pgserver",
    "ragas",
    "anthropic",
    "openai",
    "numpy",
    "pydantic",
)


def _git(*args: str, cwd: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(repo: Path = REPO_ROOT) -> dict:
    """sha, branch, and whether tracked code differs from it (results/ are outputs, not code)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", cwd=repo)
    return {
        "sha": _git("rev-parse", "HEAD", cwd=repo),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo),
        "dirty": bool(status) if status is not None else None,
    }


def package_versions(names=KEY_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {k: v for k, v in versions.items() if v is not None}


def env_info() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


def gpu_info() -> tuple[list[dict], str | None]:
    """GPUs via torch when it is already imported (a run that used it), else none."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return [], None
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 1e9, 1)})
    return gpus, torch.version.cuda


def hardware_info() -> dict:
    gpus, cuda = gpu_info()
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "gpus": gpus,
        "cuda": cuda,
        # other work on the machine skews timings: record the 1-minute load average at write time
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
