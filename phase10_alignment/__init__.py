"""Alignment: reward modeling, DPO, LLM-as-judge."""

TITLE = "Alignment: reward modeling, DPO, LLM-as-judge"
EXERCISES: tuple[str, ...] = ()
