"""The models under test: BASE / SFT / SFT+DPO from Phase 10's ``load_variant``, answering eval prompts.

Each variant is loaded fresh from the base weights (Phase 10's rule against adapter stacking) and
its adapter is merged before generation (``merge_and_unload``): an unmerged LoRA adds low-rank
matmuls to every step, the seed's 39% throughput penalty. Decoding is greedy, so runs repeat.

This module never trains: adapters come from the lab's artifact store, and a variant whose adapter
is not stored is reported as unavailable with the command that builds it; the exercise scores the
variants that exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lab.artifacts import Artifact


@dataclass
class Answer:
    text: str
    new_tokens: int
    seconds: float


def stored_adapter(variant: str, profile: str) -> Artifact | None:
    """The variant's stored adapter (None for base); MissingArtifact names the build command."""
    from lab.artifacts import load
    from phase10_alignment.variants import VARIANT_ADAPTERS, VARIANTS

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    return None if variant == "base" else load(VARIANT_ADAPTERS[variant], profile)


def missing_reason(variant: str, profile: str) -> str | None:
    """Why ``variant`` cannot be loaded for ``profile`` without training (None when it can)."""
    from lab.errors import MissingArtifact, UnusableArtifact

    try:
        stored_adapter(variant, profile)
    except (MissingArtifact, UnusableArtifact) as err:
        return str(err)
    return None


class Responder:
    """One variant, loaded and merged, answering single-turn prompts greedily."""

    def __init__(self, variant: str, profile: str):
        from phase10_alignment.variants import base_model_id, load_variant

        self.variant = variant
        self.base_id = base_model_id(profile)
        self.adapter = stored_adapter(variant, profile)
        model, self.tok = load_variant(variant, profile, adapter=self.adapter)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        self.model.eval()

    def describe(self) -> dict[str, Any]:
        """Provenance, with the adapter's own training record (steps, pairs, lr...) so a weak adapter shows."""
        info = {"id": f"{self.variant}: {self.base_id}", "adapter": self.adapter.id if self.adapter else None,
                "n_params": self.n_params, "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "role": "model under test", "merged": self.adapter is not None}
        if self.adapter:
            info["training"] = dict(self.adapter.metrics)
        return info

    def answer(self, prompt: str, max_new_tokens: int) -> Answer:
        import torch

        inputs = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              return_tensors="pt", return_dict=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        eos = self.tok.eos_token_id
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                      top_p=None, top_k=None, pad_token_id=self.tok.pad_token_id or eos)
        seconds = time.perf_counter() - start
        new = out[0, inputs["input_ids"].shape[1]:]
        return Answer(self.tok.decode(new, skip_special_tokens=True).strip(), int(new.shape[0]), seconds)
