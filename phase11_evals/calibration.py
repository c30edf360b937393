"""Exercise 11.2 — calibrate the judge against reference scores, rubric v1.0 vs v1.1.

A judge inside an autonomous loop is only useful if its scores track the scores a careful grader
would give. The method (the seed's): take responses with reference scores, let the judge score
them, and compare per dimension:

- **Pearson r** between judge and reference (does the judge rank responses the same way?),
- **MAE** (how far off is it on the 1-5 scale?),
- **bias**: on how many responses the judge's mean is higher than the reference mean (a lenient
  judge approves what it should reject).

PASS at r >= 0.75. The overall r is over each response's mean of the four dimensions; the overall
MAE pools all response x dimension pairs (equal to the mean of the four per-dimension MAEs, which
is how the seed's 0.562 arises). Then the practical question: does the Editor gate decide the same
way on judge scores as on reference scores, and does the judge raise the confident_hallucination
flag where the reference does?

The 20 responses and their reference scores were written by an AI assistant for this repo (see
``data/calibration.yaml`` and the README); they are not human labels. With the embedded
SmolLM2-135M as judge, expect little or no correlation — that is the measurement, not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.errors import MissingResource
from phase10_alignment.rubric_judge import JudgeFailure
from phase11_evals import editor_gate
from phase11_evals.evaldata import DIMENSIONS, FLAG, load_calibration, load_eval_set, load_rubric
from phase11_evals.judging import (
    build_judge,
    check_judge,
    failures_note,
    judge_method,
    local_cache_saving,
    record_judge,
    score_all,
)


class Config(ExerciseConfig):
    judge_llm: str = ""  # "" = --llm / LAB_LLM, else the embedded SmolLM2-135M (choice_probs)
    rubric_versions: list[str] = ["1.0", "1.1"]
    limit: int | None = None  # score only the first N calibration items (tests)
    with_reference: bool = True  # give the judge the eval set's key facts as its reference answer
    pass_r: float = 0.75


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson r; None when either side is constant (no ranking to agree with)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError(f"pearson needs two equal-length series of >= 2 values, got {n} and {len(ys)}")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx < 1e-12 or syy < 1e-12:
        return None
    return sxy / math.sqrt(sxx * syy)


def agreement(judge: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """r, MAE, mean signed error and how often the judge scores above / below the reference."""
    diffs = [j - r for j, r in zip(judge, reference)]
    return {
        "r": pearson(judge, reference),
        "mae": math.fsum(abs(d) for d in diffs) / len(diffs),
        "mean_error": math.fsum(diffs) / len(diffs),
        "judge_higher": sum(d > 1e-9 for d in diffs),
        "judge_lower": sum(d < -1e-9 for d in diffs),
        "n": len(diffs),
    }


def calibration_inputs(eval_set, items, with_reference: bool = True) -> list[tuple[str, str, str | None]]:
    """(prompt, response, reference answer) per calibration item, as the judge reads them."""
    return [
        (
            eval_set.by_id(i.prompt_id).prompt,
            i.response,
            eval_set.by_id(i.prompt_id).key_facts if with_reference else None,
        )
        for i in items
    ]


def overall_agreement(verdicts, items) -> dict[str, Any]:
    """Judge vs reference over the items the judge scored: ``agreement`` of per-response means, plus
    the MAE pooled over response x dimension and the indices scored. Raises when fewer than 2 scored."""

    ok = [k for k, v in enumerate(verdicts) if not isinstance(v, JudgeFailure)]
    if len(ok) < 2:
        raise RuntimeError(f"only {len(ok)} calibration item(s) scored; nothing to calibrate")
    judge_mean = [math.fsum(verdicts[k].scores.values()) / len(DIMENSIONS) for k in ok]
    ref_mean = [math.fsum(items[k].scores.values()) / len(DIMENSIONS) for k in ok]
    pooled = math.fsum(abs(verdicts[k].scores[d] - items[k].scores[d]) for k in ok for d in DIMENSIONS)
    return {**agreement(judge_mean, ref_mean), "pooled_mae": pooled / (len(ok) * len(DIMENSIONS)), "ok": ok}


def judge_calibration(verdicts, items, pass_r: float) -> tuple[float | None, str | None]:
    """(r, why this judge's approvals do not count) for a judge's ``verdicts`` on the calibration
    ``items`` scored in the same run; the reason is None when r >= ``pass_r``.

    The rule every user of the gate follows (Phase 11's comparison, the capstone's Editor): an APPROVE
    counts only from a judge that passed calibration in the same run; a judge whose scores do not
    track the reference scores cannot approve anything."""
    try:
        r = overall_agreement(verdicts, items)["r"]
    except RuntimeError as err:
        return None, f"the judge could not be calibrated in this run ({err})"
    if r is None:
        return None, "the judge's scores on the calibration set are constant (no r)"
    if r < pass_r:
        return r, f"this run's judge has r = {r:.3f} < {pass_r} against the {len(items)} reference-scored responses"
    return r, None


def status(r: float | None, pass_r: float) -> str:
    if r is None:
        return "NO SIGNAL (judge or reference constant)"
    return "PASS" if r >= pass_r else "NEEDS REVIEW"


def run(cfg: Config, ctx: RunContext) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    check_judge(cfg.judge_llm, ctx)

    eval_set = load_eval_set()
    calib = load_calibration(eval_set)
    items = list(calib.items[: cfg.limit])
    ctx.dataset(f"{calib.name} v{calib.version}", n=len(items), sha256=calib.sha256, labeller=calib.labeller)
    ctx.dataset(f"{eval_set.name} v{eval_set.version}", n=len(eval_set.prompts), sha256=eval_set.sha256)
    inputs = calibration_inputs(eval_set, items, cfg.with_reference)
    ref_gate = [editor_gate.decide({**i.scores, FLAG: i.flag}).verdict for i in items]

    dim_rows, overall_rows, item_rows, gate_rows = [], [], [], []
    fig, axes = plt.subplots(1, len(DIMENSIONS), figsize=(4 * len(DIMENSIONS), 4), sharey=True)
    for version in cfg.rubric_versions:
        judge = build_judge(cfg.judge_llm, load_rubric(version))
        record_judge(ctx, judge, f"rubric v{version}")
        if judge_method(judge):  # the labels are a substitute whatever the judge; say so for both
            ctx.set_method(f"{_LABELS}; {judge_method(judge).removeprefix('substitute: ')}")
        try:
            verdicts = score_all(judge, inputs, ctx, f"judging with rubric v{version}")
        except MissingResource as err:
            ctx.skip(str(err))
        note = failures_note(verdicts)
        if note:
            ctx.failure_mode(f"rubric v{version}: {note}")
        try:
            overall = overall_agreement(verdicts, items)
        except RuntimeError as err:
            raise RuntimeError(f"rubric v{version}: {err}") from None
        ok, pooled_mae = overall["ok"], overall["pooled_mae"]
        tag = version.replace(".", "_")
        for dim in DIMENSIONS:
            judged = [verdicts[k].scores[dim] for k in ok]
            a = agreement(judged, [items[k].scores[dim] for k in ok])
            dim_rows.append(
                [
                    f"v{version}",
                    dim,
                    a["r"],
                    a["mae"],
                    a["mean_error"],
                    f"{a['judge_higher']}/{a['n']}",
                    status(a["r"], cfg.pass_r),
                ]
            )
            ctx.metric(f"r_{dim}_v{tag}", a["r"], "r", higher_is_better=True)
            ctx.metric(f"mae_{dim}_v{tag}", a["mae"], "points", higher_is_better=False)
            ax = axes[DIMENSIONS.index(dim)]
            ax.scatter([items[k].scores[dim] for k in ok], judged, label=f"v{version}", alpha=0.7)
            ax.set_title(dim)
            ax.set_xlabel("reference score")
        overall_rows.append(
            [
                f"v{version}",
                overall["r"],
                pooled_mae,
                f"{overall['judge_higher']}/{overall['n']}",
                status(overall["r"], cfg.pass_r),
            ]
        )
        ctx.metric(
            f"overall_r_v{tag}",
            overall["r"],
            "r",
            higher_is_better=True,
            description="Pearson r of per-response mean scores, judge vs reference",
        )
        ctx.metric(f"overall_mae_v{tag}", pooled_mae, "points", higher_is_better=False)
        judge_all = [verdicts[k].scores[d] for k in ok for d in DIMENSIONS]
        ref_all = [items[k].scores[d] for k in ok for d in DIMENSIONS]
        ctx.metric(
            f"judge_score_range_v{tag}",
            max(judge_all) - min(judge_all),
            "points",
            description=f"max - min of all judge scores (reference range {max(ref_all) - min(ref_all)})",
        )
        ctx.metric(
            f"judge_higher_v{tag}",
            overall["judge_higher"],
            "responses",
            description=f"responses (of {overall['n']}) whose judge mean exceeds the reference mean",
        )

        # flag agreement and the decision that matters: would the Editor gate agree?
        flag_hits = sum(verdicts[k].flags[FLAG] == items[k].flag for k in ok)
        caught = sum(verdicts[k].flags[FLAG] for k in ok if items[k].flag)
        positives = sum(items[k].flag for k in ok)
        judge_gate = {k: editor_gate.decide(verdicts[k]).verdict for k in ok}
        false_approvals = [items[k].id for k in ok if judge_gate[k] == "APPROVE" and ref_gate[k] != "APPROVE"]
        false_rejections = [items[k].id for k in ok if judge_gate[k] != "APPROVE" and ref_gate[k] == "APPROVE"]
        gate_rows.append(
            [
                f"v{version}",
                f"{flag_hits}/{len(ok)}",
                f"{caught}/{positives}",
                f"{sum(judge_gate[k] == ref_gate[k] for k in ok)}/{len(ok)}",
                ", ".join(false_approvals) or "-",
                ", ".join(false_rejections) or "-",
            ]
        )
        ctx.metric(f"flag_agreement_v{tag}", flag_hits / len(ok), "fraction", higher_is_better=True)
        ctx.metric(
            f"gate_false_approvals_v{tag}",
            len(false_approvals),
            "responses",
            higher_is_better=False,
            description="judge scores APPROVE where reference scores do not",
        )
        for k in ok:
            v = verdicts[k]
            item_rows.append(
                [
                    f"v{version}",
                    items[k].id,
                    items[k].prompt_id,
                    *[f"{v.scores[d]:.2f} / {items[k].scores[d]}" for d in DIMENSIONS],
                    f"{v.flags[FLAG]} / {items[k].flag}",
                    f"{judge_gate[k]} / {ref_gate[k]}",
                ]
            )
        saving = local_cache_saving(judge)
        if saving:
            ctx.metric(
                f"judge_tokens_run_fraction_v{tag}",
                saving["computed"] / saving["requested"],
                "fraction",
                higher_is_better=False,
                description=f"prompt tokens the prefix-cached judge ran ({saving['computed']}) "
                f"of those a cache-less choice_probs judge would run ({saving['requested']})",
            )

    ctx.table(
        "calibration_by_dimension",
        dim_rows,
        ["rubric", "dimension", "pearson r", "MAE", "mean error (judge - ref)", "judge higher", "status"],
        title=f"Judge vs reference per dimension ({len(items)} responses; PASS at r >= {cfg.pass_r})",
    )
    ctx.table(
        "calibration_overall",
        overall_rows,
        ["rubric", "pearson r (per-response means)", "MAE (pooled)", "judge mean higher", "status"],
        title="Overall agreement, rubric v1.0 vs v1.1",
    )
    ctx.table(
        "gate_agreement",
        gate_rows,
        [
            "rubric",
            f"{FLAG} agrees",
            "reference flags caught",
            "gate verdict agrees",
            "false approvals",
            "false rejections",
        ],
        title="Would the Editor gate decide the same on judge scores as on reference scores?",
    )
    ctx.table(
        "items",
        item_rows,
        [
            "rubric",
            "item",
            "prompt",
            *[f"{d} (judge / ref)" for d in DIMENSIONS],
            f"{FLAG} (judge / ref)",
            "gate (judge / ref)",
        ],
        title="Every calibration item: judge score / reference score",
    )
    axes[0].set_ylabel("judge score")
    for ax in axes:
        ax.plot([1, 5], [1, 5], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0.5, 5.5)
        ax.set_ylim(0.5, 5.5)
    axes[-1].legend()
    fig.suptitle(f"Judge ({ctx.models[-1]['id']}) vs reference scores")
    fig.tight_layout()
    fig.savefig(ctx.artifact("calibration_scatter.png"), dpi=110)
    plt.close(fig)

    for version in cfg.rubric_versions:
        span = ctx.metrics[f"judge_score_range_v{version.replace('.', '_')}"]["value"]
        ctx.finding(
            f"Rubric v{version}: the judge's scores span {span:.2f} points across all responses and dimensions, "
            "against the reference's 1-5"
            + (": it barely separates an excellent answer from a confidently wrong one." if span < 2 else ".")
        )
    for version, r, mae, higher, verdict in overall_rows:
        ctx.finding(
            f"Rubric {version}: overall r = {'n/a' if r is None else f'{r:.3f}'}, MAE {mae:.2f}, judge mean "
            f"above the reference on {higher} responses — {verdict}."
        )
    spread = [row for row in dim_rows if row[2] is None or row[2] < cfg.pass_r]
    if spread:
        ctx.finding(
            f"{len(spread)} of {len(dim_rows)} rubric x dimension rows are below r = {cfg.pass_r}: this judge "
            "is not trustworthy for autonomous Editor decisions on those dimensions."
        )
    ctx.finding(
        "The reference scores were written by an AI assistant for this repo, not by a human grader: a PASS "
        "here means agreement with that labeller, which is weaker evidence than the seed's human scoring."
    )


_LABELS = "substitute: AI-written reference scores in place of the seed's 20 human-scored responses"
EXERCISE = Exercise(
    id="phase11.calibration",
    title="Judge calibration against reference scores, rubric v1.0 vs v1.1",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {"judge_llm": "anthropic:claude-sonnet-4-5"}},
    tiny={"limit": 3},
    smoke={"limit": 3, "judge_llm": ""},  # the embedded judge in place of the API judge (no network in a smoke)
    references=(
        Reference(
            "overall_r_v1_1",
            0.861,
            "r",
            "seed: rubric v1.1 (its summary: 'rubric v1.1 calibrated to r=0.861'), "
            "Claude Sonnet judge vs 20 human-scored responses",
        ),
        Reference("overall_mae_v1_1", 0.562, "points", "seed: rubric v1.1, mean of its four per-dimension MAEs"),
        Reference("r_technical_accuracy_v1_1", 0.808, "r", "seed: rubric v1.1"),
        Reference("r_calibration_v1_1", 0.829, "r", "seed: rubric v1.1"),
        Reference("r_mechanistic_depth_v1_1", 0.720, "r", "seed: rubric v1.1 (NEEDS REVIEW)"),
        Reference("r_audience_calibration_v1_1", 0.811, "r", "seed: rubric v1.1"),
        Reference("mae_technical_accuracy_v1_1", 0.40, "points", "seed: rubric v1.1"),
        Reference("mae_calibration_v1_1", 0.40, "points", "seed: rubric v1.1"),
        Reference("mae_mechanistic_depth_v1_1", 0.55, "points", "seed: rubric v1.1"),
        Reference("mae_audience_calibration_v1_1", 0.90, "points", "seed: rubric v1.1"),
        Reference(
            "judge_higher_v1_0",
            17,
            "responses",
            "seed: judge above human on 17/20, the bias v1.1's tighter "
            "anchor answered (the seed does not say which version's scores showed it)",
        ),
    ),
    summary_metrics=("overall_r_v1_0", "overall_r_v1_1", "overall_mae_v1_1", "gate_false_approvals_v1_1"),
    methods={"cpu": _LABELS, "a100": _LABELS},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
