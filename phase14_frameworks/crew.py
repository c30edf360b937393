"""CrewAI pieces shared by the crew lesson and the comparison: an isolated home, the model through
``lab serve``, Phase 13 tools as CrewAI tools, and how to read CrewAI's prompt format off the wire.

CrewAI writes under ``~/.config/crewai`` and ``~/.local/share/<project>`` (a SQLite file of task
outputs, a credentials key) and phones home unless told not to. ``isolated_home()`` points HOME
and the XDG folders at a throwaway directory and switches its telemetry off before CrewAI is
imported, so a run leaves nothing behind and sends nothing out.

CrewAI 1.15 has two prompt formats. With a model it believes can call functions it sends the
tools natively and takes a plain reply as the answer. Told otherwise (``text_format=True``) it falls
back to its ReAct text format — ``Thought:`` / ``Action:`` / ``Action Input:`` / ``Final Answer:`` —
parsed from the reply: the format a small model is asked to follow to the letter.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lab.llm.base import ToolCall
from lab.toolchain import quiet_frameworks
from phase13_react.tools import Toolbox

FINAL_MARKER = "Final Answer:"
RETRY_MARKERS = {  # text CrewAI adds to the next prompt when a reply missed its format (crewai/agents/constants.py)
    "format_retry": "I did it wrong. Invalid Format",
    "forced_final_answer": "Now it's time you MUST give your absolute best final answer",
}


@contextmanager
def isolated_home() -> Iterator[str]:
    """HOME and XDG dirs in a temp folder, CrewAI telemetry off, for the duration of the block."""

    quiet_frameworks()
    keys = ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="lab-crewai-home-") as home:
        os.environ.update(
            HOME=home,
            XDG_CONFIG_HOME=f"{home}/.config",
            XDG_DATA_HOME=f"{home}/.local/share",
            XDG_CACHE_HOME=f"{home}/.cache",
        )
        try:
            yield home
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def crew_llm(base_url: str, api_key: str, model: str, max_tokens: int = 256, text_format: bool = False):
    """CrewAI's LLM pointed at ``lab serve`` (``base_url`` ends in ``/v1``); ``text_format`` makes
    CrewAI use its ReAct text prompt instead of native tool calls."""
    from crewai import LLM  # noqa: PLC0415 (crewai loads only on the path that uses it)

    llm = LLM(model=f"openai/{model}", base_url=base_url, api_key=api_key, temperature=0, max_tokens=max_tokens)
    if text_format:
        object.__setattr__(llm, "supports_function_calling", lambda: False)
    return llm


def as_crewai_tools(toolbox: Toolbox) -> list:
    """The Phase 13 tools as CrewAI tools (same name, description, argument model), run by the Toolbox."""
    from crewai.tools import BaseTool  # noqa: PLC0415 (crewai loads only on the path that uses it)

    def make(t) -> BaseTool:
        class Phase13Tool(BaseTool):
            name: str = t.name
            description: str = t.description
            args_schema: type = t.params

            def _run(self, **kwargs: Any) -> str:
                return toolbox.execute(ToolCall(f"crew_{t.name}", t.name, kwargs)).content

        return Phase13Tool()

    return [make(t) for t in toolbox.tools.values()]


def content_crew(llm, topic: str, notes: str, research_tools: list = ()):
    """Researcher (with ``research_tools``) → Writer → Editor, sequential: each task's output is the
    next one's context."""
    from crewai import Agent, Crew, Process, Task  # noqa: PLC0415 (crewai loads only on the path that uses it)

    def agent(role: str, goal: str, backstory: str, tools: list = ()) -> Agent:
        return Agent(
            role=role,
            goal=goal,
            backstory=backstory,
            llm=llm,
            allow_delegation=False,
            verbose=False,
            max_iter=3,
            tools=list(tools),
        )

    researcher = agent(
        "Researcher",
        "Pull the facts that matter out of engineering notes.",
        "You read lab notes and list only what they actually say.",
        research_tools,
    )
    writer = agent("Writer", "Turn research notes into a short, clear blog post.", "You write plainly for engineers.")
    editor = agent(
        "Editor", "Make a draft correct, short and publishable.", "You cut what is vague and fix what is wrong."
    )
    research = Task(
        description=f"Topic: {topic}\n\nNotes:\n{notes}\n\nList the 3 most important facts about the "
        "topic from these notes.",
        expected_output="3 bullet points, each one fact from the notes",
        agent=researcher,
    )
    draft = Task(
        description=f"Write a short blog post (under 150 words) about {topic} from the research.",
        expected_output="a post of under 150 words with a title",
        agent=writer,
        context=[research],
    )
    edit = Task(
        description="Edit the draft: keep it under 150 words, remove claims the research does not support.",
        expected_output="the final post",
        agent=editor,
        context=[draft],
    )
    return Crew(
        agents=[researcher, writer, editor], tasks=[research, draft, edit], process=Process.sequential, verbose=False
    )


def research_crew(llm, question: str, tools: list):
    """One researcher agent with the Phase 13 tools answering one research question (the comparison)."""
    from crewai import Agent, Crew, Process, Task  # noqa: PLC0415 (crewai loads only on the path that uses it)

    researcher = Agent(
        role="Researcher",
        goal="Answer questions about this repo's measured results exactly.",
        backstory="You look numbers up with your tools before answering.",
        llm=llm,
        tools=tools,
        allow_delegation=False,
        verbose=False,
        max_iter=6,
    )
    task = Task(
        description=question, expected_output="the answer, with the number if one is asked for", agent=researcher
    )
    return Crew(agents=[researcher], tasks=[task], process=Process.sequential, verbose=False)


def text_format_report(calls) -> dict[str, int]:
    """How model replies fared against CrewAI's ReAct text format, from the calls recorded at the server:
    replies carrying ``Final Answer:``, an ``Action:``, neither (format misses), and the retries CrewAI
    sent after a miss. Only calls whose prompt asked for the format count."""
    asked = [c for c in calls if FINAL_MARKER in (c.system or "") + "".join(str(m.get("content")) for m in c.messages)]
    report = {
        "format_prompts": len(asked),
        "replies_with_final_answer": sum(FINAL_MARKER in c.reply_text for c in asked),
        "replies_with_action": sum("Action:" in c.reply_text and FINAL_MARKER not in c.reply_text for c in asked),
        "format_misses": sum(FINAL_MARKER not in c.reply_text and "Action:" not in c.reply_text for c in asked),
    }
    for name, marker in RETRY_MARKERS.items():
        report[name] = sum(any(marker in str(m.get("content")) for m in c.messages) for c in calls)
    return report
