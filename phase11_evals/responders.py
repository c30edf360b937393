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

from lab.artifacts import Artifact, load
from lab.errors import MissingArtifact, UnusableArtifact
from phase10_alignment.variants import VARIANT_ADAPTERS, VARIANTS, base_model_id, load_variant


@dataclass
class Answer:
    text: str
    new_tokens: int
    seconds: float


def stored_adapter(variant: str, profile: str) -> Artifact | None:
    """The variant's stored adapter (None for base); MissingArtifact names the build command."""

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    return None if variant == "base" else load(VARIANT_ADAPTERS[variant], profile)


def missing_reason(variant: str, profile: str) -> str | None:
    """Why ``variant`` cannot be loaded for ``profile`` without training (None when it can)."""

    try:
        stored_adapter(variant, profile)
    except (MissingArtifact, UnusableArtifact) as err:
        return str(err)
    return None


class Responder:
    """One variant, loaded and merged, answering single-turn prompts greedily."""

    def __init__(self, variant: str, profile: str):

        self.variant = variant
        self.base_id = base_model_id(profile)
        self.adapter = stored_adapter(variant, profile)
        model, self.tok = load_variant(variant, profile, adapter=self.adapter)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        self.model.eval()

    def describe(self) -> dict[str, Any]:
        """Provenance, with the adapter's own training record (steps, pairs, lr...) so a weak adapter shows."""
        info = {
            "id": f"{self.variant}: {self.base_id}",
            "adapter": self.adapter.id if self.adapter else None,
            "n_params": self.n_params,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "role": "model under test",
            "merged": self.adapter is not None,
        }
        if self.adapter:
            info["training"] = dict(self.adapter.metrics)
        return info

    def answer(self, prompt: str, max_new_tokens: int) -> Answer:
        """One prompt on its own (batch of one)."""
        return self.answer_all([prompt], max_new_tokens, batch_size=1)[0]

    def answer_all(self, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[Answer]:
        """Greedy answers to ``prompts`` (in their order), decoded ``batch_size`` at a time.

        Prompts are grouped by token length (least padding) and left-padded. A batch of one is
        exactly ``answer``; in a padded batch at fp32 a near-tie can rarely flip a greedy token
        (``tests/test_phase11_evals.py`` compares the two). An answer's ``seconds`` is its batch's
        wall time shared equally, so summed seconds are the generation wall time.
        """
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        encoded = [
            self.tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
            for p in prompts
        ]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        ends = self._end_ids()
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        answers: list[Answer | None] = [None] * len(prompts)
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start : start + max(1, batch_size)]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + list(encoded[i]) for i in rows])
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows])
            begin = time.perf_counter()
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids.to(self.model.device),
                    attention_mask=mask.to(self.model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=pad,
                )
            seconds = (time.perf_counter() - begin) / len(rows)
            for i, row in zip(rows, out[:, width:].tolist()):
                new = _until_end(row, ends)  # a row that ended early is padded to the batch's length
                answers[i] = Answer(self.tok.decode(new, skip_special_tokens=True).strip(), len(new), seconds)
        return answers  # type: ignore[return-value]

    def _end_ids(self) -> set[int]:
        """The tokens generate() stops a row at."""
        ids = self.model.generation_config.eos_token_id
        ids = ids if ids is not None else self.tok.eos_token_id
        return {i for i in (ids if isinstance(ids, list) else [ids]) if i is not None}


def _until_end(ids: list[int], ends: set[int]) -> list[int]:
    """The generated ids up to and including the first end token (what unbatched generate returns)."""
    for k, token in enumerate(ids):
        if token in ends:
            return ids[: k + 1]
    return ids
