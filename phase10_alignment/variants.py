"""BASE / SFT / SFT+DPO, each loaded fresh from the base weights — the one loader Phases 10 and 11 use.

The seed's failure mode: swapping adapters on a live PEFT model (``PeftModel.from_pretrained`` on a
model that already is one) nests ``base_model.model.base_model.model…`` and silently computes with
the wrong weights. So every variant here starts from a freshly loaded base, gets at most one
adapter, and is checked: one LoRA adapter per targeted layer, no PEFT wrapper inside a PEFT wrapper.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS = ("base", "sft", "dpo")


def model_path(model_id: str) -> str:
    """Local folder or hub id to load: the embedded SmolLM2 as a trainable folder, else the HF cache/hub."""
    from lab import models
    from phase09_finetuning.sft import SMOLLM

    return str(models.hf_folder()) if model_id == SMOLLM else models.resolve(model_id)


def load_tokenizer(model_id: str):
    """The tokenizer alone (cheap): for data filtering before any model is loaded."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path(model_id))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_model_id(profile: str) -> str:
    """The base model of the profile's Phase 9 recipe (Phase 10 tunes on top of it)."""
    from phase09_finetuning.sft import SFT_RECIPES

    if profile not in SFT_RECIPES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(SFT_RECIPES)}")
    return SFT_RECIPES[profile]["model_id"]


def adapter_dir(name: str, profile: str, ctx=None) -> Path | None:
    """The published adapter of a variant (None for base); trained first if it is not in the cache."""
    if name == "base":
        return None
    if name == "sft":
        from phase09_finetuning.sft import ensure_sft_adapter

        return ensure_sft_adapter(profile, ctx=ctx)
    if name == "dpo":
        from phase10_alignment.dpo import ensure_dpo_adapter

        return ensure_dpo_adapter(profile, ctx=ctx)
    raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")


def load_variant(name: str, profile: str, adapter: str | Path | None = None, ctx=None):
    """(model, tokenizer) for variant ``name`` in eval mode: a fresh base plus at most one adapter.

    ``adapter`` overrides the profile's published adapter dir (tests, or comparing other runs).
    Raises if the loaded module tree shows adapter stacking.
    """
    from peft import PeftModel

    from phase09_finetuning.sft import load_base
    from phase10_alignment.dpo import adapter_meta

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    base_id = base_model_id(profile)
    model, tok, _ = load_base(base_id, qlora=False)
    if name != "base":
        path = Path(adapter) if adapter else adapter_dir(name, profile, ctx)
        meta_base = adapter_meta(path).get("base_model")
        if meta_base != base_id:
            raise ValueError(f"{path}: adapter was trained on {meta_base!r}, profile {profile!r} uses {base_id!r}")
        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        problems = adapter_stacking_problems(model)
        if problems:
            raise RuntimeError(f"variant {name} from {path}: " + "; ".join(problems))
    model.eval()
    return model, tok


def lora_layers(model) -> dict[str, list[str]]:
    """Every LoRA-wrapped module -> the adapter names it carries."""
    from peft.tuners.lora import LoraLayer

    return {n: sorted(m.lora_A.keys()) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_stacking_problems(model) -> list[str]:
    """Why the module tree is not 'one base + one adapter' (empty list when it is)."""
    from peft import PeftModel

    problems = []
    names = [n for n, _ in model.named_modules()]
    nested = [n for n in names if "base_model.model.base_model" in n]
    if nested:
        problems.append(f"a PEFT model inside a PEFT model ({nested[0]})")
    inner = [n for n, m in model.named_modules() if isinstance(m, PeftModel) and n]
    if inner:
        problems.append(f"PeftModel nested at {inner[0]}")
    layers = lora_layers(model)
    multi = {n: a for n, a in layers.items() if len(a) != 1}
    if multi:
        first = next(iter(multi))
        problems.append(f"{len(multi)} LoRA layers carry {len(multi[first])} adapters, e.g. {first}: {multi[first]}")
    if isinstance(model, PeftModel):
        targets = set(model.peft_config[model.active_adapter].target_modules or ())
        wrapped = {n.rsplit(".", 1)[-1] for n in layers}
        if targets and not wrapped <= targets:
            problems.append(f"LoRA on modules outside the adapter's targets: {sorted(wrapped - targets)}")
    return problems
