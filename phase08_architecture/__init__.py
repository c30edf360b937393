"""Modern LLM architecture for agentic workloads."""

TITLE = "Modern LLM architecture for agentic workloads"
EXERCISES: tuple[str, ...] = (
    "phase08_architecture.architecture",
    "phase08_architecture.kv_cache",
    "phase08_architecture.moe_routing",
)
