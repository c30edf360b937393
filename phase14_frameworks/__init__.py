"""Agent frameworks: LangGraph, OpenClaw, CrewAI."""

TITLE = "Agent frameworks: LangGraph, OpenClaw, CrewAI"
EXERCISES: tuple[str, ...] = (
    "phase14_frameworks.openclaw_skill",
)
