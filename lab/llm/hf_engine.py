"""The transformers engine: any Hugging Face causal LM, on a GPU when there is one.

What runs here: every model that is not GGUF-native (an HF id or folder: Llama 3.1 8B on the a100
profile, a merged checkpoint), the embedded SmolLM2 when llama.cpp is unavailable or
``LAB_LOCAL_ENGINE=transformers`` asks for it, and training (phases 9-10 load models through
``lab.models`` directly, never through an engine).

The decoding loop is ``Engine.generate``; this module runs the forward passes over a
``DynamicCache`` per sequence. Finished sequences keep their cache (the last ``SLOTS`` of them,
at most ``MAX_CACHED_TOKENS`` tokens in all), and a new call runs only the tokens after the longest
prefix it shares with one of them: the same logits as a full forward pass, up to float rounding.
Only the last position is projected onto the vocabulary (``logits_to_keep=1``): projecting every
prompt position (49k rows for SmolLM2) costs about a fifth of a 135M model's forward pass for nothing.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import threading
from pathlib import Path
from typing import Any

from lab import models
from lab.llm.engine import CachedPrefix, Engine, common_prefix


class TransformersEngine(Engine):
    name = "transformers"
    SLOTS = 12
    MAX_CACHED_TOKENS = 16_384

    def __init__(self, model_id: str):
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        path = Path(model_id).expanduser()
        if path.suffix == ".gguf" and path.exists():
            from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 (heavy: transformers loads on first use)

            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
            self.weights: str | None = "GGUF, dequantized to float32"
        else:
            dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
            model, tok = models.load_causal_lm(model_id, dtype=dtype)
            if torch.cuda.is_available():
                model.to("cuda")
            spec = models.EMBEDDED.get(model_id)
            self.weights = f"{spec.gguf_type} GGUF, dequantized" if spec is not None and spec.gguf_type else None
        model.eval()
        self.model = model
        ids = model.generation_config.eos_token_id
        ends = set(ids if isinstance(ids, list) else [ids]) | {tok.eos_token_id}
        window = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        super().__init__(tok, window, int(model.config.vocab_size), {i for i in ends if i is not None})
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._lock = threading.RLock()  # one forward pass at a time on one model
        self._clock = itertools.count()
        self._entries: list[CachedPrefix] = []

    # --- forward passes ---------------------------------------------------------------------------

    def _forward(self, ids: list[int], cache):
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        extra = {"logits_to_keep": 1} if self._takes_logits_to_keep else {}
        with torch.inference_mode():
            out = self.model(torch.tensor([ids], device=self.model.device), cache=cache, use_cache=True, **extra)
        return out.logits[0, -1].float().cpu()

    def _start(self, ids: list[int], use_cache: bool = True):
        from transformers import DynamicCache  # noqa: PLC0415 (heavy: transformers loads on first use)

        with self._lock:
            best, common = None, 0
            if use_cache:
                for entry in self._entries:
                    if (n := common_prefix(entry.ids, ids)) > common:
                        best, common = entry, n
            common = min(common, len(ids) - 1)  # at least one new token, to get the next-token logits
            if best is None or common == 0:
                seq = CachedPrefix([], DynamicCache(), busy=True)
            elif common == len(best.ids):  # a pure extension: continue that entry's cache in place
                self._entries.remove(best)
                seq = CachedPrefix(best.ids, best.handle, busy=True)
            else:  # a partial match: copy, so the entry stays whole for the calls that match it fully
                cache = copy.deepcopy(best.handle)
                cache.crop(common - len(best.ids))  # a negative count: drop that many from the end
                seq = CachedPrefix(best.ids[:common], cache, busy=True)
            logits = self._forward(ids[common:], seq.handle)
            seq.ids = list(ids)
            if use_cache:
                self.prefix_stats.computed += len(ids) - common
                self.prefix_stats.requested += len(ids)
            return seq, logits

    def _advance(self, seq: CachedPrefix, token: int):
        with self._lock:
            logits = self._forward([token], seq.handle)
            seq.ids.append(token)
            return logits

    def _finish(self, seq: CachedPrefix) -> None:
        with self._lock:
            seq.busy, seq.last_used = False, next(self._clock)
            self._entries.append(seq)
            self._entries.sort(key=lambda e: e.last_used)
            while len(self._entries) > self.SLOTS or sum(len(e.ids) for e in self._entries) > self.MAX_CACHED_TOKENS:
                self._entries.pop(0)

    def reset_prefix_cache(self) -> None:
        with self._lock:
            self._entries.clear()
            self.prefix_stats.computed = self.prefix_stats.requested = 0

    def describe(self) -> dict[str, Any]:
        import transformers  # noqa: PLC0415 (heavy: transformers loads on first use)

        first = next(self.model.parameters())
        return {
            "engine": f"transformers {transformers.__version__}",
            "dtype": str(first.dtype).replace("torch.", ""),
            "device": str(first.device),
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "quantization": self.weights,
        }
