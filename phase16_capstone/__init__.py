"""Capstone: the multi-agent content engine."""

TITLE = "Capstone: the multi-agent content engine"
EXERCISES: tuple[str, ...] = (
    "phase16_capstone.engine_run",
    "phase16_capstone.load",
    "phase16_capstone.site",
    "phase16_capstone.injection",
)
