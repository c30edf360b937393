"""Claude through the official ``anthropic`` SDK (Messages API), tool use included.

Our message dicts map onto Anthropic content blocks: an assistant turn carrying ``tool_calls``
becomes ``tool_use`` blocks, and ``role: "tool"`` results become ``tool_result`` blocks in a user
turn (consecutive results share one turn, as the API requires after parallel tool calls). A
``json_schema`` is enforced with a forced tool whose input schema is that schema — every Claude
model supports it — and the tool's input becomes the reply text, so ``.json()`` parses it. When
the caller also passes tools (or the schema is not an object) it falls back to an instruction.

``temperature`` is accepted for the common interface but not sent: the Messages API of anthropic
2.x (API version 2026-10-21) has no sampling parameters.
"""

from __future__ import annotations

import json
from typing import Any

from lab.llm.base import ChatResponse, ToolCall, Usage, json_instruction, normalize_tool_choice, tool_calls_of
from lab.llm.hosted import HostedLLM
from lab.llm.prices import cost_usd

JSON_TOOL = "json_reply"
# our tool_choice modes -> the Messages API's tool_choice types
TOOL_CHOICE_TYPES = {"auto": "auto", "required": "any", "named": "tool", "none": "none"}


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content)


def to_anthropic(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts found in ``messages``, the rest as Anthropic Messages API turns)."""
    systems: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "system":
            systems.append(_text(m["content"]))
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": _text(m["content"])}
            if m.get("is_error"):
                block["is_error"] = True
            last = turns[-1] if turns else None
            if (
                last
                and last["role"] == "user"
                and isinstance(last["content"], list)
                and all(b.get("type") == "tool_result" for b in last["content"])
            ):
                last["content"].append(block)
            else:
                turns.append({"role": "user", "content": [block]})
        elif role == "assistant" and (calls := tool_calls_of(m)):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m["content"]}] if m.get("content") else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in calls]
            turns.append({"role": "assistant", "content": blocks})
        else:
            turns.append({"role": role, "content": m["content"]})
    return systems, turns


class AnthropicLLM(HostedLLM):
    provider = "anthropic"
    key_env = "ANTHROPIC_API_KEY"

    def __init__(self, model: str, base_url: str | None = None, **kwargs: Any):
        import anthropic  # noqa: PLC0415 (anthropic loads only on the path that uses it)

        super().__init__(model, base_url=base_url, **kwargs)
        self.connection_errors = (anthropic.APIConnectionError,)
        self._client = anthropic.Anthropic(
            api_key=self._require_key(), base_url=base_url, max_retries=0, timeout=self.timeout_s
        )

    def chat(
        self,
        messages,
        system=None,
        tools=None,
        max_tokens=512,
        temperature=0.0,
        json_schema=None,
        tool_choice="auto",
        parallel_tool_calls=True,
        stop=None,
    ) -> ChatResponse:
        mode, name = normalize_tool_choice(tool_choice, tools)
        systems, turns = to_anthropic(messages)
        if system:
            systems.insert(0, system)
        request: dict[str, Any] = dict(model=self.model, max_tokens=max_tokens, messages=turns)
        forced_json = bool(json_schema) and not tools and json_schema.get("type", "object") == "object"
        if forced_json:
            request["tools"] = [
                {
                    "name": JSON_TOOL,
                    "description": "Give your whole reply as this tool's input.",
                    "input_schema": json_schema,
                }
            ]
            request["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        else:
            if tools:
                request["tools"] = [
                    {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "input_schema": t.get("input_schema") or {"type": "object", "properties": {}},
                    }
                    for t in tools
                ]
                if mode != "auto" or not parallel_tool_calls:  # auto + parallel is the API's default
                    choice: dict[str, Any] = {"type": TOOL_CHOICE_TYPES[mode]}
                    if mode == "named":
                        choice["name"] = name
                    if not parallel_tool_calls and mode != "none":
                        choice["disable_parallel_tool_use"] = True
                    request["tool_choice"] = choice
            if json_schema:
                systems.append(json_instruction(json_schema))
        if systems:
            request["system"] = "\n\n".join(systems)
        if stop:
            request["stop_sequences"] = list(stop)

        reply, latency = self._send(lambda: self._client.messages.create(**request))

        texts, calls = [], []
        for block in reply.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use" and forced_json and block.name == JSON_TOOL:
                texts.append(json.dumps(block.input))
            elif block.type == "tool_use":
                calls.append(ToolCall(id=block.id, name=block.name, arguments=dict(block.input or {})))
        stop_reason = reply.stop_reason
        if forced_json and stop_reason == "tool_use":
            stop_reason = "end_turn"  # the forced JSON tool is the answer, not a tool to run
        n_in, n_out = reply.usage.input_tokens, reply.usage.output_tokens
        model = reply.model or self.model
        return ChatResponse(
            text="".join(texts),
            provider=self.provider,
            model=model,
            tool_calls=calls,
            usage=Usage(n_in, n_out),
            latency_s=latency,
            cost_usd=cost_usd(self.provider, model, n_in, n_out),
            stop_reason=stop_reason,
            stop_sequence=getattr(reply, "stop_sequence", None),
        )
