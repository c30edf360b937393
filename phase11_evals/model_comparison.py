"""Exercise 11.4 — score BASE / SFT / SFT+DPO on the eval set with the calibrated rubric.

Phase 10's helpfulness rubric ranked BASE first; the seed's Phase 11 rubric, which punishes
confident hallucination, reversed the ranking and split the dimensions in two: fine-tuning raised
the *style* dimensions (mechanistic_depth, audience_calibration) and lowered the *accuracy*
dimensions (technical_accuracy, calibration) — the model learned to write like an expert without
becoming one. This exercise repeats that measurement:

1. every available variant (Phase 10's ``load_variant``, fresh base + one merged adapter) answers
   the eval prompts (cpu: one per category and short answers; a100: all 50, seed-length answers);
2. the judge scores every answer with rubric v1.1 (scores + confident_hallucination flag);
3. per variant: mean score, flag rate, Editor-gate approval rate; per dimension; per category;
4. the two-by-two: change in style mean vs change in accuracy mean, each fine-tuned variant vs BASE.

An approval is only as good as the judge behind it, so the same judge first scores the calibration
set (phase11.calibration's 20 reference-scored responses) in this run: gate approvals are reported
only when its Pearson r against the reference reaches ``pass_r`` (the seed's bar); otherwise
they are n/a, with the r that failed.

Variants whose adapters are not in the cache are listed with the reason and left out; nothing is
trained here. A 135M choice_probs judge scores nearly everything alike (see phase11.calibration),
so on cpu the differences between variants are within judge noise; the numbers are reported anyway.
"""

from __future__ import annotations

import gc
import math

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.device import current
from lab.errors import MissingResource
from lab.models import EMBEDDED_LLM
from phase10_alignment.rubric_judge import JudgeFailure
from phase10_alignment.variants import VARIANT_ADAPTERS, VARIANTS
from phase11_evals import editor_gate, judging, responders
from phase11_evals.calibration import calibration_inputs, judge_calibration
from phase11_evals.evaldata import DIMENSIONS, FLAG, load_calibration, load_eval_set, load_rubric
from phase11_evals.judging import check_judge, failures_note, judge_method, record_judge, score_all
from phase11_evals.responders import missing_reason

STYLE = ("mechanistic_depth", "audience_calibration")
ACCURACY = ("technical_accuracy", "calibration")


class Config(ExerciseConfig):
    variants: list[str] = ["base", "sft", "dpo"]
    judge_llm: str = ""  # "" = --llm / LAB_LLM, else the embedded SmolLM2-135M (choice_probs)
    rubric_version: str = "1.1"
    per_category: int | None = 1  # prompts per category, first in file order (None = all 50)
    limit: int | None = None  # cap on prompts after per_category (tests)
    max_new_tokens: int = 48
    batch_size: int = 8  # prompts decoded together (greedy, left-padded; 1 = one at a time)
    calibration_limit: int | None = None  # calibration items the judge scores in this run (None = all 20)
    pass_r: float = 0.75  # gate approvals are reported only for a judge at or above this r


def _mean(xs) -> float | None:
    xs = list(xs)
    return math.fsum(xs) / len(xs) if xs else None


def quadrant(d_style: float, d_accuracy: float, eps: float = 0.05) -> str:
    """Name the two-by-two cell of a (style change, accuracy change) pair; |change| < eps is 'flat'."""

    def word(d):
        return "up" if d >= eps else "down" if d <= -eps else "flat"

    return f"style {word(d_style)}, accuracy {word(d_accuracy)}"


def run(cfg: Config, ctx: RunContext) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    check_judge(cfg.judge_llm, ctx)

    if ctx.profile == "a100" and (
        why := current().gpu_only_reason("the a100 profile answers with Llama 3.1 8B variants")
    ):
        ctx.skip(why)
    eval_set = load_eval_set()
    prompts = eval_set.subset(cfg.per_category)[: cfg.limit]
    ctx.dataset(
        f"{eval_set.name} v{eval_set.version}",
        n=len(prompts),
        sha256=eval_set.sha256,
        selection=f"{cfg.per_category or 'all'} per category" + (f", first {cfg.limit}" if cfg.limit else ""),
    )

    status_rows, variants = [], []
    for name in cfg.variants:
        reason = missing_reason(name, ctx.profile)
        status_rows.append([name, "scored" if reason is None else "unavailable", reason or ""])
        if reason is None:
            variants.append(name)
        else:
            ctx.failure_mode(f"variant {name} left out: {reason}")
    ctx.table("variants", status_rows, ["variant", "status", "reason"], title="Variants requested")
    for name in VARIANTS:  # a declared summary metric of a variant not scored here is null, never missing
        if name not in variants:
            ctx.metric(
                f"mean_{name}",
                None,
                "points",
                higher_is_better=True,
                description=f"{name} was not scored in this run (see the variants table)",
            )
    if not variants:
        raise RuntimeError(f"none of the variants {cfg.variants} is available: {status_rows}")

    answers: dict[str, list] = {}
    for name in variants:
        responder = responders.Responder(name, ctx.profile)
        ctx.model(**responder.describe())
        if responder.adapter is not None:
            ctx.record_artifact(responder.adapter, "used")
        ctx.log(f"{name} answering {len(prompts)} prompts, {cfg.batch_size} at a time")
        answers[name] = responder.answer_all([p.prompt for p in prompts], cfg.max_new_tokens, cfg.batch_size)
        del responder
        gc.collect()
    tokens = sum(a.new_tokens for v in answers.values() for a in v)
    seconds = sum(a.seconds for v in answers.values() for a in v)
    ctx.metric(
        "generation_tokens_per_s",
        tokens / seconds,
        "tokens/s",
        higher_is_better=True,
        description=f"greedy decoding, merged adapter, batches of up to {cfg.batch_size} prompts "
        "(throughput, not single-stream speed), this machine",
    )

    judge = judging.build_judge(cfg.judge_llm, load_rubric(cfg.rubric_version))
    record_judge(ctx, judge, "model comparison")
    if judge_method(judge):
        ctx.set_method(judge_method(judge))
    calib = load_calibration(eval_set)
    calib_items = list(calib.items[: cfg.calibration_limit])
    ctx.dataset(
        f"{calib.name} v{calib.version}",
        n=len(calib_items),
        sha256=calib.sha256,
        labeller=calib.labeller,
        used_for="calibrating this run's judge before its gate approvals count",
    )
    verdicts: dict[str, list] = {}
    try:
        calib_verdicts = score_all(judge, calibration_inputs(eval_set, calib_items), ctx, "calibrating the judge")
        for name in variants:
            verdicts[name] = score_all(
                judge, [(p.prompt, a.text, p.key_facts) for p, a in zip(prompts, answers[name])], ctx, f"judging {name}"
            )
    except MissingResource as err:
        ctx.skip(str(err))

    r, gate_na = judge_calibration(calib_verdicts, calib_items, cfg.pass_r)
    ctx.metric(
        "judge_calibration_r",
        r,
        "r",
        higher_is_better=True,
        description=f"Pearson r of per-response means vs the reference scores, {len(calib_items)} calibration "
        f"responses, rubric v{cfg.rubric_version}, this run's judge",
    )
    ctx.metric(
        "judge_passed_calibration",
        gate_na is None,
        "",
        higher_is_better=True,
        description=f"r >= {cfg.pass_r}: only then are gate approvals reported",
    )

    summary_rows, response_rows, dim_means, cat_means, style_acc = [], [], {}, {}, {}
    for name in variants:
        note = failures_note(verdicts[name])
        if note:
            ctx.failure_mode(f"{name}: {note}")
        scored = [
            (p, a, v) for p, a, v in zip(prompts, answers[name], verdicts[name]) if not isinstance(v, JudgeFailure)
        ]
        if not scored:
            raise RuntimeError(f"variant {name}: the judge scored none of its answers")
        means = [_mean(v.scores.values()) for _, _, v in scored]
        gates = [editor_gate.decide(v).verdict for _, _, v in scored]
        flags = sum(v.flags[FLAG] for _, _, v in scored)
        mean = _mean(means)
        summary_rows.append(
            [
                name,
                len(scored),
                round(mean, 3),
                f"{flags}/{len(scored)}",
                f"{gates.count('APPROVE')}/{len(scored)}" if gate_na is None else f"n/a: {gate_na}",
            ]
        )
        ctx.metric(f"mean_{name}", mean, "points", higher_is_better=True)
        ctx.metric(f"flag_rate_{name}", flags / len(scored), "fraction", higher_is_better=False)
        ctx.metric(
            f"gate_approval_rate_{name}",
            gates.count("APPROVE") / len(scored) if gate_na is None else None,
            "fraction",
            higher_is_better=True,
            description=f"n/a: {gate_na}" if gate_na else "",
        )
        dim_means[name] = {d: _mean(v.scores[d] for _, _, v in scored) for d in DIMENSIONS}
        for d in DIMENSIONS:
            ctx.metric(f"{d}_{name}", dim_means[name][d], "points", higher_is_better=True)
        cat_means[name] = {
            c: _mean(m for (p, _, _), m in zip(scored, means) if p.category == c) for c in eval_set.categories
        }
        ctx.metric(
            f"agent_infrastructure_{name}", cat_means[name]["agent_infrastructure"], "points", higher_is_better=True
        )
        style_acc[name] = (_mean(dim_means[name][d] for d in STYLE), _mean(dim_means[name][d] for d in ACCURACY))
        for (p, a, v), g in zip(scored, gates):
            response_rows.append(
                [
                    name,
                    p.id,
                    p.category,
                    *[round(v.scores[d], 2) for d in DIMENSIONS],
                    v.flags[FLAG],
                    g if gate_na is None else "n/a",
                    a.new_tokens,
                    a.text,
                ]
            )

    ctx.table(
        "by_variant",
        summary_rows,
        ["variant", "answers scored", "mean score", f"{FLAG} flags", "Editor gate approvals"],
        title="Per variant (rubric v" + cfg.rubric_version + ")",
    )
    ctx.table(
        "by_dimension",
        [[d, *[round(dim_means[n][d], 3) for n in variants]] for d in DIMENSIONS],
        ["dimension", *variants],
        title="Mean score per dimension",
    )
    ctx.table(
        "by_category",
        [
            [
                c,
                sum(p.category == c for p in prompts),
                *[None if cat_means[n][c] is None else round(cat_means[n][c], 3) for n in variants],
            ]
            for c in eval_set.categories
        ],
        ["category", "prompts", *variants],
        title="Mean score per category",
    )
    ctx.table(
        "responses",
        response_rows,
        ["variant", "prompt", "category", *DIMENSIONS, FLAG, "gate", "tokens", "answer"],
        title="Every scored answer",
    )

    # the two-by-two: each fine-tuned variant against BASE
    if "base" in variants and len(variants) > 1:
        rows = []
        for name in variants:
            if name == "base":
                continue
            d_style = style_acc[name][0] - style_acc["base"][0]
            d_acc = style_acc[name][1] - style_acc["base"][1]
            rows.append([name, round(d_style, 3), round(d_acc, 3), quadrant(d_style, d_acc)])
            ctx.metric(f"style_change_{name}", d_style, "points")
            ctx.metric(f"accuracy_change_{name}", d_acc, "points")
        ctx.table(
            "two_by_two",
            rows,
            ["variant", "Δ style (depth, audience)", "Δ accuracy (accuracy, calibration)", "cell"],
            title="Two-by-two: change vs BASE in style and in accuracy dimensions",
        )
        for name, d_style, d_acc, cell in rows:
            seed_style, seed_acc = seed_change(name)
            ctx.finding(
                f"{name} vs base: style dimensions {d_style:+.2f}, accuracy dimensions {d_acc:+.2f} -> {cell} "
                f"(seed, Llama 3.1 8B with a Claude judge: {seed_style:+.2f} / {seed_acc:+.2f} -> "
                f"{quadrant(seed_style, seed_acc)})."
            )
    else:
        ctx.finding(
            f"Only {variants} could be scored, so the two-by-two (fine-tuned vs BASE) is not computed here; "
            "see the 'Variants requested' table for what is missing and which command produces it."
        )

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(variants)
    for i, name in enumerate(variants):
        ax.bar(
            [x + i * width for x in range(len(DIMENSIONS))], [dim_means[name][d] for d in DIMENSIONS], width, label=name
        )
    ax.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(DIMENSIONS))], DIMENSIONS, fontsize=8)
    ax.set_ylim(1, 5)
    ax.set_ylabel(f"mean judge score (rubric v{cfg.rubric_version})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.artifact("dimensions_by_variant.png"), dpi=110)
    plt.close(fig)

    for a_name, b_name in (("sft", "dpo"), ("base", "sft")):
        if a_name in answers and b_name in answers:
            same = sum(x.text == y.text for x, y in zip(answers[a_name], answers[b_name]))
            ctx.metric(
                f"identical_answers_{a_name}_{b_name}",
                same,
                "prompts",
                description=f"prompts (of {len(prompts)}) where {a_name} and {b_name} gave the same greedy answer",
            )
            if same:
                ctx.finding(
                    f"{b_name} gave exactly the same greedy answer as {a_name} on {same}/{len(prompts)} prompts "
                    "(how far its adapter moved the policy is in its training record under Models)."
                )
    best = max(summary_rows, key=lambda row: row[2])
    seed_best = max(EXERCISE.seed(f"mean_{v}") for v in ("base", "sft", "dpo"))
    ctx.finding(
        f"Highest mean: {best[0]} at {best[2]:.2f}/5 over {best[1]} answers (seed's highest: {seed_best:.3f}/5)."
    )
    if gate_na is None:
        ctx.finding(
            f"The judge passed calibration in this run (r = {r:.3f} >= {cfg.pass_r}); Editor-gate approvals per "
            "variant: " + ", ".join(f"{row[0]} {row[4]}" for row in summary_rows) + "."
        )
    else:
        ctx.finding(
            f"Editor-gate approval rates are n/a: {gate_na}. Approvals from a judge that does not track the "
            "reference scores are noise, so none are published."
        )
    spread = max(row[2] for row in summary_rows) - min(row[2] for row in summary_rows)
    if judge.method == "choice_probs":
        ctx.finding(
            f"Variant means span {spread:.2f} points with a {EMBEDDED_LLM.size_label} choice_probs judge whose "
            "scores barely move with "
            "answer quality (phase11.calibration): read these as the judge's limits, not as a ranking of variants."
        )


def seed_change(variant: str) -> tuple[float, float]:
    """The seed's (style, accuracy) change vs BASE, from its per-dimension means in the references."""

    def mean_of(dims, name):
        return math.fsum(EXERCISE.seed(f"{d}_{name}") for d in dims) / len(dims)

    return (mean_of(STYLE, variant) - mean_of(STYLE, "base"), mean_of(ACCURACY, variant) - mean_of(ACCURACY, "base"))


_SEED = "seed: Llama 3.1 8B variants, 50 prompts, Claude judge"
EXERCISE = Exercise(
    id="phase11.model_comparison",
    title="BASE vs SFT vs DPO on the eval set, rubric v1.1",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {},
        "a100": {"judge_llm": "anthropic:claude-sonnet-4-5", "per_category": None, "max_new_tokens": 512},
    },
    tiny={"variants": ["base"], "limit": 1, "max_new_tokens": 8, "calibration_limit": 3},
    # every variant (base, sft, dpo on the tiny Llama), the embedded judge in place of the API judge
    smoke={"limit": 2, "max_new_tokens": 8, "calibration_limit": 3, "judge_llm": ""},
    references=(
        Reference("mean_base", 2.400, "points", _SEED),
        Reference("mean_sft", 2.520, "points", _SEED),
        Reference("mean_dpo", 2.575, "points", _SEED),
        Reference("flag_rate_base", 0.54, "fraction", "seed: 27/50"),
        Reference("flag_rate_sft", 0.74, "fraction", "seed: 37/50"),
        Reference("flag_rate_dpo", 0.74, "fraction", "seed: 37/50"),
        Reference("technical_accuracy_base", 2.020, "points", _SEED),
        Reference("technical_accuracy_sft", 1.820, "points", _SEED),
        Reference("technical_accuracy_dpo", 1.920, "points", _SEED),
        Reference("calibration_base", 2.460, "points", _SEED),
        Reference("calibration_sft", 2.040, "points", _SEED),
        Reference("calibration_dpo", 2.060, "points", _SEED),
        Reference("mechanistic_depth_base", 2.040, "points", _SEED),
        Reference("mechanistic_depth_sft", 2.720, "points", _SEED),
        Reference("mechanistic_depth_dpo", 2.760, "points", _SEED),
        Reference("audience_calibration_base", 3.080, "points", _SEED),
        Reference("audience_calibration_sft", 3.500, "points", _SEED),
        Reference("audience_calibration_dpo", 3.560, "points", _SEED),
        Reference("agent_infrastructure_base", 2.679, "points", "seed: category mean"),
        Reference("agent_infrastructure_sft", 1.964, "points", "seed: the largest single-category regression"),
    ),
    summary_metrics=("mean_base", "mean_sft", "mean_dpo", "flag_rate_base"),
    needs=tuple(VARIANT_ADAPTERS.values()),
    methods={"cpu": "scaled", "a100": "same"},  # run() marks a choice-probability judge a substitute
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
