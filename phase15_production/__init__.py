"""Production agentic infrastructure."""

TITLE = "Production agentic infrastructure"
EXERCISES: tuple[str, ...] = (
    "phase15_production.injection",
)
