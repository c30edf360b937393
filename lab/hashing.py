"""Content hashes for provenance: hash what was used (config, rubric, prompts, files), not its name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def json_sha256(obj: Any, *, ascii_only: bool = True) -> str:
    """sha256 of a canonical JSON encoding (sorted keys), stable across runs and machines."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=ascii_only, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
