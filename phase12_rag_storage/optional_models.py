"""Load a model that may not exist on this machine, or say precisely why not (never fake it).

``lab.models.resolve`` returns a local folder when the model is cached/embedded and the bare hub id
otherwise; without network, sentence-transformers then retries for minutes. So a hub id is only
tried after a 3-second reachability check of the hub.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lab import models
from lab.errors import MissingResource


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_or_reason(model_id: str, loader: Callable[[str], Any]) -> tuple[Any | None, str | None]:
    """(model, None) when it loads; (None, reason) when it cannot be loaded here."""

    try:
        where = models.resolve(model_id)
    except MissingResource as exc:
        return None, f"not in the HF cache and not embedded ({exc})"
    if not Path(where).exists() and not hub_reachable():
        return None, "not in the HF cache and the hub is unreachable (offline)"
    try:
        return loader(where), None
    except Exception as exc:  # a download or load error is a finding, not a crash
        return None, f"failed to load: {type(exc).__name__}: {str(exc)[:200]}"
