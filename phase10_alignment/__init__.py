"""Alignment: reward modeling, DPO, LLM-as-judge."""

TITLE = "Alignment: reward modeling, DPO, LLM-as-judge"
EXERCISES: tuple[str, ...] = (
    "phase10_alignment.reward_model",
    "phase10_alignment.dpo",
    "phase10_alignment.compare",
    "phase10_alignment.judge",
)
