"""How every Phase 11 exercise builds, records and runs its judge (the Phase 10 ``Judge``).

One place decides: which LLM judges (``judge_llm`` config, else ``--llm`` / ``LAB_LLM``, else the
embedded SmolLM2-135M), and what goes into the
results so a score can be traced to its instrument (judge model, method, rubric and prompt sha256).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lab.errors import MissingResource
from lab.llm import check_spec, from_spec
from phase10_alignment.rubric_judge import Judge, JudgeFailure, Rubric, Verdict


def check_judge(spec: str, ctx) -> None:
    """Skip the run now if its judge cannot be built (a hosted judge without its SDK or API key): the
    judge is built after the models under test have answered, and GPU time spent on answers nobody
    can score is wasted. A malformed spec raises ConfigError."""

    try:
        check_spec(spec or None)
    except MissingResource as err:
        ctx.skip(f"the judge cannot run: {err} (checked before loading any model)")


def build_judge(spec: str, rubric: Rubric) -> Judge:
    """A Judge on ``spec`` ("" = --llm / LAB_LLM / SmolLM2); local models use choice_probs, hosted json."""

    llm = from_spec(spec or None)
    llm.reset_prefix_cache()  # a local model counts this judge's prefix-cache saving from zero
    return Judge(llm, rubric, method="auto")


def judge_method(judge: Judge) -> str | None:
    """A choice-probability judge stands in for the seed's Claude verdicts: the run's method is then a
    substitute whatever the models under test (None: a JSON judge, the declared method holds)."""
    if judge.method == "choice_probs":
        return f"substitute: {judge.llm.spec} read by choice probabilities in place of the seed's Claude Sonnet judge"
    return None


def record_judge(ctx, judge: Judge, name: str) -> None:
    """Model provenance once per run, and the instrument (rubric + prompt hashes) as a table row."""
    desc = judge.llm.describe()
    if not any(m["id"] == desc["id"] for m in ctx.models):
        ctx.model(**desc, role="judge")
    rows = ctx.tables["judge_instruments"]["rows"] if "judge_instruments" in ctx.tables else []
    info = judge.describe()
    rows.append(
        [name, info["judge_model"], info["method"], info["rubric"], info["rubric_sha256"], info["prompt_sha256"]]
    )
    ctx.table(
        "judge_instruments",
        rows,
        ["used for", "judge model", "method", "rubric", "rubric sha256", "judge prompt sha256"],
        title="Judge instruments (what produced the scores)",
    )


def score_all(
    judge: Judge, items: Sequence[tuple[str, str, str | None]], ctx, description: str
) -> list[Verdict | JudgeFailure]:
    """Score (prompt, response, reference) items; failures stay in the list as JudgeFailure."""
    return [judge.score(p, r, reference=ref) for p, r, ref in ctx.progress(items, description, total=len(items))]


def failures_note(results: Sequence[Verdict | JudgeFailure]) -> str | None:
    failed = [r for r in results if isinstance(r, JudgeFailure)]
    if not failed:
        return None
    return f"{len(failed)}/{len(results)} items could not be scored (first: {failed[0].reason[:160]})"


def local_cache_saving(judge: Judge) -> dict[str, Any] | None:
    """Tokens run vs tokens a cache-less choice_probs would have run (None for hosted judges)."""
    stats = judge.llm.prefix_cache_stats
    return dict(stats) if stats and stats["computed"] else None
