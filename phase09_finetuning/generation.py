"""Batched chat generation + the mechanical checks 9.4 applies to answers (Phase 10 reuses them)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from lab.jsonl import read_jsonl

EVAL_PROMPTS = Path(__file__).resolve().parent / "data" / "eval_prompts.jsonl"
# Greedy decoding with a mild repetition penalty: deterministic, and small models loop less.
GEN_KWARGS = dict(do_sample=False, repetition_penalty=1.1)


def load_eval_prompts(path: Path = EVAL_PROMPTS) -> list[dict]:
    """The 10 domain prompts {"id", "topic", "prompt", "key_terms"} used by 9.4 and Phase 10.3."""
    return read_jsonl(path, required=("id", "prompt", "key_terms"))


def _chat_inputs(tok, prompts: list[str]):
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    tok.padding_side = "left"  # decoder-only batches pad on the left so every row ends at its prompt
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def timed_generate(
    model, tok, prompts: list[str], max_new_tokens: int = 96, *, batch_size: int = 10, min_new_tokens: int | None = None
) -> tuple[list[str], int, float]:
    """(answers, new tokens generated, seconds). Pass min_new_tokens=max_new_tokens to force equal
    lengths when timing throughput, so models that stop early are not credited with speed."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    answers, n_new, seconds = [], 0, 0.0
    for start in range(0, len(prompts), batch_size):
        batch = _chat_inputs(tok, prompts[start : start + batch_size]).to(model.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                pad_token_id=tok.pad_token_id,
                **GEN_KWARGS,
            )
        if out.is_cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: stop the clock when they are done
        seconds += time.perf_counter() - t0
        new = out[:, batch["input_ids"].shape[1] :]
        for row in new:
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            n_new += len(ids)
            answers.append(tok.decode(ids, skip_special_tokens=True).strip())
    return answers, n_new, seconds


def generate(model, tok, prompts: list[str], max_new_tokens: int = 96, *, batch_size: int = 10) -> list[str]:
    """Greedy chat completions for a list of user prompts (the model's own chat template)."""
    return timed_generate(model, tok, prompts, max_new_tokens, batch_size=batch_size)[0]


_SENTENCE = re.compile(r"[^.!?]+[.!?]?")


def answers_with_question(text: str) -> bool:
    """The seed's new failure mode, detected mechanically: the reply ends on a question, or at
    least half of its sentences are questions (a Socratic reply instead of an answer)."""
    sentences = [s.strip() for s in _SENTENCE.findall(text.strip()) if s.strip()]
    if not sentences:
        return False
    questions = sum(s.endswith("?") for s in sentences)
    return sentences[-1].endswith("?") or questions * 2 >= len(sentences)


def single_stream_tokens_per_s(model, tok, prompt: str, n_tokens: int, rounds: int = 3) -> list[float]:
    """Tokens/s of one request at a time (batch 1), forced to ``n_tokens`` new tokens, per round.

    The quantity the seed quoted (18.1 tok/s base vs 11.0 with an unmerged adapter): single-stream
    decoding is latency-bound, so per-step overheads (an adapter's extra matmuls, kernel launches)
    show in full, where a batch would hide them. One short warm-up call first (allocations, kernel
    selection), then ``rounds`` timed calls; report their median, not the first.
    """
    timed_generate(model, tok, [prompt], min(4, n_tokens), batch_size=1, min_new_tokens=min(4, n_tokens))
    rates = []
    for _ in range(rounds):
        _, n_new, seconds = timed_generate(model, tok, [prompt], n_tokens, batch_size=1, min_new_tokens=n_tokens)
        rates.append(n_new / seconds)
    return rates


def mentions(text: str, term: str) -> bool:
    """Whether ``text`` contains ``term`` as whole words (case-insensitive; a plural s/es is allowed):
    "ring" is not in "during", "bandwidth" is in "bandwidths", "risc-v" is in "a RISC-V core"."""
    pattern = r"(?<![\w-])" + re.escape(term.lower()) + r"(?:e?s)?(?![\w-])"
    return re.search(pattern, text.lower()) is not None


def answer_terms(prompt: str, key_terms: list[str]) -> list[str]:
    """The key terms an answer can earn: those the prompt does not already contain (a model that
    repeats the question gets no credit for it)."""
    return [t for t in key_terms if not mentions(prompt, t)]


def key_term_coverage(text: str, key_terms: list[str], prompt: str = "") -> float | None:
    """Share of a prompt's key terms, excluding those in the prompt itself, that the answer mentions
    as whole words: a crude, honest proxy for "talks about the right thing", not a correctness score.
    None when every key term is in the prompt (nothing left to measure)."""
    terms = answer_terms(prompt, key_terms)
    return sum(mentions(text, t) for t in terms) / len(terms) if terms else None


def mean_coverage(values: list[float | None]) -> float | None:
    """Mean over the prompts that have key terms left to earn (None if none has)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
