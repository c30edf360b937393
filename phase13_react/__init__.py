"""Tool use and the ReAct pattern."""

TITLE = "Tool use and the ReAct pattern"
EXERCISES: tuple[str, ...] = (
    "phase13_react.function_calling",
    "phase13_react.react_loop",
    "phase13_react.research_agent",
    "phase13_react.failure_modes",
    "phase13_react.tool_tuning",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase13_react.tools": "Toolbox, @tool: typed tools whose JSON schema comes from the signature, errors as observations",
    "phase13_react.loop": "run_agent: the ReAct loop every later agent (LangGraph, defended, traced) runs",
    "phase13_react.steps": "AgentRun, Step: the step records the loop returns and tracing and cost read",
    "phase13_react.research_tools": "RESEARCH_TOOLS: the research agent's tools, given to the Phase 14 framework agents",
    "phase13_react.tasks": "load_tasks, check: the research task set the Phase 14 comparison scores on",
    "phase13_react.served": "agent_llm, AGENT_SPEC, BASE_SPEC: which model an agentic exercise runs and how results name it",
}
# the tool-use adapter is trained on demand (lab artifacts build) and committed as smollm2-135m-agent
ARTIFACTS: tuple[str, ...] = ("phase13_react.tool_adapter:TOOL_ADAPTER",)
