"""Tool use and the ReAct pattern."""

TITLE = "Tool use and the ReAct pattern"
EXERCISES: tuple[str, ...] = ()
