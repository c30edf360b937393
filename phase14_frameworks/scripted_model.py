"""A scripted OpenAI-compatible "model" that uses a skill the way OpenClaw asks a capable model to.

Not a model: a script for ``lab.llm.scripted_server`` (the Chat Completions wire, streamed as
OpenClaw always asks) that follows OpenClaw's skill instructions literally. It is the control for the
lesson: when the embedded 135M model does not use the skill, this run shows whether the rest of the
path — the skill catalog in the prompt, ``read``, ``exec``, the skill's script, the engine API —
works. Per request it looks at how many tool results the conversation already holds:

0. call ``read`` on the ``<location>`` that the system prompt's ``<available_skills>`` lists for the skill;
1. call ``exec`` with the skill's start command, the topic taken from the user's message;
2. answer with the last tool result (the job JSON the script printed).
"""

from __future__ import annotations

import html
import re
import shlex
from pathlib import Path
from typing import Any

from lab.llm.scripted_server import Reply, ScriptedServer, call, say
from phase14_frameworks.model_recorder import text_of

SKILL_ENTRY = re.compile(r"<skill>\s*<name>(?P<name>[^<]+)</name>.*?<location>(?P<location>[^<]+)</location>", re.S)


def skill_location(system_prompt: str, skill: str) -> str | None:
    for entry in SKILL_ENTRY.finditer(system_prompt):
        if html.unescape(entry["name"]).strip() == skill:
            return html.unescape(entry["location"]).strip()
    return None


def topic_of(user_text: str) -> str:
    """The topic of "... about TOPIC." — the last line that says so: OpenClaw puts a timestamp before a
    headless message, and a channel's message comes after a block of conversation metadata."""
    found = re.findall(r"\babout\s+(.+?)[.!?]?[ \t]*$", user_text or "", re.M)
    if found:
        return found[-1].strip()
    lines = (user_text or "").strip().splitlines()
    return lines[0] if lines else ""


def next_step(body: dict[str, Any], skill: str) -> dict[str, Any]:
    """The assistant message for this request: a tool call (``name``, ``arguments``) or ``text``."""
    messages = body.get("messages") or []
    system = "\n".join(text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    results = [text_of(m.get("content")) for m in messages if m.get("role") == "tool"]
    location = skill_location(system, skill)
    if location is None:
        return {"text": f"The {skill} skill is not in my skill list."}
    if not results:
        return {"name": "read", "arguments": {"path": location}}
    if len(results) == 1:
        script = Path(location).parent / "scripts" / "content_engine.py"
        command = f"python3 {shlex.quote(str(script))} start {shlex.quote(topic_of(users[0] if users else ''))}"
        return {"name": "exec", "arguments": {"title": "start a content-engine job", "command": command}}
    return {"text": f"Started the content-engine job:\n{results[-1][:1500]}"}


def reply(body: dict[str, Any], skill: str) -> Reply:
    """The step as the server's reply, without usage (nothing was counted)."""
    step = next_step(body, skill)
    if "name" in step:
        return call(step["name"], step["arguments"], usage=None)
    return say(step["text"], usage=None)


def scripted_model(skill: str = "content-engine", model: str = "scripted") -> ScriptedServer:
    """The server (a context manager): ``GET /v1/models`` lists ``model``; chat completions follow the script."""
    return ScriptedServer(lambda body: reply(body, skill), models=[{"id": model, "owned_by": "lab"}])
