"""The llama.cpp engine: GGUF weights on the CPU, several sequences in one KV cache.

Why llama.cpp for the embedded model (measured in ``benchmarks.llm_throughput``): transformers runs
SmolLM2-135M in float32 through Python-level modules at ~15-22 tokens/s on one core; llama.cpp runs
the same weights as Q8_0 in C at ~4x that, with a faster prompt pass too. Q8_0 rather than the
shipped Q4_1 (faster prompts, same fidelity) or a requantized Q4_0 (faster, but a second rounding
of already 4-bit weights moved SmolLM2's next-token distribution ~100x further from the
transformers reference; see ``lab.llm.gguf_models``).

This module uses llama-cpp-python's low-level bindings (the C API), not its high-level ``Llama``
class, because the project's own pieces replace what that class would do: the HF tokenizer and chat
template (identical prompt tokens on both engines), xgrammar masks (the same grammars and guarantees
as on transformers), and the decoding loop of ``Engine.generate``.

**Prefix reuse: snapshots, not idle sequences.** Every decode step attends over the KV cache's
whole occupied range, other sequences' cells included (measured here: a 3,000-token idle prefix
cut a short reply from ~110 to ~35 tok/s, and a hole left by a dropped one keeps the range wide).
So the cache holds only running sequences. When a call ends, its keys and values are copied out
(``llama_state_seq_get_data``, ~23 KB per token, ~20 ms per 1,000 tokens) into a bounded store of
snapshots; a new call restores the snapshot sharing its longest prefix (~3 ms for 1,500 tokens,
against ~6 s to recompute them), cuts it to the shared part and runs only the rest. An agent's next
step finds its previous step; a judge asking one question per rubric dimension finds the previous
item's question on the same dimension.

**Concurrent calls.** Several threads may generate at once (``lab serve`` with several clients):
each step, one of them decodes the pending next tokens of every running sequence in a single
``llama_decode`` batch (continuous batching) and hands each its logits. A long prompt is run in
chunks of ``n_batch`` tokens, so it delays the others by one chunk at a time, not by the whole prompt.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from lab.llm.base import LLMError
from lab.llm.engine import CachedPrefix, Engine, common_prefix, engine_threads

_INIT = threading.Lock()
_LOG_CALLBACK = None  # the C log callback must outlive every call into llama.cpp
_MODELS: dict[str, Any] = {}  # loaded weights by path: engines (base, + adapter) share them


def _library():
    """llama_cpp, initialised once per process with its logging silenced (errors surface as ours)."""
    global _LOG_CALLBACK
    import llama_cpp  # noqa: PLC0415 (heavy: llama_cpp loads on first use)

    with _INIT:
        if _LOG_CALLBACK is None:
            _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
            llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
    return llama_cpp


def _load_model(path: Path):
    L = _library()
    key = str(path.resolve())
    with _INIT:
        if key not in _MODELS:
            params = L.llama_model_default_params()
            model = L.llama_model_load_from_file(key.encode(), params)
            if not model:
                raise LLMError(
                    f"llama.cpp could not load {path} (not a GGUF model file, or an unsupported architecture)"
                )
            _MODELS[key] = model
        return _MODELS[key]


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    parallel = 4  # sequences running at once, batched per step
    SNAPSHOT_BYTES = 384 << 20  # the prefix store (~16,000 tokens of SmolLM2 keys and values)
    MIN_REUSE = 8  # shortest shared prefix worth restoring (a restore costs ~2 ms per 1,000 tokens stored)
    N_BATCH = 256  # prompt tokens per llama_decode call (256 ran long prompts ~10% faster than 512 here)
    GATHER_S = 0.002  # how long a step waits for the other running sequences' tokens to batch them

    def __init__(
        self,
        gguf: Path,
        tokenizer,
        *,
        lora: Path | None = None,
        weights: str = "",
        kv_tokens: int | None = None,
        threads: int | None = None,
    ):
        L = self._L = _library()
        self.gguf, self.lora, self.weights = Path(gguf), lora, weights
        self._model = _load_model(self.gguf)
        window = int(L.llama_model_n_ctx_train(self._model))
        vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        ends = {int(L.llama_vocab_eos(vocab)), int(L.llama_vocab_eot(vocab)), tokenizer.eos_token_id}
        super().__init__(tokenizer, window, self.n_vocab, {i for i in ends if i is not None and i >= 0})
        self.threads = threads or engine_threads()
        params = L.llama_context_default_params()
        params.n_ctx = kv_tokens or 2 * window
        params.n_batch = params.n_ubatch = self.N_BATCH
        params.n_seq_max = self.parallel
        params.kv_unified = True  # one buffer: a batch of steps from several sequences is one decode
        # measured here (SmolLM2, one thread): flash attention runs long prompts faster (1,000 tokens: ~300
        # vs ~235 tok/s) but decodes 25-50% slower from 400 tokens of context on, where agents spend their
        # time (tool listings, growing conversations): tool calls ~45 vs ~57 tok/s without it
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = self.threads
        self._ctx = L.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise LLMError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {self.gguf.name}")
        self.kv_tokens = int(L.llama_n_ctx(self._ctx))
        if lora is not None:
            adapter = L.llama_adapter_lora_init(self._model, str(lora).encode())
            if not adapter:
                raise LLMError(f"llama.cpp could not load the LoRA adapter {lora}")
            self._adapter = adapter  # kept alive with the engine
            L.llama_set_adapters_lora(
                self._ctx, (L.llama_adapter_lora_p_ctypes * 1)(adapter), 1, (ctypes.c_float * 1)(1.0)
            )
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(self.N_BATCH, 0, 1)
        self._cond = threading.Condition()  # guards the context, the slots and the step batch
        self._slots = [CachedPrefix([], seq) for seq in range(self.parallel)]
        self._snapshots: list[CachedPrefix] = []  # finished sequences' KV bytes (handle), oldest first
        self._clock = itertools.count(1)
        self._pending: list[tuple[CachedPrefix, int]] = []  # (sequence, its next token) for the next batch
        self._ready: dict[int, Any] = {}  # seq id -> logits of its step
        self._decoding = False

    # --- the KV cache -----------------------------------------------------------------------------

    def _claim(self, ids: list[int], use_cache: bool) -> tuple[CachedPrefix, int]:
        """A free sequence, holding the longest stored prefix of ``ids`` (lock held): (it, prefix length)."""
        L = self._L
        while all(s.busy for s in self._slots):
            self._cond.wait()
        slot = next(s for s in self._slots if not s.busy)
        slot.busy, slot.ids, slot.keep = True, [], use_cache
        source, common = None, 0
        if use_cache:
            for snap in self._snapshots:
                if (n := common_prefix(snap.ids, ids)) > common:
                    source, common = snap, n
        common = min(common, len(ids) - 1)  # at least one token runs, to get the next-token logits
        if source is not None and common >= self.MIN_REUSE:
            data = source.handle
            if L.llama_state_seq_set_data(self._ctx, data, len(data), slot.handle) == len(data):
                L.llama_memory_seq_rm(self._mem, slot.handle, common, -1)
                slot.ids = list(ids[:common])
                source.last_used = next(self._clock)
            else:  # no room to restore it (the cache is full of running sequences): recompute instead
                L.llama_memory_seq_rm(self._mem, slot.handle, -1, -1)
        return slot, len(slot.ids)

    def _decode(self, entries: list[tuple[CachedPrefix, list[int]]]) -> list[Any]:
        """One llama_decode over these (sequence, new tokens) pairs (lock held); the logits after each
        sequence's last token. The cache holds running sequences only: when they fill it, this fails."""
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        L, batch = self._L, self._batch
        n = 0
        for slot, tokens in entries:
            for k, token in enumerate(tokens):
                batch.token[n], batch.pos[n] = token, len(slot.ids) + k
                batch.n_seq_id[n], batch.seq_id[n][0] = 1, slot.handle
                batch.logits[n] = k == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        if (rc := L.llama_decode(self._ctx, batch)) == 1:
            running = sum(len(s.ids) for s in self._slots if s.busy)
            raise LLMError(
                f"llama.cpp: the KV cache ({self.kv_tokens} tokens) is full: {n} new tokens do not "
                f"fit beside the {running} tokens of running sequences"
            )
        if rc != 0:
            raise LLMError(f"llama.cpp: llama_decode failed with code {rc}")
        logits, row = [], -1
        for slot, tokens in entries:
            row += len(tokens)
            slot.ids.extend(tokens)
            logits.append(
                torch.from_numpy(
                    np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, row), shape=(self.n_vocab,)).copy()
                )
            )
        return logits

    # --- the engine contract ----------------------------------------------------------------------

    def _start(self, ids: list[int], use_cache: bool = True):
        with self._cond:
            slot, common = self._claim(ids, use_cache)
        try:
            rest = ids[common:]
            for start in range(0, len(rest), self.N_BATCH):
                with self._cond:  # released between chunks: other sequences' steps run in between
                    logits = self._decode([(slot, rest[start : start + self.N_BATCH])])[0]
        except BaseException:
            self._release(slot, keep=False)
            raise
        if use_cache:
            with self._cond:
                self.prefix_stats.computed += len(rest)
                self.prefix_stats.requested += len(ids)
        return slot, logits

    def _advance(self, slot: CachedPrefix, token: int):
        """The next logits of ``slot``; the pending steps of every running sequence run as one batch."""
        with self._cond:
            self._pending.append((slot, token))
            self._cond.notify_all()
            while slot.handle not in self._ready:
                if self._decoding:
                    self._cond.wait()
                    continue
                self._decoding = True  # this thread runs the next batch
                try:
                    deadline = time.monotonic() + self.GATHER_S
                    while len(self._pending) < sum(s.busy for s in self._slots):
                        if (left := deadline - time.monotonic()) <= 0:
                            break
                        self._cond.wait(left)
                    steps, self._pending = self._pending, []
                    try:
                        results = self._decode([(s, [t]) for s, t in steps])
                    except BaseException as exc:
                        results = [exc] * len(steps)
                    self._ready.update({s.handle: r for (s, _), r in zip(steps, results)})
                finally:
                    self._decoding = False
                    self._cond.notify_all()
            result = self._ready.pop(slot.handle)
        if isinstance(result, BaseException):
            raise result
        return result

    def _finish(self, slot: CachedPrefix) -> None:
        self._release(slot, keep=slot.keep)

    def _release(self, slot: CachedPrefix, keep: bool) -> None:
        """Free a sequence's cells, after storing them as a snapshot when ``keep``."""
        with self._cond:
            if keep and slot.ids:
                self._store(slot)
            self._L.llama_memory_seq_rm(self._mem, slot.handle, -1, -1)
            slot.busy, slot.ids = False, []
            if not any(s.busy for s in self._slots):  # empty: allocate from the first cell again
                self._L.llama_memory_clear(self._mem, False)
            self._cond.notify_all()

    def _store(self, slot: CachedPrefix) -> None:
        """Snapshot a finished sequence (lock held), unless a stored one already covers it; a stored
        prefix of it is replaced; the oldest go when the store is over ``SNAPSHOT_BYTES``."""
        L, ids = self._L, slot.ids
        if any(len(snap.ids) >= len(ids) and snap.ids[: len(ids)] == ids for snap in self._snapshots):
            return
        size = L.llama_state_seq_get_size(self._ctx, slot.handle)
        data = (ctypes.c_uint8 * size)()
        if L.llama_state_seq_get_data(self._ctx, data, size, slot.handle) != size:
            return
        self._snapshots = [snap for snap in self._snapshots if snap.ids != ids[: len(snap.ids)]]
        self._snapshots.append(CachedPrefix(list(ids), data, last_used=next(self._clock)))
        self._snapshots.sort(key=lambda snap: snap.last_used)
        while sum(len(snap.handle) for snap in self._snapshots) > self.SNAPSHOT_BYTES:
            self._snapshots.pop(0)

    def reset_prefix_cache(self) -> None:
        with self._cond:
            self._snapshots.clear()
            self.prefix_stats.computed = self.prefix_stats.requested = 0

    def describe(self) -> dict[str, Any]:
        import llama_cpp  # noqa: PLC0415 (heavy: llama_cpp loads on first use)

        return {
            "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
            "dtype": self.weights or "GGUF",
            "n_params": int(self._L.llama_model_n_params(self._model)),
            "quantization": f"{self.weights} GGUF" if self.weights else None,
            "adapter": "LoRA (GGUF)" if self.lora is not None else None,
            "threads": self.threads,
        }


def quantize(source: Path, target: Path, type_name: str) -> None:
    """Requantize a GGUF file (``type_name`` such as Q8_0) with llama.cpp's own quantizer."""
    L = _library()
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, f"LLAMA_FTYPE_MOSTLY_{type_name}")
    params.allow_requantize = True
    params.nthread = engine_threads()
    if L.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise LLMError(f"llama.cpp could not requantize {source.name} to {type_name}")
