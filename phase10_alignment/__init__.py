"""Alignment: reward modeling, DPO, LLM-as-judge."""

TITLE = "Alignment: reward modeling, DPO, LLM-as-judge"
EXERCISES: tuple[str, ...] = (
    "phase10_alignment.reward_model",
    "phase10_alignment.dpo",
    "phase10_alignment.compare",
    "phase10_alignment.judge",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase10_alignment.rubric_judge": "Judge, Rubric, Verdict: the LLM-as-judge API Phase 11 and the capstone's Editor score with",
    "phase10_alignment.variants": "load_variant: BASE / SFT / SFT+DPO loaded fresh, the models Phase 11 compares",
}
