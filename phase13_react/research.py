"""A stateful five-step research workflow: plan → search → read → compute → answer with citations.

    store = AgentStateStore()
    run = research(llm, task, Toolbox(RESEARCH_TOOLS), store, run_id="r1")   # killed? call it again:
    run = research(llm, task, toolbox, store, run_id="r1")                    # finished steps are not redone

Each step is one model turn with the tools that step allows (``STEPS``), recorded as a
``phase13_react.steps.Step`` and appended to the store before the next one starts. The conversation
for the next step is replayed from the stored records (``loop.messages_from``), so a process that
resumes a run sees exactly what the killed one saw, and a step that finished (its tool ran, its
record is stored) never runs again. Only the step in flight when the process died is lost.

The plan and the final answer are JSON replies (``json_schema``): the plan names a search query; the
answer carries ``citations``, chunk ids from the search/read steps. A fixed workflow rather than a
free loop on purpose: a small model that cannot choose what to do next can still fill in each step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.llm.base import LLM, LLMError
from phase13_react.loop import messages_from
from phase13_react.state_store import AgentStateStore
from phase13_react.steps import AgentRun, Step
from phase13_react.tools import Toolbox

SYSTEM = (
    "You are a research assistant for this repository's LLM-systems experiments. Work in the step you "
    "are asked for: plan, search the notes, read a chunk or a committed metric, compute, then answer "
    "with the number and cite the chunk ids you used."
)

PLAN_SCHEMA = {
    "type": "object",
    "properties": {"search_query": {"type": "string", "maxLength": 120}, "plan": {"type": "string", "maxLength": 240}},
    "required": ["search_query", "plan"],
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 120},
        "citations": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 3},
    },
    "required": ["answer", "citations"],
}


@dataclass(frozen=True)
class StepSpec:
    name: str
    instruction: str
    tools: tuple[str, ...] = ()  # offered with tool_choice="required"; empty = a JSON reply
    schema: dict[str, Any] | None = None


STEPS = (
    StepSpec("plan", "Step 1 (plan): say what to look up and give one search query.", schema=PLAN_SCHEMA),
    StepSpec("search", "Step 2 (search): search the notes with your query.", tools=("search_notes",)),
    StepSpec(
        "read",
        "Step 3 (read): read the chunk that holds the answer, or the committed metric.",
        tools=("read_chunk", "read_result_metric"),
    ),
    StepSpec(
        "compute",
        "Step 4 (compute): compute the answer with a tool (calculator or kv_cache_gb).",
        tools=("calculator", "kv_cache_gb"),
    ),
    StepSpec("answer", "Step 5 (answer): give the answer and cite the chunk ids you used.", schema=ANSWER_SCHEMA),
)


@dataclass
class ResearchRun:
    run: AgentRun
    citations: list[str]
    tool_executions: int  # tools run by THIS process (a resumed run does not re-run stored steps)


def research(
    llm: LLM,
    task: str,
    toolbox: Toolbox,
    store: AgentStateStore,
    run_id: str,
    *,
    max_tokens: int = 160,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> ResearchRun:
    """Run (or resume) the five steps of ``run_id``; every finished step is stored before the next."""
    store.start(run_id, task, meta)
    steps = store.steps(run_id)
    resumed, executions = len(steps), 0
    for spec in STEPS[len(steps) :]:
        step = Step(index=len(steps))
        messages = messages_from(task, steps, "native")
        messages.append({"role": "user", "content": spec.instruction})
        sub = Toolbox([toolbox.tools[n] for n in spec.tools if n in toolbox], toolbox.retries, toolbox.backoff_s)
        try:
            if spec.schema is not None:
                reply = llm.chat(messages, system=SYSTEM, json_schema=spec.schema, max_tokens=max_tokens)
            else:
                reply = llm.chat(
                    messages,
                    system=SYSTEM,
                    tools=sub.schemas(),
                    tool_choice="required",
                    parallel_tool_calls=False,
                    max_tokens=max_tokens,
                )
        except LLMError as exc:
            step.error, step.feedback = "model_error", f"Error: the model call failed: {exc}"
        else:
            step.model_text = reply.text
            step.input_tokens, step.output_tokens = reply.usage.input_tokens, reply.usage.output_tokens
            step.latency_s, step.cost_usd = reply.latency_s, reply.cost_usd
            for call in reply.tool_calls[:1]:
                step.tool_calls.append(
                    {"id": call.id, "name": call.name, "arguments": call.arguments, "raw_arguments": call.raw_arguments}
                )
                step.observations.append(sub.execute(call).to_dict())
                executions += 1
            if spec.schema is None and not reply.tool_calls:
                step.error, step.feedback = "empty_reply", "No tool was called in this step."
            if spec.name == "answer":
                step.answer = _answer(reply.text)[0] or reply.text.strip() or None
        steps.append(step)
        store.append(run_id, step)
        if on_step is not None:
            on_step(step)
    answer_step = steps[-1] if steps and len(steps) == len(STEPS) else None
    answer, citations = _answer(answer_step.model_text) if answer_step else (None, [])
    stop = (
        "answer"
        if answer_step and answer_step.answer
        else ("model_error" if any(s.error == "model_error" for s in steps) else "max_steps")
    )
    run = AgentRun(task, steps, answer_step.answer if answer_step else None, stop, resumed)
    store.finish(run_id, run)
    return ResearchRun(run, citations, executions)


def _answer(text: str) -> tuple[str | None, list[str]]:
    """``(answer, citations)`` from the answer step's JSON (anything unparseable: no answer, no citations)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None, []
    if not isinstance(data, dict):
        return None, []
    cites = [c for c in data.get("citations") or [] if isinstance(c, str)]
    answer = data.get("answer")
    return (str(answer) if answer is not None else None), cites
