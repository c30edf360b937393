"""Token engines: what runs a local model's forward passes, behind the local provider.

``lab.llm.local.LocalLLM`` speaks chat (prompts, tools, grammars, stop strings, streaming); an
``Engine`` only turns token ids into next-token logits. Two engines implement it:

- ``llama.cpp`` (``lab.llm.llamacpp_engine``): the GGUF-native CPU engine, ~4x the decode speed
  of transformers on the embedded SmolLM2 (``benchmarks.llm_throughput`` measures it), several
  sequences in one KV cache, LoRA adapters converted once to GGUF.
- ``transformers`` (``lab.llm.hf_engine``): any Hugging Face model, on a GPU when there is one;
  the engine training and the a100 profile use.

Both keep the KV caches of recent calls and start a new call from the longest prefix it shares
with one of them (``PrefixCache``): an agent that resends a growing conversation pays only for the
new turn, and a judge asking one question per rubric dimension pays only for the question. The
decoding loop (``Engine.generate``) is the same for both: logits, the grammar's token mask, a
greedy or sampled pick, the next forward pass.

Which engine a model gets: ``select_engine`` (``LAB_LOCAL_ENGINE=llama.cpp|transformers`` forces one).
"""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

from lab.errors import ConfigError
from lab.models import EMBEDDED_LLM

ENGINES = ("llama.cpp", "transformers")
_RUNS: dict[str, int] = {}  # sequences each engine has run in this process (the runner notes which ran)
LLAMA_CPP_NOTE = (
    "Text was generated on the llama.cpp engine (a Q8_0 GGUF of the same weights), not on transformers "
    "as in results before 2026-12: the same model, but greedy text differs where near-ties flip "
    "(benchmarks.llm_throughput measures how often), so figures that depend on generated text moved "
    "for that reason, not because the method changed."
)


def engine_runs() -> dict[str, int]:
    """How many sequences each engine has run in this process so far (take one before a run, one after)."""
    return dict(_RUNS)


def generation_note(models: list[dict[str, Any]], runs_before: dict[str, int]) -> str | None:
    """The method note of a run whose text came from the llama.cpp engine (recorded by a model entry,
    or a sequence it ran since ``runs_before``), else None. Engines outlive runs in one process, so
    loading one says nothing about which run used it."""
    recorded = any(str(m.get("engine", "")).startswith("llama.cpp") for m in models)
    ran = _RUNS.get("llama.cpp", 0) > runs_before.get("llama.cpp", 0)
    return LLAMA_CPP_NOTE if recorded or ran else None


class TokenMask(Protocol):
    """What a grammar does at each step (``lab.llm.constrained.GrammarMask``)."""

    def apply(self, logits) -> None:
        """Set the logits of every token that cannot continue a valid reply to -inf (in place)."""

    def accept(self, token: int) -> None:
        """Advance the grammar past the chosen token."""

    @property
    def done(self) -> bool:
        """The reply is complete: nothing more may be generated."""


@dataclass
class PrefixStats:
    """Prompt tokens run through the model vs tokens a cache-less engine would have run (calls that
    asked for the cache; an explicit full pass is not counted)."""

    computed: int = 0
    requested: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "requested": self.requested}


@dataclass
class CachedPrefix:
    """One cached sequence: the tokens whose keys and values the engine holds, and its handle."""

    ids: list[int]
    handle: Any
    busy: bool = False
    last_used: int = 0
    keep: bool = True  # store it for later prefixes when it finishes (False: an explicit cache-less pass)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine(ABC):
    """Next-token logits for token ids, with prefix reuse; one model, loaded once."""

    name: str = ""
    parallel: int = 1  # sequences worth decoding at once (more only where steps are batched)

    def __init__(self, tokenizer, context_window: int, vocab_size: int, end_ids: set[int]):
        self.tokenizer = tokenizer
        self.context_window = context_window
        self.vocab_size = vocab_size  # the width of the logits (may exceed the tokenizer's vocabulary)
        self.end_ids = frozenset(end_ids)
        self.prefix_stats = PrefixStats()

    # --- what an engine implements -------------------------------------------------------------

    @abstractmethod
    def _start(self, ids: list[int], use_cache: bool = True) -> tuple[Any, Any]:
        """Run ``ids`` (reusing a cached prefix when ``use_cache``): (sequence handle, logits of the
        next token as a 1-D float tensor the caller may modify)."""

    @abstractmethod
    def _advance(self, seq: Any, token: int) -> Any:
        """Feed one token to the sequence; the next token's logits."""

    @abstractmethod
    def _finish(self, seq: Any) -> None:
        """The sequence is done: keep its cache for later prefixes (or drop it)."""

    @abstractmethod
    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix and zero ``prefix_stats``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Provenance: engine, version, weights format, parameter count."""

    # --- shared -----------------------------------------------------------------------------------

    def _count_run(self) -> None:
        _RUNS[self.name] = _RUNS.get(self.name, 0) + 1

    def next_logits(self, ids: list[int], use_cache: bool = True):
        """Logits of the token after ``ids`` (what a judge reads), via the prefix cache."""
        seq, logits = self._start(ids, use_cache)
        self._count_run()
        self._finish(seq)
        return logits

    def generate(
        self, ids: list[int], max_tokens: int, temperature: float = 0.0, mask: TokenMask | None = None
    ) -> Generator[int, None, None]:
        """New token ids, one at a time, ending at an end token (yielded), a completed grammar or
        ``max_tokens``. Closing the iterator early stops decoding and frees the sequence.

        Greedy at temperature 0; otherwise one draw from softmax(logits / temperature) with torch's
        global generator (seeded per run by the runner), masked by the grammar first either way.
        """
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        seq, logits = self._start(ids)
        self._count_run()
        try:
            for n in range(max_tokens):
                if mask is not None:
                    mask.apply(logits)
                if temperature > 0:
                    probs = torch.softmax(logits.float() / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1))
                else:
                    token = int(torch.argmax(logits))
                if mask is not None:
                    mask.accept(token)
                yield token
                if token in self.end_ids or (mask is not None and mask.done) or n + 1 == max_tokens:
                    return
                logits = self._advance(seq, token)
        finally:
            self._finish(seq)


# --- choosing an engine ---------------------------------------------------------------------------

_X86_NEEDS = ("avx2", "fma", "f16c")  # the portable x86-64-v3 build `make setup` compiles


def llama_cpp_unavailable() -> str | None:
    """Why the llama.cpp engine cannot run here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401, PLC0415 (heavy: llama_cpp loads on first use)
    except ImportError:
        return "llama-cpp-python is not installed (`make setup` builds it)"
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
        except OSError:
            return None
        missing = [f for f in _X86_NEEDS if f not in flags]
        if flags and missing:
            return f"this CPU lacks {', '.join(missing)}, which the llama.cpp build needs"
    return None


def select_engine(gguf_able: bool, requested: str | None = None) -> str:
    """The engine a model gets: ``requested`` (or $LAB_LOCAL_ENGINE) when set; otherwise llama.cpp for
    a model that has GGUF weights (the embedded chat model, a .gguf file, a LoRA on either) on a machine
    without CUDA, and transformers for everything else."""
    requested = requested or os.environ.get("LAB_LOCAL_ENGINE") or "auto"
    if requested not in ENGINES + ("auto",):
        raise ConfigError(f"LAB_LOCAL_ENGINE={requested!r}: expected auto, {' or '.join(ENGINES)}")
    if requested == "transformers":
        return requested
    if requested == "llama.cpp":
        if not gguf_able:
            raise ConfigError(
                f"the llama.cpp engine runs GGUF models: the embedded {EMBEDDED_LLM.family}, a .gguf file, "
                "or a LoRA adapter on one; this model loads with transformers only"
            )
        if (why := llama_cpp_unavailable()) is not None:
            raise ConfigError(f"the llama.cpp engine was asked for, but {why}")
        return requested
    if not gguf_able or llama_cpp_unavailable() is not None or _cuda():
        return "transformers"
    return "llama.cpp"


def _cuda() -> bool:
    try:
        import torch  # noqa: PLC0415 (heavy: torch loads on first use)

        return torch.cuda.is_available()
    except ImportError:
        return False


def engine_threads() -> int:
    """CPU threads per engine: $OMP_NUM_THREADS (the Makefile sets 1: one per process on 2 shared
    cores), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)
