"""BASE / SFT / SFT+DPO, each loaded fresh from the base weights — the one loader Phases 10 and 11 use.

Adapters come from the lab's artifact store, found by recipe; loading never trains.

The seed's failure mode: swapping adapters on a live PEFT model (``PeftModel.from_pretrained`` on a
model that already is one) nests ``base_model.model.base_model.model…`` and silently computes with
the wrong weights. So every variant here starts from a freshly loaded base, gets at most one
adapter, and is checked: one LoRA adapter per targeted layer, no PEFT wrapper inside a PEFT wrapper.
"""

from __future__ import annotations

from lab.artifacts import Artifact
from phase09_finetuning.sft import SFT_ADAPTER, load_base, profile_recipe
from phase10_alignment.dpo import DPO_ADAPTER

VARIANTS = ("base", "sft", "dpo")
# The stored artifact each adapter variant loads (lab/artifacts.py): callers fetch it with
# ``ctx.load_artifact`` / ``ctx.require_artifact`` and pass it in; this module never trains.
VARIANT_ADAPTERS = {"sft": SFT_ADAPTER, "dpo": DPO_ADAPTER}


def base_model_id(profile: str) -> str:
    """The base model of the profile's Phase 9 recipe (Phase 10 tunes on top of it)."""

    return profile_recipe(profile)["model_id"]


def load_variant(name: str, profile: str, adapter: Artifact | None = None):
    """(model, tokenizer) for variant ``name`` in eval mode: a fresh base plus at most one adapter.

    ``adapter``: the stored adapter for "sft"/"dpo" (None for "base"). Raises if it was trained on
    another base than the profile's, or if the loaded module tree shows adapter stacking.
    """
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
    if (adapter is None) != (name == "base"):
        raise ValueError(f"variant {name!r}: pass its stored adapter (and none for 'base'), got {adapter}")
    base_id = base_model_id(profile)
    model, tok, _ = load_base(base_id, qlora=False)
    if adapter is not None:
        trained_on = adapter.params.get("base_model")
        if trained_on != base_id:
            raise ValueError(
                f"{adapter.id}: adapter was trained on {trained_on!r}, profile {profile!r} uses {base_id!r}"
            )
        model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
        problems = adapter_stacking_problems(model)
        if problems:
            raise RuntimeError(f"variant {name} from {adapter.id}: " + "; ".join(problems))
    model.eval()
    return model, tok


def lora_layers(model) -> dict[str, list[str]]:
    """Every LoRA-wrapped module -> the adapter names it carries."""
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415 (heavy: peft loads on first use)

    return {n: sorted(m.lora_A.keys()) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_stacking_problems(model) -> list[str]:
    """Why the module tree is not 'one base + one adapter' (empty list when it is)."""
    from peft import PeftModel  # noqa: PLC0415 (heavy: peft loads on first use)

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
