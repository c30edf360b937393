"""Tool use and the ReAct pattern."""

TITLE = "Tool use and the ReAct pattern"
EXERCISES: tuple[str, ...] = (
    "phase13_react.function_calling",
    "phase13_react.react_loop",
    "phase13_react.research_agent",
    "phase13_react.failure_modes",
    "phase13_react.tool_tuning",
)
# the tool-use adapter is trained on demand (lab artifacts build) and committed as smollm2-135m-agent
ARTIFACTS: tuple[str, ...] = ("phase13_react.tool_adapter:TOOL_ADAPTER",)
