"""Agent frameworks: LangGraph, OpenClaw, CrewAI."""

TITLE = "Agent frameworks: LangGraph, OpenClaw, CrewAI"
EXERCISES: tuple[str, ...] = (
    "phase14_frameworks.langgraph_agent",
    "phase14_frameworks.openclaw_skill",
    "phase14_frameworks.crewai_crew",
    "phase14_frameworks.comparison",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {}  # lessons and comparisons only: no later phase imports them
