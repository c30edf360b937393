"""Production agentic infrastructure."""

TITLE = "Production agentic infrastructure"
EXERCISES: tuple[str, ...] = ()
