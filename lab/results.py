"""Writing and reading result files: atomic, redacted, with a small per-exercise history.

Layout::

    results/<phase>/<exercise>/<profile>/result.json   the last good (or only) result
    results/<phase>/<exercise>/<profile>/result.md     rendered from result.json
    results/<phase>/<exercise>/<profile>/*.png         artifacts of that same run
    results/<phase>/<exercise>/.history/<profile>-<run_id>.json   last HISTORY_KEEP runs (gitignored)

A failed or skipped run goes to the history only, unless no result exists yet for that profile
(then it is written, so the failure is visible). A good result is never replaced by a bad one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lab import paths
from lab.schema import upgrade, validate

HISTORY_KEEP = 10

# "token" as a credential (bot_token, hf_token), not a tokenizer or a token count
_SECRET_KEY = re.compile(r"(api[_-]?key|token(?![a-z])|secret|password|passwd|authorization)", re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):(?P<pw>[^@\s]+)@", re.I)
# API keys (OpenAI/Anthropic sk-, Hugging Face hf_), Telegram bot tokens (<bot id>:<35 chars>), bearer tokens
_TOKEN_LIKE = re.compile(
    r"\b(sk-(?:ant-)?[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,}|\d{6,12}:[A-Za-z0-9_-]{30,})\b"
    r"|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}"
)
REDACTED = "***"


def redact_text(text: str) -> str:
    """Free text as a result may keep it: URL passwords and token-looking strings blanked, and this
    checkout's absolute path made repo-relative (a result names files by repo path, never by machine)."""
    text = text.replace(f"{paths.REPO_ROOT}{os.sep}", "")
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}:{REDACTED}@", text)
    return _TOKEN_LIKE.sub(REDACTED, text)


def redact(value: Any, key: str = "") -> Any:
    """Blank secrets (values under secret-looking keys, and ``redact_text`` on every string)."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_KEY.search(key) and value:
            return REDACTED
        return redact_text(value)
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n"


def load_result(path: Path) -> dict:
    """Read and validate a result.json; errors name the file and the field."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    validate(doc, str(path))
    return upgrade(doc)


def result_dir(root: Path, exercise_id: str, profile: str) -> Path:
    phase, name = exercise_id.split(".", 1)
    return root / phase / name / profile


def history_dir(root: Path, exercise_id: str) -> Path:
    phase, name = exercise_id.split(".", 1)
    return root / phase / name / ".history"


def record_history(root: Path, doc: dict) -> Path:
    hdir = history_dir(root, doc["exercise"]["id"])
    path = hdir / f"{doc['profile']}-{doc['run_id']}.json"
    atomic_write_text(path, dumps(doc))
    old = sorted(hdir.glob(f"{doc['profile']}-*.json"))
    for stale in old[:-HISTORY_KEEP]:
        stale.unlink(missing_ok=True)
    return path


def last_run(root: Path, exercise_id: str, profile: str) -> dict | None:
    """Most recent run of any status (history first, else the committed result)."""
    hdir = history_dir(root, exercise_id)
    runs = sorted(hdir.glob(f"{profile}-*.json")) if hdir.exists() else []
    for path in reversed(runs):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
    current = result_dir(root, exercise_id, profile) / "result.json"
    return json.loads(current.read_text(encoding="utf-8")) if current.exists() else None


def publish(staging: Path, target: Path, doc: dict, markdown: str) -> bool:
    """Move a finished run from its staging folder into place; returns whether it was published.

    ok runs replace the target folder; failed/skipped runs only fill an empty slot.
    """
    existing = target / "result.json"
    if doc["status"] != "ok" and existing.exists():
        shutil.rmtree(staging, ignore_errors=True)
        return False
    atomic_write_text(staging / "result.md", markdown)
    atomic_write_text(staging / "result.json", dumps(doc))
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".old-{target.name}-{doc['run_id']}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return True
