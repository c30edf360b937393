"""The shipped model configs (official HF config.json values) and how to build a model from one.

Four JSON files in ``configs/`` carry the published config of each model this phase reasons
about, with the URL it was copied from under ``_source``. Any other HF ``config.json`` path
works too, so the arithmetic here applies to whatever model a practitioner is sizing.
Keys starting with ``_`` are ours (source, display name) and are stripped before transformers
sees the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
SHIPPED = ("gpt2-124m", "llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b")


def config_path(name_or_path: str) -> Path:
    """A shipped config name (``llama-3.1-8b``) or a path to any config.json / model folder."""
    if name_or_path in SHIPPED:
        return CONFIG_DIR / f"{name_or_path}.json"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(
            f"config {name_or_path!r}: not a shipped config ({', '.join(SHIPPED)}) "
            "and no such config.json file or model folder"
        )
    return path


def load_config(name_or_path: str) -> dict[str, Any]:
    """The config as a dict; ``_name`` defaults to the file stem, ``_source`` to the file path."""
    path = config_path(name_or_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ConfigError(f"{path}: expected a transformers config.json object with a 'model_type' field")
    data.setdefault("_name", path.stem if path.name != "config.json" else path.parent.name)
    data.setdefault("_source", str(path))
    return data


def hf_config(data: dict[str, Any]):
    """A transformers PretrainedConfig from the dict (our ``_`` keys dropped)."""
    from transformers import AutoConfig  # noqa: PLC0415 (heavy: transformers loads on first use)

    fields = {k: v for k, v in data.items() if not k.startswith("_")}
    model_type = fields.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"config {data.get('_name')}: transformers cannot build model_type {model_type!r}: {exc}"
        ) from None


def meta_model(data: dict[str, Any]):
    """The full architecture with no weights: every parameter lives on the meta device (0 bytes).

    Shapes, module types and parameter counts are exact; nothing is allocated, so a 70B model
    builds in a second on a laptop.
    """
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 (heavy: transformers loads on first use)

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config(data))
