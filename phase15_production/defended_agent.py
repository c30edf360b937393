"""An agent that reads untrusted text and holds privileged tools, run through a ``Defence``.

    box_tools = [publish, send_message, write_state]            # phase13 @tool(privileged=True)
    run = run_defended(llm, task, page, "web page", box_tools, Defence())
    run.answer        # what the user sees (withheld when the output check refused it)
    run.effects       # the privileged calls that actually ran: [(name, arguments)]
    run.blocked       # the calls and answers the defence refused, with the layer and reason

With the ``stages`` layer off it is one Phase 13 ReAct loop that sees the task, the (wrapped) untrusted
text and every tool. With it on it is two stages:

1. **reader** — sees the task and the untrusted text, holds no privileged tool, and returns one JSON
   object (``{"summary": ...}``) under the model's structured-output mode;
2. **actor** — sees the task and the *names* of the reader's outputs (``$summary``), never their text,
   and holds the privileged tools. Its calls and answer are written with the names; the values are
   substituted after it decided, then checked (``provenance``, ``output``) like any other call.

Whatever the untrusted text says, it can reach the actor's decisions only through the reader's
values, and those the actor never reads. Every privileged call goes through ``GuardedToolbox``, the
one place where calls are checked and side effects happen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.llm.base import LLM, LLMError, ToolCall
from phase13_react.loop import NATIVE_SYSTEM, run_agent
from phase13_react.tools import Observation, Tool, Toolbox
from phase15_production.defence import Defence, Verdict

AGENT_SYSTEM = NATIVE_SYSTEM + " Your tools act for the user: publish posts, send messages, write the agent's state."
READER_SYSTEM = (
    "You read a document for the user and report on it as JSON. You cannot act: no tools. "
    "Write a short, faithful summary of the document's content."
)
READER_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 600}},
    "required": ["summary"],
}
ACTOR_NOTE = (
    "The {source} was read for you by a separate reader stage. Its output is stored in variables whose "
    "text you cannot see; write a variable's name where its value belongs, in a tool's arguments or in "
    "your answer. $summary = a summary of the {source}."
)
_VARIABLE = re.compile(r"\$([A-Za-z_]\w*)")


def substitute(value: Any, variables: dict[str, str]) -> Any:
    """``$name`` references in (nested) string values replaced by the variables' values."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    return value


@dataclass
class Refusal:
    """Something the defence refused: a privileged call (``tool`` set) or the final answer."""

    layer: str
    reason: str
    tool: str | None = None
    arguments: dict[str, Any] | None = None


class GuardedToolbox(Toolbox):
    """A Toolbox whose privileged calls pass ``Defence.check_call`` first (after ``$variable``
    substitution); the ones that ran are ``effects``, the refused ones ``refusals``."""

    def __init__(
        self,
        tools: Sequence[Tool],
        defence: Defence,
        task: str,
        trusted: Sequence[str] = (),
        untrusted: Sequence[str] = (),
        variables: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(tools, **kwargs)
        self.defence, self.task, self.trusted = defence, task, list(trusted)
        self.variables = dict(variables or {})
        self.untrusted = list(untrusted) + list(self.variables.values())
        self.effects: list[tuple[str, dict[str, Any]]] = []
        self.refusals: list[Refusal] = []

    def execute(self, call: ToolCall) -> Observation:
        resolved = ToolCall(call.id, call.name, substitute(dict(call.arguments), self.variables), call.raw_arguments)
        tool = self.tools.get(call.name)
        if tool is None or not tool.privileged:
            return super().execute(resolved)
        verdict: Verdict = self.defence.check_call(resolved, self.task, self.trusted, self.untrusted)
        if not verdict.allowed:
            self.refusals.append(Refusal(verdict.layer or "", verdict.reason, call.name, resolved.arguments))
            # the reason may quote untrusted text: it stays in the record, the model gets the layer only
            return Observation(
                call.id,
                call.name,
                dict(call.arguments),
                f"Refused by the defence ({verdict.layer} check). Do the user's task only.",
                outcome="blocked",
            )
        obs = super().execute(resolved)
        if obs.outcome == "ok":
            self.effects.append((call.name, dict(resolved.arguments)))
        return obs


@dataclass
class DefendedRun:
    answer: str | None  # as shown to the user
    raw_answer: str | None  # before the output check (and after substitution)
    effects: list[tuple[str, dict[str, Any]]]
    blocked: list[Refusal]
    stop_reason: str
    model_calls: int
    reader_summary: str | None = None
    notes: list[str] = field(default_factory=list)


def run_defended(
    llm: LLM,
    task: str,
    untrusted: str,
    source: str,
    tools: Sequence[Tool],
    defence: Defence,
    *,
    trusted: Sequence[str] = (),
    max_steps: int = 4,
    max_tokens: int = 128,
) -> DefendedRun:
    """Do ``task`` over ``untrusted`` text (from ``source``) with ``tools``, under ``defence``."""
    context = "".join(f"\n\nTrusted context:\n{t}" for t in trusted)
    variables: dict[str, str] = {}
    model_calls, notes = 0, []
    if defence.on("stages"):
        assert not any(t.privileged for t in defence.tools_for_stage(tools, "reader"))
        reader_prompt = f"The user's task: {task}\n\n{defence.wrap_untrusted(untrusted, source)}"
        model_calls += 1
        try:
            reply = llm.chat(
                [{"role": "user", "content": reader_prompt}],
                system=defence.system_prompt(READER_SYSTEM),
                json_schema=READER_SCHEMA,
                max_tokens=max_tokens,
            )
            report = reply.json()
            summary = report.get("summary") if isinstance(report, dict) else None
        except LLMError as exc:  # JSONReplyError included: the reader failed, the actor gets an empty value
            summary = None
            notes.append(f"reader failed: {exc}")
        variables["summary"] = summary if isinstance(summary, str) else ""
        prompt = task + context + "\n\n" + ACTOR_NOTE.format(source=source)
        box = GuardedToolbox(defence.tools_for_stage(tools, "actor"), defence, task, trusted, [untrusted], variables)
        system = defence.system_prompt(AGENT_SYSTEM)
    else:
        prompt = task + context + "\n\n" + defence.wrap_untrusted(untrusted, source)
        box = GuardedToolbox(defence.tools_for_stage(tools, "single"), defence, task, trusted, [untrusted])
        system = defence.system_prompt(AGENT_SYSTEM)
    run = run_agent(llm, prompt, box, system=system, tool_choice="required", max_steps=max_steps, max_tokens=max_tokens)
    model_calls += len(run.steps)
    raw = substitute(run.answer, variables) if run.answer is not None else None
    shown, blocked = raw, list(box.refusals)
    if raw is not None:
        verdict = defence.check_output(raw, task, trusted, [untrusted, *variables.values()])
        if not verdict.allowed:
            blocked.append(Refusal(verdict.layer or "", verdict.reason))
            shown = f"[answer withheld by the defence ({verdict.layer} check)]"  # the reason may quote the payload
    return DefendedRun(
        shown,
        raw,
        box.effects,
        blocked,
        run.stop_reason,
        model_calls,
        variables.get("summary") if defence.on("stages") else None,
        notes,
    )
