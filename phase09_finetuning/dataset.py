"""9.1 Dataset construction: the pipeline is the lesson.

A domain Q&A set (AI infrastructure, ten topics, answers >= 75 words) goes from a messy raw
extraction to a versioned chat-format training set: parse (repair or quarantine malformed JSON),
filter (length, off-topic chatter, meta-references), deduplicate (exact, near), split, hash. The raw
file (``data/raw/qa_raw.jsonl``, composed by ``data/make_raw.py`` from ``data/sheets``) really
contains each failure mode, so every count on the dataset card is a real one; the quarantine lists
each rejected row with its reason. Stages live in ``pipeline.py``.

Other phases call ``load_training_set("train")`` (Phase 10 builds DPO on the SFT adapter trained on it).
The built set is an artifact of the lab's store (``phase09.dataset``), keyed by the raw file's hash
and the pipeline version, so an edited raw file or pipeline yields a new set, never a stale one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lab import Exercise, ExerciseConfig, Reference, RunContext
from lab.artifacts import Artifact, Recipe, default_store
from lab.hashing import sha256_file
from lab.jsonl import read_jsonl
from phase09_finetuning import pipeline

RAW_PATH = Path(__file__).resolve().parent / "data" / "raw" / "qa_raw.jsonl"


class Config(ExerciseConfig):
    raw_path: str = ""  # empty = the shipped raw extraction


def dataset_recipe(raw_path: Path = RAW_PATH) -> Recipe:
    """What determines the built set: the raw file's content and the pipeline version."""
    return Recipe("phase09.dataset", {"raw_sha256": sha256_file(raw_path), "pipeline": pipeline.PIPELINE_VERSION})


def build_dataset(raw_path: Path = RAW_PATH) -> tuple[pipeline.BuildResult, Artifact, bool]:
    """Run the pipeline; store train/eval/quarantine + card unless that recipe is stored already.

    Returns (result, artifact, stored): the pipeline is deterministic, so a stored set of the same
    recipe is the same set and is kept.
    """
    result = pipeline.build(raw_path)
    store, recipe = default_store(), dataset_recipe(raw_path)
    with store.staging(recipe) as folder:
        pipeline.write(result, folder)
        artifact, stored = store.publish(
            recipe, folder, metrics={"kept_pairs": result.kept_pairs, "sha256": result.sha256}
        )
    return result, artifact, stored


def built_dataset() -> Artifact:
    """The shipped raw file's built set (built now if absent: seconds of deterministic parsing, no training)."""
    return default_store().find(dataset_recipe()) or build_dataset()[1]


def load_training_set(split: str = "train") -> list[dict]:
    """Chat rows {"id", "topic", "messages": [user, assistant]} of the built set."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    return read_jsonl(built_dataset().path / f"{split}.jsonl")


def dataset_sha256() -> str:
    """Content hash (the version) of the built set, for provenance in training runs."""
    return json.loads((built_dataset().path / "card.json").read_text())["sha256"]


def run(cfg: Config, ctx: RunContext) -> None:
    raw = Path(cfg.raw_path) if cfg.raw_path else RAW_PATH
    if not raw.exists():
        raise FileNotFoundError(f"raw_path {raw}: no such file")
    result, built, stored = build_dataset(raw)
    ctx.record_artifact(built, "published" if stored else "kept")
    c = pipeline.card(result)
    ctx.dataset(
        "phase09-ai-infra-qa",
        n=result.kept_pairs,
        sha256=result.sha256,
        raw_sha256=result.raw_sha256,
        artifact=built.id,
        train=len(result.train),
        eval=len(result.eval),
    )

    ctx.metric("raw_pairs", result.raw_pairs, "rows", description="non-blank lines in the raw extraction")
    ctx.metric("kept_pairs", result.kept_pairs, "pairs", higher_is_better=True)
    ctx.metric(
        "filter_rate", round(100 * result.filter_rate, 2), "%", description="share of raw rows rejected (quarantined)"
    )
    ctx.metric("train_pairs", len(result.train), "pairs")
    ctx.metric("eval_pairs", len(result.eval), "pairs")
    ctx.metric(
        "repaired_json",
        result.counts["repaired_json"],
        "rows",
        description="malformed JSON rows repaired (unescaped quotes in code) and kept",
    )
    ctx.metric(
        "max_kept_jaccard",
        result.max_kept_jaccard,
        "",
        description=f"highest {pipeline.SHINGLE}-word-shingle Jaccard between two kept answers",
    )
    words = [len(r["messages"][-1]["content"].split()) for r in result.train + result.eval]
    ctx.metric("mean_answer_words", round(sum(words) / len(words), 1), "words")
    ctx.metric("min_answer_words", min(words), "words")

    rejected = {
        k: v for k, v in result.counts.items() if k not in ("raw_rows", "repaired_json", "kept", "train", "eval")
    }
    example = {}
    for q in result.quarantine:
        example.setdefault(q["reason"], f"{q['where']}: {q['detail']}")
    ctx.table(
        "filters",
        [[k, v, example.get(k, "")] for k, v in rejected.items()],
        ["filter", "rows rejected", "first example (file:line: reason)"],
        title="Rows rejected per filter",
    )
    ctx.table("topics", sorted(c["topics"].items()), ["topic", "kept pairs"], title="Kept pairs per topic")

    ctx.artifact("dataset_card.md").write_text(pipeline.card_markdown(result))
    shutil.copy(built.path / "quarantine.jsonl", ctx.artifact("quarantine.jsonl"))

    ctx.finding(
        f"{result.raw_pairs} raw rows -> {result.kept_pairs} kept pairs "
        f"({100 * result.filter_rate:.1f}% filtered; the seed: 589 -> 550, 6.6%). "
        f"Every rejected row is in quarantine.jsonl with its reason; "
        f"{result.counts['repaired_json']} rows with unescaped quotes in code were repaired, not dropped."
    )
    ctx.finding(
        f"Near-duplicates are answers with {pipeline.SHINGLE}-word-shingle Jaccard >= "
        f"{pipeline.NEAR_DUP_JACCARD}; the closest two kept answers score {result.max_kept_jaccard:.2f}, "
        "far below the threshold, so the kept set is not padded with rewordings."
    )
    ctx.finding(
        f"Dataset version (content sha256) {result.sha256[:16]}…: it changes when any kept row, "
        "split assignment or filter outcome changes, and not when only the file date does."
    )
    ctx.failure_mode(
        'Code pasted into answers breaks JSON (print("hi") inside a string): repaired by '
        "re-escaping quotes between known field boundaries; truncated lines are quarantined, not guessed."
    )
    ctx.failure_mode(
        "Setup chatter (billing, calendars, editor themes) and answers that point outside "
        "the pair ('as we discussed above') read as fluent domain text; only explicit filters catch them."
    )


_DATA_METHOD = (
    "substitute: a raw Q&A file composed for this repo with planted failure modes in place of pairs "
    "extracted from the seed's curriculum threads"
)
EXERCISE = Exercise(
    id="phase09.dataset",
    title="Dataset construction: raw extraction -> filtered, versioned Q&A set",
    run=run,
    config_cls=Config,
    smoke={},
    profiles={"cpu": {}, "a100": {}},  # the pipeline is hardware-independent: same data for both
    tiny={},
    references=(
        Reference("raw_pairs", 589, "rows", "seed: extracted from 6 curriculum threads"),
        Reference("kept_pairs", 550, "pairs", "seed: after filtering"),
        Reference("filter_rate", 6.6, "%", "seed; ours is set by how many noise lines data/make_raw.py wrote"),
        Reference("min_answer_words", 75, "words", "seed: minimum enforced"),
    ),
    summary_metrics=("raw_pairs", "kept_pairs", "filter_rate"),
    methods={"cpu": _DATA_METHOD, "a100": _DATA_METHOD},
    cpu_only=("a100",),  # data only: `lab run` runs it beside the GPU job
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
