"""10.4 LLM-as-judge: score BASE / SFT / SFT+DPO answers on a 3-dimension rubric.

The judge (``phase10_alignment.rubric_judge``) reads the rubric, the question and one answer and returns a
1–5 score per dimension. Two methods, chosen by what the judge model can do:

- a hosted model (``--llm anthropic:claude-sonnet-4-5``; the seed used Claude Sonnet) answers with
  structured JSON, parsed strictly; a bad reply is retried with the error, then recorded as a
  failure — never silently scored;
- the embedded SmolLM2-135M cannot be relied on to write JSON, so it is read with ``choice_probs``:
  the probability of "1".."5" as the next token after "<dimension> score: ", and the expected score.

The answers are the ones ``phase10.compare`` generated (same cache). Controls check the judge
itself: each prompt is also paired with the answer to a *different* prompt, which any useful judge
must score lower on technical accuracy. Results record judge model, method, rubric sha256 and
prompt sha256 — a changed rubric is a different instrument.
"""

from __future__ import annotations

import statistics
from typing import Literal

from lab import Reference, RunContext
from lab.device import current
from lab.errors import MissingResource
from lab.exercise import Exercise
from lab.llm import check_spec, from_spec
from lab.models import EMBEDDED_LLM
from phase10_alignment import compare
from phase10_alignment.rubric_judge import Dimension, Judge, JudgeFailure, Rubric, summarize

RUBRIC = Rubric(
    name="phase10-technical-answer",
    version="1.0",
    dimensions=(
        Dimension(
            "technical_accuracy",
            "Are the technical statements correct and do they answer the question?",
            {
                1: "wrong or about a different topic",
                2: "mostly wrong, a correct fragment",
                3: "partly correct with notable errors or gaps",
                4: "correct with minor imprecision",
                5: "correct, precise and complete for the question",
            },
        ),
        Dimension(
            "conciseness",
            "Does it answer directly without filler or repetition?",
            {
                1: "rambling, repetitive or off-topic",
                2: "much filler",
                3: "some filler",
                4: "mostly direct",
                5: "direct and economical",
            },
        ),
        Dimension(
            "hallucination_avoidance",
            "Does it avoid invented facts, numbers, names and citations?",
            {
                1: "confident invented facts",
                2: "several unsupported specifics",
                3: "some unsupported specifics",
                4: "hedges where unsure, rare slips",
                5: "no invented content",
            },
        ),
    ),
)
VARIANT_LABELS = {"base": "BASE", "sft": "SFT", "dpo": "SFT+DPO"}
REFERENCES = (
    Reference("base_mean", 2.30, "score 1-5", "seed: Claude Sonnet judge, BASE"),
    Reference("sft_mean", 1.93, "score 1-5", "seed: SFT"),
    Reference("dpo_mean", 1.83, "score 1-5", "seed: SFT+DPO"),
)


class Config(compare.Config):
    llm: str = ""  # empty: --llm / $LAB_LLM, else the embedded SmolLM2
    method: Literal["auto", "json", "choice_probs"] = "auto"
    max_retries: int = 2
    max_tokens: int = 400
    n_controls: int = 3  # prompts also judged with a mismatched answer (judge sanity check)


def run(cfg: Config, ctx: RunContext) -> None:

    try:  # the judge is built after the generations: a hosted one without its API key must stop the run first
        check_spec(cfg.llm or None)
    except MissingResource as err:
        ctx.skip(f"the judge cannot run: {err} (checked before loading any model)")

    if cfg.require_cuda and (why := current().gpu_only_reason("the a100 profile judges Llama 3.1 8B generations")):
        ctx.skip(why)
    try:
        doc, _ = compare.generations(cfg, ctx)
        llm = from_spec(cfg.llm or None)
        judge = Judge(llm, RUBRIC, method=cfg.method, max_retries=cfg.max_retries, max_tokens=cfg.max_tokens)
        ctx.model(**llm.describe())
    except MissingResource as err:
        ctx.skip(str(err))
    info = judge.describe()
    prompts, answers = doc["prompts"], doc["answers"]

    results: dict[str, list] = {v: [] for v in VARIANT_LABELS}
    items = [(v, i) for v in VARIANT_LABELS for i in range(len(prompts))]
    for v, i in ctx.progress(items, "judging"):
        results[v].append(judge.score(prompts[i]["prompt"], answers[v][i]))
    n_ctrl = min(cfg.n_controls, len(prompts)) if len(prompts) > 1 else 0
    controls = [judge.score(prompts[i]["prompt"], answers["sft"][(i + 1) % len(prompts)]) for i in range(n_ctrl)]

    dims = [d.name for d in RUBRIC.dimensions]
    rows = []
    for v, label in VARIANT_LABELS.items():
        s = summarize(results[v], RUBRIC)
        rows.append([label] + [_r(s["means"][d]) for d in dims] + [_r(s["overall"]), s["n_scored"], s["n_failed"]])
        ctx.metric(
            f"{v}_mean",
            s["overall"],
            "score 1-5",
            higher_is_better=True,
            description=f"{label}: mean over {len(dims)} dimensions and {s['n_scored']} scored answers",
        )
        ctx.metric(f"{v}_failures", s["n_failed"], "answers", higher_is_better=False)
    ctx.table(
        "scores",
        rows,
        ["model"] + dims + ["mean", "scored", "failed"],
        title=f"Judge means per variant ({info['judge_model']}, method {info['method']})",
    )
    per_item = []
    for i, p in enumerate(prompts):
        row = [p.get("id") or str(i + 1)]
        for v in VARIANT_LABELS:
            r = results[v][i]
            row.append("FAILED" if isinstance(r, JudgeFailure) else " / ".join(f"{r.scores[d]:.1f}" for d in dims))
        per_item.append(row)
    ctx.table(
        "per_prompt",
        per_item,
        ["prompt"] + [f"{label} ({'/'.join(d[:4] for d in dims)})" for label in VARIANT_LABELS.values()],
        title="Scores per prompt: accuracy / conciseness / hallucination avoidance",
    )
    failures = [(v, i, r) for v in VARIANT_LABELS for i, r in enumerate(results[v]) if isinstance(r, JudgeFailure)]
    if failures:
        ctx.table(
            "failures",
            [[VARIANT_LABELS[v], i + 1, r.attempts, r.reason[:200]] for v, i, r in failures],
            ["model", "prompt", "attempts", "reason"],
            title="Answers the judge could not score (not counted)",
        )
    ctx.metric("judge_failures", len(failures), "answers", higher_is_better=False)
    for key in ("rubric_sha256", "prompt_sha256"):
        ctx.metric(key, info[key], "", description=f"judge {info['judge_model']} ({info['method']}), {info['rubric']}")
    ctx.metric("judge_method", info["method"], "")

    scored = [r for v in VARIANT_LABELS for r in results[v] if not isinstance(r, JudgeFailure)]
    acc = [r.scores["technical_accuracy"] for r in scored]
    ctrl_acc = [r.scores["technical_accuracy"] for r in controls if not isinstance(r, JudgeFailure)]
    matched_acc = [
        results["sft"][i].scores["technical_accuracy"]
        for i in range(n_ctrl)
        if not isinstance(results["sft"][i], JudgeFailure)
    ]
    if ctrl_acc and matched_acc:
        gap = statistics.mean(matched_acc) - statistics.mean(ctrl_acc)
        ctx.metric(
            "control_accuracy_gap",
            gap,
            "score",
            higher_is_better=True,
            description="SFT answer to the right prompt minus an answer to a different prompt (accuracy)",
        )
    spread = statistics.pstdev(acc) if len(acc) > 1 else 0.0
    ctx.metric("accuracy_score_stdev", spread, "score", description="spread of technical_accuracy over all answers")
    if info["method"] == "choice_probs" and scored:
        peak = statistics.mean(max(d.values()) for r in scored for k, d in r.details.items() if k in dims)
        ctx.metric("mean_top_choice_prob", peak, "", description="how peaked the judge's 1..5 distribution is")
        lengths = [
            len(answers[v][i])
            for v in VARIANT_LABELS
            for i in range(len(prompts))
            if not isinstance(results[v][i], JudgeFailure)
        ]
        corr = _pearson(lengths, [r.scores["conciseness"] for r in scored])
        gap_text = (
            f"the matched answer scored {gap:+.2f} vs an answer to a *different* question (technical "
            f"accuracy, {len(ctrl_acc)} controls)"
            if ctrl_acc and matched_acc
            else "no controls were run"
        )
        blind = not (ctrl_acc and matched_acc) or gap < 0.25
        ctx.finding(
            f"What a {llm.spec} judge can and cannot do (choice_probs): technical-accuracy scores spread by "
            f"±{spread:.2f} over {len(acc)} answers; its most likely digit gets {peak:.0%} of the probability on "
            f"average (20% = uniform over 1..5); {gap_text}; conciseness "
            f"vs answer length r = {corr:+.2f}. "
            + (
                "It cannot tell a matched answer from a mismatched one, so its means measure the prompt format, not "
                "answer quality: what it can do is exercise the pipeline (constrained choice, failure accounting, "
                "hashes) offline. "
                if blind
                else "The mismatched-answer control scores clearly lower, so it carries "
                "some signal; still check it against a stronger judge before trusting small differences. "
            )
            + "Use --llm anthropic:… (json method) for scores comparable to the seed's."
        )
    seed = EXERCISE.seed
    ctx.finding(
        f"Seed (Claude Sonnet judging Llama 3.1 8B): BASE {seed('base_mean'):.2f} > SFT {seed('sft_mean'):.2f} > DPO "
        f"{seed('dpo_mean'):.2f} — SFT taught a confident, "
        "specific style that hallucination avoidance punishes, and DPO on general-helpfulness pairs barely moved it. "
        f"Here: BASE {_fmt(ctx, 'base_mean')}, SFT {_fmt(ctx, 'sft_mean')}, SFT+DPO {_fmt(ctx, 'dpo_mean')} "
        f"with {len(failures)} unscored answers."
    )


def _r(x):
    return None if x is None else round(x, 2)


def _fmt(ctx: RunContext, name: str) -> str:
    m = ctx.metrics.get(name)
    return "n/a" if m is None or m["value"] is None else f"{m['value']:.2f}"


def _pearson(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return 0.0
    return statistics.correlation(xs, ys)


EXERCISE = Exercise(
    id="phase10.judge",
    title="LLM-as-judge over BASE / SFT / SFT+DPO",
    run=run,
    config_cls=Config,
    # generation settings as phase10.compare's, so the judge scores the generations compare stored
    profiles={
        "cpu": dict(compare.EXERCISE.profiles["cpu"]),
        "a100": dict(
            compare.EXERCISE.profiles["a100"], llm="anthropic:claude-sonnet-4-5", method="json", n_controls=10
        ),
    },
    tiny=dict(compare.EXERCISE.tiny, n_controls=1),
    # the judging path with the embedded judge in place of the API judge (no network in a smoke)
    smoke=dict(compare.EXERCISE.smoke, n_controls=1, llm=""),
    references=REFERENCES,
    summary_metrics=("base_mean", "sft_mean", "dpo_mean", "judge_failures"),
    needs=compare.EXERCISE.needs,  # it scores phase10.compare's generations of the same adapters
    methods={
        "cpu": f"substitute: a {EMBEDDED_LLM.size_label} choice-probability judge ({EMBEDDED_LLM.family}) in place of Claude Sonnet",
        "a100": "same",
    },
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
