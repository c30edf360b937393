"""Capstone: the multi-agent content engine."""

TITLE = "Capstone: the multi-agent content engine"
EXERCISES: tuple[str, ...] = (
    "phase16_capstone.engine_run",
    "phase16_capstone.load",
    "phase16_capstone.site",
    "phase16_capstone.injection",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {}  # the top floor: nothing imports it
