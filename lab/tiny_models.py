"""Tiny random-initialised stand-ins for the a100 profiles' models, for smoke runs on a CPU.

A smoke (``lab run ... --profile a100 --smoke``) must run the a100 code path — the same
``from_pretrained`` calls, quantization config, PEFT targets and trainer arguments — without 16 GB
of gated weights. ``lab.models.resolve`` hands it, in place of a Llama or Mixtral hub id, a folder
holding a model of the *same architecture class* (LlamaForCausalLM with GQA and llama3 RoPE
scaling; MixtralForCausalLM with 8 experts, top-2) at toy size (hidden 64, 2 layers), random
weights from a fixed seed and the embedded chat model's tokenizer (its vocabulary sets the embedding
size). Loading it by path means every loader (causal LM, sequence classifier, NF4) takes the same
route a real checkpoint would.

Built once per (model family, ``TINY_VERSION``) under ``<lab cache>/tiny-models`` and reused; the
folder's ``SOURCE.txt`` says what it is, so nobody mistakes it for the real model.
"""

from __future__ import annotations

import re
from pathlib import Path

from lab.paths import cache_dir

TINY_VERSION = "1"  # bump when the shapes below change: cached folders are then rebuilt
HIDDEN, LAYERS, HEADS, KV_HEADS = 64, 2, 4, 2  # GQA 2:1 like Llama's 4:1, at toy size
# The families an a100 profile loads by hub id; anything else is left to lab.models.resolve.
FAMILIES = {"mixtral": re.compile(r"mixtral", re.I), "llama": re.compile(r"llama", re.I)}


def family(model_id: str) -> str | None:
    """ "mixtral" / "llama" for a hub id of that family, else None (not substituted)."""
    for name, pattern in FAMILIES.items():
        if pattern.search(model_id):
            return name
    return None


def _config(kind: str, tok):
    from transformers import LlamaConfig, MixtralConfig  # noqa: PLC0415 (heavy: transformers loads on first use)

    common = dict(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    if kind == "mixtral":
        return MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **common)
    # Llama 3.1's rope scaling, so the llama3 RoPE code path runs too
    return LlamaConfig(
        rope_parameters={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 2048,
            "rope_theta": 500000.0,
        },
        **common,
    )


def tiny_path(model_id: str, tokenizer_dir: Path) -> Path:
    """The folder of ``model_id``'s tiny stand-in, built on first use with the tokenizer in
    ``tokenizer_dir`` (the embedded chat model's; ValueError if no family fits ``model_id``)."""
    kind = family(model_id)
    if kind is None:
        raise ValueError(f"model_id {model_id!r}: no tiny stand-in (families: {', '.join(FAMILIES)})")
    target = cache_dir() / "tiny-models" / f"{kind}-v{TINY_VERSION}"
    if (target / "config.json").exists():
        return target
    from lab.atomic import file_lock, publish_dir, staged  # noqa: PLC0415 (import cycle: lab imports this module)

    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").exists():
            return target
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(kind, tok))
        with staged(target) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"SMOKE-TEST MODEL, random weights (seed 0): a {type(model).__name__} with hidden {HIDDEN}, "
                f"{LAYERS} layers, standing in for {kind} hub ids in `lab run --smoke`; tokenizer: the one in {tokenizer_dir.name}/.\n"
            )
            publish_dir(tmp, target)
    return target


def describe(model_id: str) -> str:
    """What a result records about the stand-in it ran instead of ``model_id``."""
    return (
        f"smoke stand-in for {model_id}: random-init {family(model_id)} architecture, hidden {HIDDEN}, "
        f"{LAYERS} layers (lab.tiny_models v{TINY_VERSION})"
    )
