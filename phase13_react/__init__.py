"""Tool use and the ReAct pattern."""

TITLE = "Tool use and the ReAct pattern"
EXERCISES: tuple[str, ...] = (
    "phase13_react.function_calling",
    "phase13_react.react_loop",
    "phase13_react.research_agent",
    "phase13_react.failure_modes",
)
