"""Folders published atomically, and a lock that makes parallel processes build a shared thing once.

A folder is built under a temporary name beside its target and renamed into place, so a reader sees
either nothing or the whole folder, never half of one. ``file_lock`` serialises the builders of one
thing across processes (``lab run all --jobs N``): the second waits, then finds it built.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the ``with`` block."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def staging_dir(target: Path) -> Path:
    """A fresh, uniquely named folder beside ``target`` (same filesystem, so the rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A staging folder for ``target`` (``staging_dir``) that is removed on the way out unless it was
    published inside the block: a failed build leaves nothing behind."""
    folder = staging_dir(target)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # a published folder was renamed away already


def publish_dir(staging: Path, target: Path) -> bool:
    """Rename a finished staging folder to ``target``; False (staging removed) if target already exists."""
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        return False
    try:
        os.rename(staging, target)
    except OSError:
        if target.exists():  # another process published first
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise
    return True
