"""Modern LLM architecture for agentic workloads."""

TITLE = "Modern LLM architecture for agentic workloads"
EXERCISES: tuple[str, ...] = ()
