"""Modern LLM architecture for agentic workloads."""

TITLE = "Modern LLM architecture for agentic workloads"
EXERCISES: tuple[str, ...] = (
    "phase08_architecture.architecture",
    "phase08_architecture.kv_cache",
    "phase08_architecture.moe_routing",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase08_architecture.kv_cache": "kv_cache_bytes: the KV-cache calculator Phase 13's research agent calls as a tool (also lesson 8.2)",
    "phase08_architecture.model_configs": "load_config: the shipped official config.json values that calculator sizes",
}
# the a100 sizing table in README.md, computed from the published configs (lab report renders it)
REPORT_SECTIONS = {"a100-sizing": ("README.md", "phase08_architecture.sizing:render")}
