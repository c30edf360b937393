"""Modern LLM architecture for agentic workloads."""

TITLE = "Modern LLM architecture for agentic workloads"
EXERCISES: tuple[str, ...] = (
    "phase08_architecture.architecture",
    "phase08_architecture.kv_cache",
    "phase08_architecture.moe_routing",
)
# the a100 sizing table in README.md, computed from the published configs (lab report renders it)
REPORT_SECTIONS = {"a100-sizing": ("README.md", "phase08_architecture.sizing:render")}
