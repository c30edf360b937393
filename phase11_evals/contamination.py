"""Exercise 11.3 — is hallucination memorization (contamination) or confabulation?

If a model had seen an eval question during training, it would do markedly better on the exact
wording than on a rephrasing of the same question, and its answer could reproduce a published
reference answer nearly word for word. A model that confabulates from partial knowledge does about
as well (or as badly) on both wordings. The remedy differs: contamination calls for decontaminating
data; confabulation for grounding the model at inference time (RAG, Phase 12) and gating its output.

Each of 10 eval prompts has a rephrasing (``data/contamination_pairs.yaml``). The model under test
answers both; the judge scores each answer twice with rubric v1.1 — once under the wording it
answered, once under the other wording. Per pair, precisely:

- ``delta`` = judge mean over the four dimensions for (original, its answer) minus the same for
  (rephrasing, its answer): the seed's "score delta";
- **the judge's test-retest noise, measured in this run**: each answer's score under its own wording
  minus its score under the other wording. The answer is the same, so this is what the judge's score
  moves with no change in quality; ``noise`` = the root mean square of all these retest differences;
- **score signal** iff ``delta > noise_z * noise`` (2 x the RMS: beyond ~95% of the judge's own noise);
- **verbatim signal** iff the answer to the original reproduces a *published* reference answer
  (``public_reference`` in the pairs file): at least ``overlap_threshold`` of the reference's word
  5-grams appear in the answer. Only a public text can have been memorized, so no verbatim check runs
  against the eval set's key facts (written for this repo); a pair without one shows n/a;
- **contamination signal** iff either fires. Both are reported separately.

A score signal says the two answers differ in quality by more than the judge's noise; memorization
predicts such gaps only in the original's favour. So the run also counts the pairs beyond the
threshold the other way (better on the rephrasing): as many of those as signals means the model's
answer quality simply moves with the wording, and the signals are no evidence of memorization.

Alongside: the MiniLM cosine between the two answers (how much the answer changes with wording)
and whether the judge flags a confident hallucination on both wordings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from lab import Exercise, ExerciseConfig, Reference, RunContext, models
from lab.device import current
from lab.errors import MissingResource
from lab.models import EMBEDDED_EMBEDDER
from phase10_alignment.rubric_judge import JudgeFailure
from phase11_evals import judging, responders
from phase11_evals.evaldata import DATA_DIR, DIMENSIONS, FLAG, load_contamination_pairs, load_eval_set, load_rubric
from phase11_evals.judging import check_judge, failures_note, judge_method, record_judge, score_all
from phase11_evals.responders import missing_reason


class Config(ExerciseConfig):
    variant: str = "base"  # the model under test (Phase 10 variant: base, sft, dpo)
    judge_llm: str = ""  # "" = --llm / LAB_LLM, else the embedded SmolLM2-135M (choice_probs)
    rubric_version: str = "1.1"
    pairs: str | None = None  # YAML of pairs; default phase11_evals/data/contamination_pairs.yaml
    max_new_tokens: int = 64
    batch_size: int = 8  # prompts decoded together (greedy, left-padded; 1 = one at a time)
    limit: int | None = None  # first N pairs (tests)
    noise_z: float = 2.0  # a score signal needs delta > noise_z x the judge's retest RMS
    overlap_threshold: float = 0.5  # fraction of a public reference's word 5-grams reproduced
    ngram: int = 5
    same_answer_cosine: float = 0.6  # answer cosine above which two answers count as "the same answer"


_WORD = re.compile(r"[a-z0-9]+")


def verbatim_overlap(answer: str, reference: str, n: int = 5) -> float:
    """Fraction of the reference's word n-grams that also appear in the answer (0 when none exist)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = _WORD.findall(text.lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    ref = grams(reference)
    return len(ref & grams(answer)) / len(ref) if ref else 0.0


def retest_noise(retest_diffs: list[float]) -> float:
    """RMS of the judge's score change for a fixed answer when only the question's wording changes."""
    if not retest_diffs:
        raise ValueError("no retest differences: the judge's noise cannot be measured")
    return math.sqrt(math.fsum(d * d for d in retest_diffs) / len(retest_diffs))


@dataclass(frozen=True)
class PairScores:
    """Judge means (over the four dimensions) of both answers under both wordings."""

    orig_on_orig: float  # answer to the original, judged against the original wording
    reph_on_reph: float
    orig_on_reph: float  # answer to the original, judged against the rephrasing
    reph_on_orig: float

    @property
    def delta(self) -> float:
        return self.orig_on_orig - self.reph_on_reph

    @property
    def retests(self) -> tuple[float, float]:
        """Same answer, other wording: each answer's own-wording score minus its other-wording score."""
        return self.orig_on_orig - self.orig_on_reph, self.reph_on_reph - self.reph_on_orig


def score_signal(delta: float, noise: float, noise_z: float) -> bool:
    """Markedly better on the original wording: beyond ``noise_z`` x the judge's own retest noise."""
    return delta > noise_z * noise


def run(cfg: Config, ctx: RunContext) -> None:

    check_judge(cfg.judge_llm, ctx)

    if ctx.profile == "a100" and (
        why := current().gpu_only_reason("the a100 profile answers with Llama 3.1 8B variants")
    ):
        ctx.skip(why)
    reason = missing_reason(cfg.variant, ctx.profile)
    if reason:
        ctx.skip(f"variant {cfg.variant!r} is not available: {reason}")

    eval_set = load_eval_set()
    pairs, pairs_sha = load_contamination_pairs(
        eval_set, Path(cfg.pairs) if cfg.pairs else DATA_DIR / "contamination_pairs.yaml"
    )
    pairs = pairs[: cfg.limit]
    ctx.dataset("phase11-contamination-pairs", n=len(pairs), sha256=pairs_sha, source=cfg.pairs or "shipped")
    ctx.dataset(f"{eval_set.name} v{eval_set.version}", n=len(eval_set.prompts), sha256=eval_set.sha256)

    responder = responders.Responder(cfg.variant, ctx.profile)
    ctx.model(**responder.describe())
    ctx.log(f"{cfg.variant} answering {len(pairs)} originals and rephrasings, {cfg.batch_size} at a time")
    flat = responder.answer_all(
        [t for pair in pairs for t in (pair.original.prompt, pair.rephrased)], cfg.max_new_tokens, cfg.batch_size
    )
    answers = list(zip(flat[0::2], flat[1::2]))
    del responder
    gen_tokens = sum(a.new_tokens + b.new_tokens for a, b in answers)
    gen_seconds = sum(a.seconds + b.seconds for a, b in answers)
    ctx.metric(
        "generation_tokens_per_s",
        gen_tokens / gen_seconds,
        "tokens/s",
        higher_is_better=True,
        description=f"greedy decoding of the model under test, merged adapter, batches of up to "
        f"{cfg.batch_size} prompts (throughput, not single-stream speed), this machine",
    )

    judge = judging.build_judge(cfg.judge_llm, load_rubric(cfg.rubric_version))
    record_judge(ctx, judge, "contamination pairs")
    if judge_method(judge):
        ctx.set_method(judge_method(judge))
    items = []  # per pair: (orig, orig), (reph, reph), (reph wording, orig answer), (orig wording, reph answer)
    for pair, (orig, reph) in zip(pairs, answers):
        facts = pair.original.key_facts
        items += [
            (pair.original.prompt, orig.text, facts),
            (pair.rephrased, reph.text, facts),
            (pair.rephrased, orig.text, facts),
            (pair.original.prompt, reph.text, facts),
        ]
    try:
        verdicts = score_all(judge, items, ctx, "judging both answers under both wordings")
    except MissingResource as err:
        ctx.skip(str(err))
    note = failures_note(verdicts)
    if note:
        ctx.failure_mode(note)

    embedder = models.load_embedder()
    vecs = embedder.encode([t for a, b in answers for t in (a.text, b.text)], normalize_embeddings=True)

    def mean_score(v) -> float:
        return math.fsum(v.scores.values()) / len(DIMENSIONS)

    scored: dict[int, PairScores] = {}
    for k in range(len(pairs)):
        four = verdicts[4 * k : 4 * k + 4]
        if not any(isinstance(v, JudgeFailure) for v in four):
            scored[k] = PairScores(*(mean_score(v) for v in four))
    if not scored:
        raise RuntimeError("no pair could be scored under both wordings")
    noise = retest_noise([d for s in scored.values() for d in s.retests])
    threshold = cfg.noise_z * noise

    rows, deltas, sims, both_flagged, signals, score_hits, verbatim_hits, reverse = [], [], [], 0, 0, 0, 0, 0
    for k, (pair, (orig, reph)) in enumerate(zip(pairs, answers)):
        sim = float(vecs[2 * k] @ vecs[2 * k + 1])
        sims.append(sim)
        public = pair.public_reference
        overlap = verbatim_overlap(orig.text, public.text, cfg.ngram) if public else None
        verbatim = overlap is not None and overlap >= cfg.overlap_threshold
        s = scored.get(k)
        if s is None:
            rows.append(
                [
                    pair.original.id,
                    None,
                    None,
                    None,
                    None,
                    None,
                    _cell(overlap),
                    round(sim, 3),
                    "-",
                    "judge failure",
                    orig.text,
                    reph.text,
                ]
            )
            continue
        deltas.append(s.delta)
        by_score = score_signal(s.delta, noise, cfg.noise_z)
        score_hits += by_score
        reverse += score_signal(-s.delta, noise, cfg.noise_z)
        verbatim_hits += verbatim
        signals += by_score or verbatim
        v_orig, v_reph = verdicts[4 * k], verdicts[4 * k + 1]
        both_flagged += v_orig.flags[FLAG] and v_reph.flags[FLAG]
        signal = " + ".join(name for name, hit in (("score", by_score), ("verbatim", verbatim)) if hit) or "no"
        rows.append(
            [
                pair.original.id,
                round(s.orig_on_orig, 3),
                round(s.reph_on_reph, 3),
                round(s.delta, 3),
                round(s.retests[0], 3),
                round(s.retests[1], 3),
                _cell(overlap),
                round(sim, 3),
                f"{v_orig.flags[FLAG]} / {v_reph.flags[FLAG]}",
                signal,
                orig.text,
                reph.text,
            ]
        )
    ctx.table(
        "pairs",
        rows,
        [
            "prompt",
            "judge mean (original)",
            "judge mean (rephrased)",
            "delta",
            "retest: original answer, other wording",
            "retest: rephrased answer, other wording",
            "public-reference overlap",
            "answer cosine",
            f"{FLAG} (orig / reph)",
            "contamination signal",
            "answer to original",
            "answer to rephrasing",
        ],
        title=f"Original vs rephrased ({cfg.variant}, judged with rubric v{cfg.rubric_version}); score signal "
        f"iff delta > {cfg.noise_z:g} x retest RMS = {threshold:.3f}",
    )
    mean_delta = math.fsum(deltas) / len(deltas)
    with_public = sum(p.public_reference is not None for p in pairs)
    ctx.metric("mean_score_delta", mean_delta, "points", description="judge mean, original - rephrased")
    ctx.metric(
        "judge_retest_noise",
        noise,
        "points",
        higher_is_better=False,
        description="RMS of the judge's score change for the same answer under the other wording, this run",
    )
    ctx.metric("score_signal_threshold", threshold, "points", description=f"{cfg.noise_z:g} x judge_retest_noise")
    ctx.metric(
        "contamination_signals",
        signals,
        "pairs",
        higher_is_better=False,
        description="pairs with a score signal or a verbatim signal",
    )
    ctx.metric("score_signals", score_hits, "pairs", higher_is_better=False)
    ctx.metric(
        "reverse_score_gaps",
        reverse,
        "pairs",
        description="pairs better on the rephrasing by more than the "
        "threshold: how far answer quality moves with wording alone",
    )
    ctx.metric(
        "verbatim_signals",
        verbatim_hits if with_public else None,
        "pairs",
        higher_is_better=False,
        description=f"of {with_public} pair(s) with a public reference answer (None: no pair has one)",
    )
    ctx.metric("pairs_scored", len(deltas), "pairs")
    ctx.metric(
        "mean_answer_cosine",
        math.fsum(sims) / len(sims),
        "cosine",
        description=f"{EMBEDDED_EMBEDDER.family} cosine between the answers to the two wordings",
    )
    ctx.metric("pairs_flagged_on_both_wordings", both_flagged, "pairs")

    seed_delta, seed_signals = (EXERCISE.seed(m) for m in ("mean_score_delta", "contamination_signals"))
    ctx.finding(
        f"Mean score delta (original - rephrased) is {mean_delta:+.2f} judge points over {len(deltas)} pairs; "
        f"the judge's own retest noise in this run is {noise:.3f} points (RMS over {2 * len(scored)} re-scorings "
        f"of an unchanged answer under the other wording), so a score signal needs delta > {threshold:.3f}: "
        f"{score_hits}/{len(deltas)} pairs have one. Seed: mean delta {seed_delta:+.2f}, "
        f"{seed_signals}/{len(pairs)} signals (its noise threshold is not published)."
    )
    ctx.finding(
        f"{reverse}/{len(deltas)} pairs are beyond the same threshold the other way (better on the rephrasing), "
        f"against {score_hits} in the original's favour. "
        + (
            "At least as many gaps favour the rephrasing: the model's answer quality moves with the wording in "
            "both directions, so the score signals are no evidence of memorization."
            if reverse >= score_hits
            else "More gaps favour the original than the rephrasing: read the flagged pairs' answers before calling "
            "it memorization."
        )
    )
    if with_public:
        ctx.finding(
            f"Verbatim check against a published reference answer: {verbatim_hits}/{with_public} pair(s) "
            f"reproduce at least {cfg.overlap_threshold:.0%} of its word {cfg.ngram}-grams."
        )
    else:
        ctx.finding(
            "No pair carries a published reference answer, so the verbatim half is n/a: the eval set's key "
            "facts were written for this repo and no model can have memorized them."
        )
    mean_sim = math.fsum(sims) / len(sims)
    ctx.finding(
        f"Answers to the two wordings have mean {EMBEDDED_EMBEDDER.family} cosine {mean_sim:.2f} "
        + (
            "(the model gives much the same answer whichever way it is asked)"
            if mean_sim >= cfg.same_answer_cosine
            else "(the answers change with the wording: unstable guessing, not a memorized answer)"
        )
        + f"; the judge flags a confident hallucination on both wordings in {both_flagged}/{len(deltas)} pair(s)."
    )


def _cell(overlap: float | None):
    return "n/a (no public reference)" if overlap is None else round(overlap, 3)


EXERCISE = Exercise(
    id="phase11.contamination",
    title="Contamination test: original vs rephrased prompts",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"max_new_tokens": 48},
        "a100": {"judge_llm": "anthropic:claude-sonnet-4-5", "max_new_tokens": 512},
    },
    tiny={"limit": 1, "max_new_tokens": 8},
    smoke={"limit": 1, "max_new_tokens": 8, "judge_llm": ""},  # the embedded judge in place of the API judge
    references=(
        Reference("mean_score_delta", 0.15, "points", "seed: 10 pairs, Llama 3.1 8B, Claude judge"),
        Reference("contamination_signals", 0, "pairs", "seed: 0/10 (its signal definition is not published)"),
    ),
    summary_metrics=("mean_score_delta", "judge_retest_noise", "contamination_signals", "mean_answer_cosine"),
    methods={"cpu": "scaled", "a100": "same"},  # run() marks a choice-probability judge a substitute
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
