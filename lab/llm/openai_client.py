"""Any OpenAI-compatible chat server (vLLM, Ollama, llama.cpp server, api.openai.com) through the
official ``openai`` SDK's Chat Completions API.

Tools go out as ``{"type": "function", "function": {name, description, parameters}}`` and come
back as ``tool_calls`` whose ``arguments`` are a JSON string (parsed here). A ``json_schema`` is
sent as ``response_format: {"type": "json_schema", ...}``; a server that rejects it (HTTP 400/422,
as older local servers do) is asked again with the schema as an instruction, and this client
remembers to use the instruction from then on.
"""

from __future__ import annotations

import json
from typing import Any, cast

from lab.llm.base import ChatResponse, LLMError, ToolCall, Usage, json_instruction, normalize_tool_choice, tool_calls_of
from lab.llm.hosted import HostedLLM
from lab.llm.prices import cost_usd

# Chat Completions finish_reason -> the stop reasons every ChatResponse uses
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
NO_KEY = "not-needed"  # what a local server without auth gets as its API key


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content)


def to_openai(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """Our message dicts as Chat Completions messages (the system prompt first)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": _text(m["content"])})
        elif m["role"] == "assistant" and (calls := tool_calls_of(m)):
            out.append(
                {
                    "role": "assistant",
                    "content": m.get("content") or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in calls
                    ],
                }
            )
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


class OpenAILLM(HostedLLM):
    provider = "openai"
    key_env = "OPENAI_API_KEY"

    def __init__(self, model: str, base_url: str | None = None, **kwargs: Any):
        import openai  # noqa: PLC0415 (openai loads only on the path that uses it)

        super().__init__(model, base_url=base_url, **kwargs)
        self.connection_errors = (openai.APIConnectionError,)
        key = self.api_key or (NO_KEY if base_url else self._require_key())
        endpoint: dict[str, Any] = {"base_url": base_url} if base_url else {}
        self._client = openai.OpenAI(api_key=key, max_retries=0, timeout=self.timeout_s, **endpoint)
        self._native_json = True

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
        request: dict[str, Any] = dict(model=self.model, temperature=temperature)
        # api.openai.com's newer models only take max_completion_tokens; local servers know max_tokens
        request["max_tokens" if self.base_url else "max_completion_tokens"] = max_tokens
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
                    },
                }
                for t in tools
            ]
            if mode != "auto":  # auto is the API's default: leave it out for servers that lack the field
                request["tool_choice"] = {"type": "function", "function": {"name": name}} if mode == "named" else mode
            if not parallel_tool_calls:
                request["parallel_tool_calls"] = False
        if stop:
            request["stop"] = list(stop)
        if json_schema and self._native_json:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": json_schema},
            }
        elif json_schema:
            system = "\n\n".join(filter(None, [system, json_instruction(json_schema)]))
        try:
            reply, latency = self._send(
                lambda: self._client.chat.completions.create(messages=cast(Any, to_openai(messages, system)), **request)
            )
        except LLMError as exc:
            if "response_format" in request and exc.status in (400, 422):
                self._native_json = False  # this server has no structured output: say it in the prompt
                return self.chat(
                    messages,
                    system,
                    tools,
                    max_tokens,
                    temperature,
                    json_schema,
                    tool_choice,
                    parallel_tool_calls,
                    stop,
                )
            raise
        return self._response(reply, latency)

    def _response(self, reply, latency: float) -> ChatResponse:
        if not reply.choices:
            raise LLMError(f"{self.spec}: the reply has no choices")
        choice = reply.choices[0]
        calls = [self._tool_call(tc) for tc in choice.message.tool_calls or []]
        usage = Usage(reply.usage.prompt_tokens or 0, reply.usage.completion_tokens or 0) if reply.usage else Usage()
        model = reply.model or self.model
        return ChatResponse(
            text=choice.message.content or "",
            provider=self.provider,
            model=model,
            tool_calls=calls,
            usage=usage,
            latency_s=latency,
            cost_usd=cost_usd(self.provider, model, usage.input_tokens, usage.output_tokens),
            stop_reason=STOP_REASONS.get(choice.finish_reason, choice.finish_reason),
        )

    @staticmethod
    def _tool_call(tool_call) -> ToolCall:
        """A call whose arguments are not a JSON object keeps them raw (``ToolCall.arguments_error``)."""
        raw = tool_call.function.arguments or "{}"
        try:
            args = json.loads(raw)
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return ToolCall(id=tool_call.id, name=tool_call.function.name, arguments={}, raw_arguments=raw)
        return ToolCall(id=tool_call.id, name=tool_call.function.name, arguments=args)
