"""Convert a PEFT LoRA adapter (safetensors) into a GGUF LoRA that llama.cpp applies at run time.

**Why convert once.** A LoRA adapter is a low-rank update ``W' = W + s·B·A``: a few MB of ``A`` and
``B`` next to the base model. llama.cpp can add ``s·B·(A·x)`` to every adapted matmul of the
quantized base while it runs, so one base GGUF serves any number of adapters and nothing is merged
(merging into a Q4/Q8 base would mean dequantizing, adding and quantizing again, per adapter). llama.cpp
only reads GGUF, with its own tensor names and layout, so each adapter is rewritten once, here,
the way llama.cpp's ``convert_lora_to_gguf.py`` does it.

**The permutation.** Hugging Face Llama checkpoints apply RoPE to the two *halves* of each head
(``rotate_half``); llama.cpp rotates *adjacent* pairs. ``convert_hf_to_gguf.py`` therefore reorders
the rows of every head of ``q_proj`` and ``k_proj`` in the base GGUF (``LlamaModel.permute``). The
update ``B·A`` adds to those rows, so ``B`` (one row per output) must get the same reordering; ``A``
acts on the input and stays as it is. Skip it and the adapter loads without complaint and silently
computes the wrong thing.

**The scale.** PEFT scales the update by ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with
rsLoRA; llama.cpp always uses ``alpha / r``. The file stores the alpha that gives PEFT's scale.
Anything else a PEFT config can switch on (DoRA, per-module ranks, extra trained modules, biases)
has no place in a GGUF LoRA, and the converter refuses it instead of writing an adapter that
behaves differently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lab.errors import ConfigError

# adapter_config.json keys that do not change what a trained adapter computes at inference (names,
# bookkeeping, dropout, layer selection, initialisation recipes). Any other key set to a non-empty
# value (use_dora, rank_pattern, alpha_pattern, modules_to_save, bias, lora_bias, ...) changes the
# forward pass in a way ``W + alpha/r·B·A`` cannot express, so it is refused.
_INERT_KEYS = {
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "exclude_modules",
    "lora_dropout",
    "layers_to_transform",
    "layers_pattern",
    "init_lora_weights",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "qalora_group_size",
    "megatron_core",
    "runtime_config",
}
# These initialisations also rewrite the base weights (W - B0·A0), so the saved adapter only works on
# top of that rewritten base, unless it was saved with ``path_initial_model_for_weight_conversion``
# (which resets init_lora_weights to true in the saved config).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
_PREFIX = "base_model.model."
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


def convert_peft_lora(adapter_dir: Path, out_file: Path, *, n_head: int, n_head_kv: int, n_layer: int) -> dict:
    """Write ``out_file`` (GGUF LoRA, float16) from a PEFT LoRA folder for a Llama base of these shapes.

    The head counts come from the base model (its GGUF header), never from the adapter: the adapter
    does not record them, and a wrong count can permute ``q``/``k`` wrongly with every shape still fitting.
    Returns a summary: rank, alpha (as stored), scale (the factor both runtimes apply), n_tensors,
    target_modules, bytes.
    """
    import gguf  # noqa: PLC0415 (heavy: gguf loads on first use)
    from safetensors.torch import load_file  # noqa: PLC0415 (heavy: safetensors loads on first use)

    adapter_dir, out_file = Path(adapter_dir), Path(out_file)
    config_file = adapter_dir / "adapter_config.json"
    weights_file = adapter_dir / "adapter_model.safetensors"
    config = json.loads(config_file.read_text())
    _check_config(config, config_file)
    rank, peft_alpha = int(config["r"]), float(config["lora_alpha"])
    scale = peft_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)

    pairs = _pairs(load_file(weights_file), weights_file)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    T = gguf.MODEL_TENSOR
    projections = {T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN}
    permuted = {T.ATTN_Q: n_head, T.ATTN_K: n_head_kv}  # rows reordered per head in the base GGUF
    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * rank)  # llama.cpp divides by r again
    head_dims = set()
    for hf_name, (a, b) in sorted(pairs.items()):
        found = names.get_type_and_name(hf_name + ".weight", try_suffixes=(".weight",))
        if found is None or found[0] not in projections:
            what = f"GGUF {found[1]}" if found else f"not a tensor of a {n_layer}-layer Llama model"
            raise ConfigError(
                f"{weights_file}: LoRA on {hf_name} ({what}); only the attention and MLP "
                "projections of the transformer blocks can be converted"
            )
        kind, gguf_name = found
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ConfigError(
                f"{weights_file}: {hf_name} has lora_A of rank {a.shape[0]}, lora_B of rank "
                f"{b.shape[1]}; the config says r={rank}"
            )
        if heads := permuted.get(kind):
            if b.shape[0] % (2 * heads):
                raise ConfigError(
                    f"{weights_file}: {hf_name} has {b.shape[0]} rows, not {heads} heads of an "
                    "even head size; is the base a Llama model with these head counts?"
                )
            head_dims.add(b.shape[0] // heads)
            b = _permute(b, heads)
        for suffix, tensor in ((".lora_a", a), (".lora_b", b)):
            data = tensor.float().numpy().astype(np.float16)
            if not np.isfinite(data).all():
                raise ConfigError(f"{weights_file}: {hf_name} has values float16 cannot hold")
            writer.add_tensor(gguf_name + suffix, data)
    if len(head_dims) > 1:
        raise ConfigError(
            f"{weights_file}: q_proj and k_proj disagree on the head size for n_head={n_head}, "
            f"n_head_kv={n_head_kv} (got {sorted(head_dims)}); wrong base model?"
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "rank": rank,
        "alpha": scale * rank,
        "scale": scale,
        "n_tensors": 2 * len(pairs),
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in pairs}),
        "bytes": out_file.stat().st_size,
    }


def _check_config(config: dict, path: Path) -> None:
    """Refuse a config whose adapter is more than ``W + scale·B·A`` on the base's own weights."""
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type={config.get('peft_type')!r}; only LORA adapters convert")
    for key, value in config.items():
        if key not in _INERT_KEYS and value not in (None, False, "none", [], {}):
            raise ConfigError(f"{path}: {key}={value!r} is not expressible as a GGUF LoRA (W + alpha/r·B·A)")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise ConfigError(
            f"{path}: init_lora_weights={init!r} rewrote the base weights; save the adapter with "
            "path_initial_model_for_weight_conversion to make it apply to the original base"
        )
    if not config.get("lora_alpha"):
        raise ConfigError(f"{path}: lora_alpha={config.get('lora_alpha')!r}; llama.cpp reads alpha 0 as scale 1")


def _pairs(tensors: dict, path: Path) -> dict[str, tuple]:
    """{HF module name, e.g. ``model.layers.0.self_attn.q_proj``: (lora_A, lora_B)} from PEFT's keys."""
    parts: dict[str, dict] = {}
    for key, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PREFIX):
            raise ConfigError(
                f"{path}: tensor {key!r} is not a LoRA A/B weight (DoRA magnitude, bias, "
                "embedding LoRA or a fully trained module?)"
            )
        parts.setdefault(key[len(_PREFIX) : -len(suffix)], {})[_SUFFIXES[suffix]] = tensor
    for name, ab in parts.items():
        if len(ab) != 2:
            raise ConfigError(f"{path}: {name} has lora_{next(iter(ab))} but not its partner")
    return {name: (ab["A"], ab["B"]) for name, ab in parts.items()}


def _permute(rows, n_head: int):
    """``LlamaModel.permute`` from convert_hf_to_gguf.py: within each head, move HF's two halves
    (rotate_half) to llama.cpp's interleaved RoPE pairs, i.e. row ``h·d + i·d/2 + j`` goes to
    ``h·d + 2j + i``."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
