"""The ReAct loop, written from scratch on purpose (the lesson): Thought → Action → Observation.

    run = run_agent(llm, "What is 17 * 23?", Toolbox([calculator]), max_steps=6)
    run.answer, run.stop_reason, run.steps          # every step is a record (phase13_react.steps)

Two ways to ask a model for an action, same loop:

- ``mode="native"``: the provider's tool calling (``tools=`` on ``lab.llm``). With
  ``tool_choice="required"`` every turn must be a call, and the answer is a call to the
  ``final_answer`` tool — the shape that constrained decoding keeps valid even on a 135M model.
- ``mode="text"``: the original ReAct prompt format (``Thought:`` / ``Action:`` / ``Action Input:`` /
  ``Final Answer:``), parsed from plain text; nothing constrains it, so a reply can miss the format.

The loop never raises on a bad model reply: every failure is recorded on the step and shown to the
model as its next observation (``phase13_react.tools`` names the tool-side outcomes), and the loop
stops for one of ``steps.STOP_REASONS``: an answer, the step budget, the same action repeated
``max_repeats`` times, or a provider error. ``prior_steps`` resumes a run: its messages are replayed
from the records, nothing in them runs again.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from lab.llm.base import LLM, ChatResponse, LLMError, ToolCall
from phase13_react.steps import AgentRun, Step
from phase13_react.tools import Observation, Toolbox

FINAL_ANSWER = "final_answer"
FINAL_ANSWER_TOOL = {
    "name": FINAL_ANSWER,
    "description": "Give the final answer to the task and stop. Call this once you know the answer.",
    "input_schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
}
MAX_CITATIONS = 3


def final_answer_tool(cite: bool = False) -> dict[str, Any]:
    """The ``final_answer`` action; with ``cite`` it also carries ``citations`` (ids of the sources the
    answer rests on, e.g. chunk ids from a search), so an answer and its evidence come in one action."""
    if not cite:
        return FINAL_ANSWER_TOOL
    schema = json.loads(json.dumps(FINAL_ANSWER_TOOL["input_schema"]))
    schema["properties"]["citations"] = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_CITATIONS}
    schema["required"] = ["answer", "citations"]
    return {
        **FINAL_ANSWER_TOOL,
        "description": FINAL_ANSWER_TOOL["description"] + " Cite the ids of the sources you used.",
        "input_schema": schema,
    }


NATIVE_SYSTEM = (
    "You solve the user's task step by step with the tools you are given. Call one tool at a time, "
    "read its result, then decide the next step. When you know the answer, give it"
    " (with the final_answer tool when you must call a tool)."
)

TEXT_SYSTEM = """You solve the user's task step by step. You can use these tools:
{tools}

Use exactly this format:
Thought: what to do next
Action: the tool name
Action Input: the arguments as one JSON object

You will then get "Observation: <the tool result>". Repeat as needed. When you know the answer:
Thought: I know the answer
Final Answer: the answer"""

_ACTION = re.compile(r"Action:\s*([A-Za-z0-9_.\-]+)\s*(?:\n|$)\s*Action Input:\s*(.*)", re.S)
_FINAL = re.compile(r"Final Answer:\s*(.*)", re.S)


def action_key(call: ToolCall) -> str:
    """Two calls are the same action when name and arguments match (argument order does not matter)."""
    return call.name + json.dumps(call.arguments if call.raw_arguments is None else call.raw_arguments, sort_keys=True)


def messages_from(task: str, steps: Iterable[Step], mode: str) -> list[dict[str, Any]]:
    """The conversation the model sees next, replayed from the step records."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    for step in steps:
        if mode == "text":
            messages.append({"role": "assistant", "content": step.model_text})
            shown = step.feedback or "\n".join(o["content"] for o in step.observations)
            if shown:
                messages.append({"role": "user", "content": f"Observation: {shown}"})
            continue
        if step.tool_calls:
            messages.append({"role": "assistant", "content": step.model_text, "tool_calls": step.calls()})
            messages.extend(
                {"role": "tool", "tool_call_id": o["tool_call_id"], "name": o["name"], "content": o["content"]}
                for o in step.observations
            )
        else:
            messages.append({"role": "assistant", "content": step.model_text})
        if step.feedback:
            messages.append({"role": "user", "content": step.feedback})
    return messages


def parse_text_reply(text: str) -> tuple[str | None, ToolCall | None]:
    """``(final answer, action)`` from a ReAct-format reply; both None when it follows no format."""
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if final and (not action or final.start() < action.start()):
        return final.group(1).strip(), None
    if not action:
        return None, None
    raw = action.group(2).strip()
    start, end = raw.find("{"), raw.rfind("}")
    candidate = raw[start : end + 1] if 0 <= start < end else raw
    try:
        args = json.loads(candidate)
    except json.JSONDecodeError:
        args = None
    call_id = f"react_{uuid.uuid4().hex[:8]}"
    if not isinstance(args, dict):
        return None, ToolCall(call_id, action.group(1), {}, raw_arguments=raw)
    return None, ToolCall(call_id, action.group(1), args)


def run_agent(
    llm: LLM,
    task: str,
    toolbox: Toolbox,
    *,
    mode: str = "native",
    system: str | None = None,
    tool_choice: str = "required",
    max_steps: int = 8,
    max_repeats: int = 3,
    max_tokens: int = 256,
    cite: bool = False,
    prior_steps: Iterable[Step] = (),
    on_step: Callable[[Step], None] | None = None,
) -> AgentRun:
    """Run ``task`` until an answer or a stop condition; ``on_step`` sees each finished step (persist it).

    By default each native step is one structured action (``tool_choice="required"``): a call to one
    offered tool or to ``final_answer`` (with ``citations`` when ``cite``), decoded under one grammar, one
    call per step; the run stops at ``final_answer``. ``tool_choice="auto"`` lets the model answer in text."""
    if mode not in ("native", "text"):
        raise ValueError(f"mode {mode!r}: expected 'native' or 'text'")
    steps = list(prior_steps)
    resumed = len(steps)
    if steps and steps[-1].answer is not None:
        return AgentRun(task, steps, steps[-1].answer, "answer", resumed)
    repeats = sum(1 for s in steps for o in s.observations if o["outcome"] == "repeated_action")
    seen = {action_key(c): (s.index, o) for s in steps for c, o in zip(s.calls(), s.observations)}
    while len(steps) < max_steps:
        step = Step(index=len(steps))
        try:
            reply = _ask(llm, task, steps, toolbox, mode, system, tool_choice, max_tokens, cite)
        except LLMError as exc:  # the provider failed after its own retries: record it and stop
            step.error, step.feedback = "model_error", f"Error: the model call failed: {exc}"
            _finish(step, steps, on_step)
            return AgentRun(task, steps, None, "model_error", resumed)
        step.model_text = reply.text
        step.input_tokens, step.output_tokens = reply.usage.input_tokens, reply.usage.output_tokens
        step.latency_s, step.cost_usd = reply.latency_s, reply.cost_usd
        answer, calls = _decide(reply, mode, step, cite)
        if answer is not None:
            step.answer = answer
            _finish(step, steps, on_step)
            return AgentRun(task, steps, answer, "answer", resumed)
        for call in calls:
            step.tool_calls.append(
                {"id": call.id, "name": call.name, "arguments": call.arguments, "raw_arguments": call.raw_arguments}
            )
            key = action_key(call)
            if call.name == FINAL_ANSWER:  # reached only when its arguments were unusable
                obs = Observation(
                    call.id,
                    call.name,
                    dict(call.arguments),
                    'Error: final_answer takes one JSON object {"answer": "<text>"}.',
                    outcome="invalid_arguments",
                )
            elif key in seen:  # the same action again: show the earlier result instead of running it twice
                repeats += 1
                earlier_index, earlier = seen[key]
                obs = Observation(
                    call.id,
                    call.name,
                    dict(call.arguments),
                    (
                        f"You already called {call.name} with these arguments at step {earlier_index + 1}; "
                        f"the result was: {earlier['content']} Do something different or give the final answer."
                    ),
                    outcome="repeated_action",
                )
            else:
                obs = toolbox.execute(call)
                seen[key] = (step.index, obs.to_dict())
            step.observations.append(obs.to_dict())
        _finish(step, steps, on_step)
        if repeats >= max_repeats:
            return AgentRun(task, steps, None, "repeated_action", resumed)
    return AgentRun(task, steps, None, "max_steps", resumed)


def _finish(step: Step, steps: list[Step], on_step: Callable[[Step], None] | None) -> None:
    steps.append(step)
    if on_step is not None:
        on_step(step)


def _ask(
    llm: LLM,
    task: str,
    steps: list[Step],
    toolbox: Toolbox,
    mode: str,
    system: str | None,
    tool_choice: str,
    max_tokens: int,
    cite: bool,
) -> ChatResponse:
    messages = messages_from(task, steps, mode)
    if mode == "text":
        tools = "\n".join(
            f"- {t['name']}: {t['description']} Arguments: {json.dumps(t['input_schema'])}" for t in toolbox.schemas()
        )
        prompt = TEXT_SYSTEM.format(tools=tools) + (f"\n\n{system}" if system else "")
        return llm.chat(messages, system=prompt, max_tokens=max_tokens, stop=["Observation:"])
    schemas = toolbox.schemas() + ([final_answer_tool(cite)] if tool_choice == "required" else [])
    return llm.chat(
        messages,
        system=system or NATIVE_SYSTEM,
        tools=schemas,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=max_tokens,
    )


def _decide(reply: ChatResponse, mode: str, step: Step, cite: bool = False) -> tuple[str | None, list[ToolCall]]:
    """The answer (its citations recorded on ``step``), or the calls to run; a reply that is neither is
    recorded on ``step``."""
    if mode == "text":
        answer, call = parse_text_reply(reply.text)
        if answer is None and call is None:
            step.error = "parse_error"
            step.feedback = (
                "Your reply did not follow the format. Write 'Action:' and 'Action Input:' lines, or 'Final Answer:'."
            )
        return answer, [call] if call else []
    final = [c for c in reply.tool_calls if c.name == FINAL_ANSWER and c.raw_arguments is None]
    if final and isinstance(final[0].arguments.get("answer"), str):
        if cite:
            step.citations = [c for c in final[0].arguments.get("citations") or [] if isinstance(c, str)]
        return final[0].arguments["answer"], []
    if reply.tool_calls:
        return None, list(reply.tool_calls)
    if reply.text.strip():
        return reply.text.strip(), []
    step.error = "empty_reply"
    step.feedback = "Your reply was empty. Call a tool or give the final answer."
    return None, []
