"""Exercise 11.1 — the eval set and the rubric as versioned instruments.

Before a judge scores anything, the things it measures with must be pinned down: which prompts,
which rubric, which wording. This exercise loads the 50-prompt eval set (7 categories, written for
this repo) and rubric v1.0 / v1.1 from ``phase11_evals/data/``, records their sha256, and checks
two properties the later exercises rely on, with no judge involved:

1. **No near-duplicate prompts.** Two prompts that ask the same thing double-count one topic in
   every category mean. MiniLM embeddings, every pair's cosine; pairs above ``dup_threshold`` are
   reported.
2. **What the Editor gate decides on reference scores.** ``editor_gate.decide`` is applied to the
   20 calibration responses using their reference scores (written by an AI assistant for this repo,
   see the README), so the verdicts a well-calibrated judge should reproduce are on record. That the
   gate rejects every response the reference marks as a confident hallucination or wrong at the core
   holds by construction of the gate's rule: it is a unit test (``tests/test_phase11_evals.py``),
   not a measurement.
"""

from __future__ import annotations

import numpy as np

from lab import Exercise, ExerciseConfig, Reference, RunContext, models
from lab.models import EMBEDDED_EMBEDDER
from phase11_evals import editor_gate
from phase11_evals.evaldata import RUBRIC_VERSIONS, load_calibration, load_eval_set, load_rubric


class Config(ExerciseConfig):
    dup_threshold: float = 0.85  # cosine above which two prompts count as near-duplicates
    show_closest: int = 5  # closest prompt pairs listed in the results


def _rubric_changes(old, new) -> list[list[str]]:
    """Every anchor, description or rule that differs between two rubric versions."""
    rows = []
    for d_old, d_new in zip(old.dimensions, new.dimensions):
        if d_old.description != d_new.description:
            rows.append([d_new.name, "description", d_old.description, d_new.description])
        for score in range(1, 6):
            if d_old.anchors[score] != d_new.anchors[score]:
                rows.append([d_new.name, f"anchor {score}", d_old.anchors[score], d_new.anchors[score]])
    if old.instructions != new.instructions:
        rows.append(["(rules)", "instructions", old.instructions, new.instructions])
    return rows


def run(cfg: Config, ctx: RunContext) -> None:

    eval_set = load_eval_set()
    ctx.dataset(
        f"{eval_set.name} v{eval_set.version}",
        n=len(eval_set.prompts),
        sha256=eval_set.sha256,
        source="phase11_evals/data/eval_set.yaml (written for this repo)",
    )
    ctx.metric("n_prompts", len(eval_set.prompts), "prompts")
    ctx.metric("n_categories", len(eval_set.categories), "categories")
    ctx.table(
        "categories",
        [[c, len(eval_set.in_category(c)), eval_set.in_category(c)[0].prompt] for c in eval_set.categories],
        ["category", "prompts", "first prompt"],
        title="Eval set by category",
    )

    # --- the rubrics: hashes and what v1.1 changed ---------------------------------------------------
    rubrics = {v: load_rubric(v) for v in RUBRIC_VERSIONS}
    ctx.table(
        "rubrics",
        [[f"v{v}", r.name, len(r.dimensions), ", ".join(r.flags), r.sha256()] for v, r in rubrics.items()],
        ["version", "name", "dimensions", "flags", "sha256"],
        title="Rubric versions",
    )
    changes = _rubric_changes(rubrics["1.0"], rubrics["1.1"])
    ctx.table(
        "rubric_v1_1_changes",
        changes,
        ["dimension", "field", "v1.0", "v1.1"],
        title="What rubric v1.1 changed (everything else is identical)",
    )
    ctx.metric("rubric_v1_1_changed_fields", len(changes), "fields")

    # --- near-duplicate prompts ------------------------------------------------------------------------
    embedder = models.load_embedder()
    ctx.model(EMBEDDED_EMBEDDER.hub_id, dtype="float32", n_params=sum(p.numel() for p in embedder.parameters()))
    vectors = embedder.encode([p.prompt for p in eval_set.prompts], normalize_embeddings=True)
    sims = vectors @ vectors.T
    upper = np.triu_indices(len(vectors), k=1)
    order = np.argsort(-sims[upper])
    closest = [(int(upper[0][k]), int(upper[1][k])) for k in order[: cfg.show_closest]]
    ctx.table(
        "closest_pairs",
        [
            [
                eval_set.prompts[i].id,
                eval_set.prompts[j].id,
                round(float(sims[i, j]), 3),
                eval_set.prompts[i].prompt,
                eval_set.prompts[j].prompt,
            ]
            for i, j in closest
        ],
        ["prompt a", "prompt b", "cosine", "text a", "text b"],
        title=f"Most similar prompt pairs ({EMBEDDED_EMBEDDER.family} cosine)",
    )
    n_dups = int((sims[upper] > cfg.dup_threshold).sum())
    ctx.metric("max_prompt_cosine", float(sims[upper].max()), "cosine", higher_is_better=False)
    ctx.metric(
        "n_near_duplicate_pairs",
        n_dups,
        "pairs",
        higher_is_better=False,
        description=f"prompt pairs with {EMBEDDED_EMBEDDER.family} cosine > {cfg.dup_threshold}",
    )

    # --- the Editor gate on reference scores ----------------------------------------------------------
    calibration = load_calibration(eval_set)
    ctx.dataset(
        f"{calibration.name} v{calibration.version}",
        n=len(calibration.items),
        sha256=calibration.sha256,
        labeller=calibration.labeller,
    )
    rows = []
    for item in calibration.items:
        decision = editor_gate.decide({**item.scores, editor_gate.FLAG: item.flag})
        rows.append(
            [
                item.id,
                item.prompt_id,
                *[item.scores[d] for d in editor_gate.DIMENSIONS],
                item.flag,
                round(decision.mean, 2),
                decision.verdict,
                "; ".join(decision.reasons),
            ]
        )
    ctx.table(
        "gate_on_reference",
        rows,
        ["item", "prompt", *editor_gate.DIMENSIONS, editor_gate.FLAG, "mean", "verdict", "reasons"],
        title="Editor gate applied to the calibration set's reference scores",
    )
    approved = sum(r[-2] == "APPROVE" for r in rows)
    ctx.metric(
        "gate_reference_approved", approved, "responses", description=f"of the {len(rows)} calibration responses"
    )

    ctx.finding(
        f"Eval set {eval_set.name} v{eval_set.version}: {len(eval_set.prompts)} prompts in "
        f"{len(eval_set.categories)} categories, sha256 {eval_set.sha256[:12]}…; every result of this phase "
        f"records this hash, so an edited set is a visibly different instrument."
    )
    ctx.finding(
        f"Closest prompt pair ({eval_set.prompts[closest[0][0]].id} / {eval_set.prompts[closest[0][1]].id}) has "
        f"{EMBEDDED_EMBEDDER.family} cosine {float(sims[upper].max()):.3f}; {n_dups} pair(s) exceed {cfg.dup_threshold}, "
        "so no topic is double-counted in a category mean."
    )
    ctx.finding(
        f"On reference scores the gate approves {approved}/{len(rows)} responses: the verdicts a judge must reproduce "
        "(phase11.calibration measures how far a judge's scores are from these)."
    )


_SET_METHOD = "substitute: 50 prompts and two rubrics written for this repo by an AI assistant in place of the seed's"
EXERCISE = Exercise(
    id="phase11.eval_set",
    title="Eval set, rubric versions and the Editor gate on reference scores",
    run=run,
    config_cls=Config,
    profiles={"cpu": {}, "a100": {}},
    tiny={"show_closest": 2},
    smoke={},
    references=(
        Reference("n_prompts", 50, "prompts", "seed: 50 prompts (its own set; ours is written for this repo)"),
        Reference("n_categories", 7, "categories", "seed: 7 categories"),
    ),
    summary_metrics=("n_prompts", "n_categories", "max_prompt_cosine", "gate_reference_approved"),
    methods={"cpu": _SET_METHOD, "a100": _SET_METHOD},
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
