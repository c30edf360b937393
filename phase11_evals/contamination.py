"""Exercise 11.3 — is hallucination memorization (contamination) or confabulation?

If a model had seen an eval question during training, it would do markedly better on the exact
wording than on a rephrasing of the same question, and its answer to the original would reproduce
a known reference answer nearly word for word. A model that confabulates from partial knowledge
does about as well (or as badly) on both wordings, and gives the same kind of answer either way.
The remedy differs: contamination calls for decontaminating data; confabulation for grounding the
model in correct information at inference time (RAG, Phase 12) and gating its output (the Editor).

Each of 10 eval prompts has a rephrasing (``data/contamination_pairs.yaml``). The model under test
answers both; the judge scores both with rubric v1.1. Per pair, precisely:

- ``delta`` = judge mean over the four dimensions (original) - judge mean (rephrased);
- ``overlap`` = verbatim overlap of the original's answer with the known reference (the eval item's
  key facts): the fraction of the reference's word 5-grams that also occur in the answer;
- **contamination signal** iff ``delta >= delta_threshold`` (0.5 points) AND
  ``overlap >= overlap_threshold`` (0.5). Both halves are needed: a score gap alone is judge noise
  or wording difficulty, and overlap alone is a model that happens to know the standard phrasing.

Alongside: the MiniLM cosine between the two answers (how much the answer changes with wording)
and whether the judge flags a confident hallucination on both wordings.

Caveat stated plainly: the key facts were written for this repo, so no model can have memorized
them verbatim — the overlap half is a check that fires only on a genuinely memorized reference
(swap in a public benchmark's answers to test a public set). The delta half is informative here.
"""

from __future__ import annotations

import math
import re

from lab import Exercise, ExerciseConfig, Reference, RunContext


class Config(ExerciseConfig):
    variant: str = "base"  # the model under test (Phase 10 variant: base, sft, dpo)
    judge_llm: str = ""  # "" = --llm / LAB_LLM, else the embedded SmolLM2-135M (choice_probs)
    rubric_version: str = "1.1"
    max_new_tokens: int = 64
    limit: int | None = None  # first N pairs (tests)
    delta_threshold: float = 0.5  # judge points, on the 1-5 mean
    overlap_threshold: float = 0.5  # fraction of the reference's word 5-grams reproduced
    ngram: int = 5
    same_answer_cosine: float = 0.6  # answer cosine above which two answers count as "the same answer"


_WORD = re.compile(r"[a-z0-9]+")


def verbatim_overlap(answer: str, reference: str, n: int = 5) -> float:
    """Fraction of the reference's word n-grams that also appear in the answer (0 when none exist)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    ref = grams(reference)
    return len(ref & grams(answer)) / len(ref) if ref else 0.0


def is_contamination_signal(delta: float, overlap: float, delta_threshold: float, overlap_threshold: float) -> bool:
    """The definition the README states: markedly better on the original AND near-verbatim to the reference."""
    return delta >= delta_threshold and overlap >= overlap_threshold


def run(cfg: Config, ctx: RunContext) -> None:
    import torch

    from lab import models
    from lab.errors import MissingResource
    from phase10_alignment.judge import JudgeFailure
    from phase11_evals.evaldata import DIMENSIONS, FLAG, load_contamination_pairs, load_eval_set, load_rubric
    from phase11_evals.judging import build_judge, failures_note, record_judge, score_all
    from phase11_evals.responders import Responder, missing_reason

    if ctx.profile == "a100" and not torch.cuda.is_available():
        ctx.skip("the a100 profile answers with Llama 3.1 8B variants and needs a CUDA GPU")
    reason = missing_reason(cfg.variant, ctx.profile)
    if reason:
        ctx.skip(f"variant {cfg.variant!r} is not available: {reason}")

    eval_set = load_eval_set()
    pairs, pairs_sha = load_contamination_pairs(eval_set)
    pairs = pairs[: cfg.limit]
    ctx.dataset("phase11-contamination-pairs v1.0", n=len(pairs), sha256=pairs_sha)
    ctx.dataset(f"{eval_set.name} v{eval_set.version}", n=len(eval_set.prompts), sha256=eval_set.sha256)

    responder = Responder(cfg.variant, ctx.profile)
    ctx.model(**responder.describe())
    answers = []
    for pair in ctx.progress(pairs, f"{cfg.variant} answering originals and rephrasings"):
        answers.append((responder.answer(pair.original.prompt, cfg.max_new_tokens),
                        responder.answer(pair.rephrased, cfg.max_new_tokens)))
    del responder
    gen_tokens = sum(a.new_tokens + b.new_tokens for a, b in answers)
    gen_seconds = sum(a.seconds + b.seconds for a, b in answers)
    ctx.metric("generation_tokens_per_s", gen_tokens / gen_seconds, "tokens/s", higher_is_better=True,
               description="greedy decoding of the model under test, merged adapter, this machine")

    judge = build_judge(cfg.judge_llm, load_rubric(cfg.rubric_version))
    record_judge(ctx, judge, "contamination pairs")
    items = []
    for pair, (orig, reph) in zip(pairs, answers):
        items += [(pair.original.prompt, orig.text, pair.original.key_facts), (pair.rephrased, reph.text, pair.original.key_facts)]
    try:
        verdicts = score_all(judge, items, ctx, "judging both wordings")
    except MissingResource as err:
        ctx.skip(str(err))
    note = failures_note(verdicts)
    if note:
        ctx.failure_mode(note)

    embedder = models.load_embedder()
    vecs = embedder.encode([t for a, b in answers for t in (a.text, b.text)], normalize_embeddings=True)

    rows, deltas, signals, sims, both_flagged = [], [], 0, [], 0
    for k, (pair, (orig, reph)) in enumerate(zip(pairs, answers)):
        v_orig, v_reph = verdicts[2 * k], verdicts[2 * k + 1]
        sim = float(vecs[2 * k] @ vecs[2 * k + 1])
        sims.append(sim)
        overlap = verbatim_overlap(orig.text, pair.original.key_facts, cfg.ngram)
        if isinstance(v_orig, JudgeFailure) or isinstance(v_reph, JudgeFailure):
            rows.append([pair.original.id, None, None, None, round(overlap, 3), round(sim, 3), "-", "judge failure",
                         orig.text, reph.text])
            continue
        m_orig = math.fsum(v_orig.scores.values()) / len(DIMENSIONS)
        m_reph = math.fsum(v_reph.scores.values()) / len(DIMENSIONS)
        delta = m_orig - m_reph
        deltas.append(delta)
        signal = is_contamination_signal(delta, overlap, cfg.delta_threshold, cfg.overlap_threshold)
        signals += signal
        both_flagged += v_orig.flags[FLAG] and v_reph.flags[FLAG]
        rows.append([pair.original.id, round(m_orig, 3), round(m_reph, 3), round(delta, 3), round(overlap, 3),
                     round(sim, 3), f"{v_orig.flags[FLAG]} / {v_reph.flags[FLAG]}", "SIGNAL" if signal else "no",
                     orig.text, reph.text])
    ctx.table("pairs", rows, ["prompt", "judge mean (original)", "judge mean (rephrased)", "delta", "verbatim overlap",
                              "answer cosine", f"{FLAG} (orig / reph)", "contamination signal", "answer to original",
                              "answer to rephrasing"],
              title=f"Original vs rephrased ({cfg.variant}, judged with rubric v{cfg.rubric_version})")
    if not deltas:
        raise RuntimeError("no pair could be scored on both wordings")
    mean_delta = math.fsum(deltas) / len(deltas)
    ctx.metric("mean_score_delta", mean_delta, "points", description="judge mean, original - rephrased")
    ctx.metric("contamination_signals", signals, "pairs", higher_is_better=False)
    ctx.metric("pairs_scored", len(deltas), "pairs")
    ctx.metric("mean_answer_cosine", math.fsum(sims) / len(sims), "cosine",
               description="MiniLM cosine between the answers to the two wordings")
    ctx.metric("pairs_flagged_on_both_wordings", both_flagged, "pairs")

    ctx.finding(f"Mean score delta (original - rephrased) is {mean_delta:+.2f} judge points over {len(deltas)} pairs; "
                f"{signals}/{len(deltas)} pairs meet the contamination definition (delta >= {cfg.delta_threshold} AND "
                f"verbatim overlap >= {cfg.overlap_threshold}). Seed: +0.15 and 0/10.")
    mean_sim = math.fsum(sims) / len(sims)
    ctx.finding(f"Answers to the two wordings have mean MiniLM cosine {mean_sim:.2f} "
                + ("(the model gives much the same answer whichever way it is asked)" if mean_sim >= cfg.same_answer_cosine
                   else "(the answers change with the wording: unstable guessing, not a memorized answer)")
                + f"; the judge flags a confident hallucination on both wordings in {both_flagged}/{len(deltas)} pair(s).")
    ctx.finding("The verbatim half of the signal cannot fire on references written for this repo; with a "
                f"{'135M choice_probs' if judge.method == 'choice_probs' else judge.method} judge the delta half is "
                "measured with the judge's own noise (see phase11.calibration), so a small delta is 'no evidence of "
                "contamination', not proof of its absence.")


EXERCISE = Exercise(
    id="phase11.contamination",
    title="Contamination test: original vs rephrased prompts",
    run=run,
    config_cls=Config,
    profiles={"cpu": {"max_new_tokens": 48}, "a100": {"judge_llm": "anthropic:claude-sonnet-4-5", "max_new_tokens": 512}},
    tiny={"limit": 1, "max_new_tokens": 8},
    references=(
        Reference("mean_score_delta", 0.15, "points", "seed: 10 pairs, Llama 3.1 8B, Claude judge"),
        Reference("contamination_signals", 0, "pairs", "seed: 0/10"),
    ),
    summary_metrics=("mean_score_delta", "contamination_signals", "mean_answer_cosine"),
    methods={"cpu": "scaled", "a100": "same"},  # run() marks a choice-probability judge a substitute
)

if __name__ == "__main__":
    EXERCISE.main()
