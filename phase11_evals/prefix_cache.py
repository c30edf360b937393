"""Prefix-cached ``choice_probs`` for a local judge: the same numbers, several times fewer FLOPs.

A choice_probs judge asks one question per rubric dimension and flag (5 for the Phase 11 rubric),
each with a system prompt holding that dimension's rubric text, then the item. On 2 CPU cores
SmolLM2-135M needs seconds per full forward pass of that length, so scoring one response took close
to a minute here. This wrapper keeps the KV caches of the last ``slots`` calls and, for a new
call, continues the cached sequence sharing the longest token prefix with it, re-running only the
tokens after that prefix: each dimension's system prompt is encoded once per run, not once per
item. The logits are those of the full forward pass (checked in the tests).

It wraps ``lab.llm.local.LocalLLM`` and uses its loaded model and chat turns; everything except
``choice_probs`` passes through. (A candidate for ``LocalLLM`` itself; kept here until then.)
"""

from __future__ import annotations

import copy
from typing import Any


class PrefixCachedLLM:
    """Wraps a local LLM; ``choice_probs`` reuses the KV cache of the previous call's common prefix."""

    def __init__(self, llm, slots: int = 12):
        if not callable(getattr(llm, "choice_probs", None)) or not hasattr(llm, "_load"):
            raise TypeError(f"PrefixCachedLLM needs a local LLM with choice_probs; {llm.spec} is not one")
        self.llm = llm
        self.slots = slots
        self._entries: list[tuple[list[int], Any]] = []  # (token ids, DynamicCache), most recent last
        self.tokens_computed = 0  # tokens actually run through the model
        self.tokens_requested = 0  # tokens a plain choice_probs would have run

    def __getattr__(self, name: str) -> Any:  # chat, spec, describe, tokenizer...
        return getattr(self.llm, name)

    def choice_probs(self, messages, choices: list[str], system: str | None = None, prefix: str = "") -> dict[str, float]:
        import torch
        from transformers import DynamicCache

        model, tok = self.llm._load()
        turns = ([{"role": "system", "content": system}] if system else []) + self.llm._plain_messages(messages)
        prompt = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) + prefix
        ids = tok(prompt).input_ids
        choice_ids = []
        for choice in choices:
            toks = tok.encode(choice, add_special_tokens=False)
            if len(toks) != 1:
                raise ValueError(f"choice {choice!r} is {len(toks)} tokens; choices must be single tokens")
            choice_ids.append(toks[0])

        best, common = None, 0
        for k, (cached_ids, _) in enumerate(self._entries):
            n = _common_prefix(cached_ids, ids)
            if n > common:
                best, common = k, n
        common = min(common, len(ids) - 1)  # at least one new token, to get the next-token logits
        if best is None or common == 0:
            cache, common = DynamicCache(), 0
            if len(self._entries) >= self.slots:
                self._entries.pop(0)
        elif common == len(self._entries[best][0]):  # a pure extension: grow that entry in place
            cache = self._entries.pop(best)[1]
        else:  # a partial match: copy, so the entry stays usable for the calls that match it fully
            cached_ids, cached = self._entries[best]
            cache = copy.deepcopy(cached)
            cache.crop(common - len(cached_ids))
            if len(self._entries) >= self.slots:
                self._entries.pop(0)
        new = torch.tensor([ids[common:]], device=model.device)
        with torch.inference_mode():
            out = model(new, cache=cache, use_cache=True)
        self._entries.append((list(ids), cache))  # the DynamicCache was extended in place
        self.tokens_computed += len(ids) - common
        self.tokens_requested += len(ids)
        logits = out.logits[0, -1, choice_ids].float()
        return dict(zip(choices, torch.softmax(logits, dim=-1).tolist()))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
