"""The LLM client layer: hosted providers through their real SDKs against a loopback server that
speaks their wire format, and the embedded local model generating real text."""

import socket

import pytest

from lab.errors import ConfigError, MissingResource
from lab.llm import ChatResponse, JSONReplyError, LLMError, ToolCall, from_spec, parse_json_reply
from lab.llm.anthropic_client import AnthropicLLM
from lab.llm.base import json_instruction
from lab.llm.local import LocalLLM, chat_turns
from lab.llm.openai_client import OpenAILLM
from lab.llm.prices import cost_usd
from lab.llm.scripted_server import ScriptedServer, raw

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
VERDICT_SCHEMA = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}
# a conversation where the model already asked for two tools and both answered
HISTORY = [
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            ToolCall("call_1", "get_weather", {"city": "Paris"}),
            {"id": "call_2", "name": "get_weather", "arguments": {"city": "Oslo"}},  # dict form works too
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18C sunny"},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_weather", "content": {"temp_c": 4}},
]


@pytest.fixture
def server():
    """A scripted server on loopback: each test appends the raw replies (``server.script``) it will get."""
    with ScriptedServer([]) as srv:
        yield srv


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- Anthropic --------------------------------------------------------------------------------


def anthropic_message(content: list[dict], stop="end_turn", model="claude-haiku-4-5-20251001", usage=(1000, 200)):
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def test_anthropic_tool_use_round_trip(server, keys):
    server.script.append(
        raw(
            anthropic_message(
                [
                    {"type": "text", "text": "One more city."},
                    {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Rome"}},
                ],
                stop="tool_use",
            )
        )
    )
    llm = from_spec(f"anthropic:claude-haiku-4-5@{server.url}")
    reply = llm.chat(HISTORY, system="You are terse.", tools=[WEATHER_TOOL], max_tokens=64)

    [req] = server.requests
    assert req.path == "/v1/messages"
    assert req.headers["anthropic-version"]
    assert "sk-ant-test-key" in (req.headers.get("authorization", "") + req.headers.get("x-api-key", ""))
    body = req.body
    assert body["model"] == "claude-haiku-4-5" and body["max_tokens"] == 64 and "temperature" not in body
    assert body["system"] == "You are terse."
    assert body["tools"] == [WEATHER_TOOL]
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [  # both results in ONE user turn, as the API requires
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": '{"temp_c": 4}'},
            ],
        },
    ]

    assert isinstance(reply, ChatResponse)
    assert reply.text == "One more city."
    assert reply.tool_calls == [ToolCall("toolu_9", "get_weather", {"city": "Rome"})]
    assert reply.stop_reason == "tool_use" and reply.provider == "anthropic"
    assert reply.model == "claude-haiku-4-5-20251001"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (1000, 200)
    assert reply.cost_usd == pytest.approx(1000 * 1.0 / 1e6 + 200 * 5.0 / 1e6)  # haiku-4-5: $1 / $5 per MTok
    assert reply.latency_s > 0
    assert llm.describe() == {"id": f"anthropic:claude-haiku-4-5@{server.url}"}


def test_anthropic_json_schema_is_a_forced_tool(server, keys):
    server.script.append(
        raw(
            anthropic_message(
                [{"type": "tool_use", "id": "toolu_1", "name": "json_reply", "input": {"verdict": "pass"}}],
                stop="tool_use",
            )
        )
    )
    llm = AnthropicLLM("claude-sonnet-4-5", base_url=server.url)
    reply = llm.chat([{"role": "user", "content": "Judge this."}], json_schema=VERDICT_SCHEMA)
    body = server.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "json_reply"}
    assert body["tools"][0]["input_schema"] == VERDICT_SCHEMA
    assert reply.json() == {"verdict": "pass"}
    assert reply.tool_calls == [] and reply.stop_reason == "end_turn"


def test_anthropic_json_schema_with_tools_becomes_an_instruction(server, keys):
    server.script.append(raw(anthropic_message([{"type": "text", "text": '{"verdict": "fail"}'}])))
    llm = AnthropicLLM("claude-sonnet-4-5", base_url=server.url)
    reply = llm.chat([{"role": "user", "content": "Judge."}], tools=[WEATHER_TOOL], json_schema=VERDICT_SCHEMA)
    body = server.requests[0].body
    assert "tool_choice" not in body and body["system"] == json_instruction(VERDICT_SCHEMA)
    assert reply.json() == {"verdict": "fail"}


def test_anthropic_retries_a_5xx_then_succeeds(server, keys):
    server.script.append(raw({"type": "error", "error": {"type": "api_error", "message": "hiccup"}}, status=500))
    server.script.append(raw({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, status=529))
    server.script.append(raw(anthropic_message([{"type": "text", "text": "fine"}])))
    llm = AnthropicLLM("claude-haiku-4-5", base_url=server.url, retry_wait_s=0.01)
    assert llm.chat([{"role": "user", "content": "hi"}]).text == "fine"
    assert len(server.requests) == 3


def test_anthropic_400_is_an_llm_error_naming_provider_model_status(server, keys):
    server.script.append(
        raw(
            {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens too large"}}, status=400
        )
    )
    llm = AnthropicLLM("claude-haiku-4-5", base_url=server.url, retry_wait_s=0.01)
    with pytest.raises(
        LLMError, match=r"anthropic:claude-haiku-4-5 at http://127\.0\.0\.1:\d+: HTTP 400.*max_tokens too large"
    ) as err:
        llm.chat([{"role": "user", "content": "hi"}])
    assert err.value.status == 400
    assert len(server.requests) == 1  # a client error is not retried


def test_anthropic_without_key_is_a_missing_resource(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingResource, match="ANTHROPIC_API_KEY is not set"):
        AnthropicLLM("claude-haiku-4-5")


def test_unreachable_server_is_an_llm_error_after_bounded_retries(keys):
    llm = AnthropicLLM("claude-haiku-4-5", base_url=closed_port_url(), max_attempts=2, retry_wait_s=0.01)
    with pytest.raises(LLMError, match="APIConnectionError after 2 attempts") as err:
        llm.chat([{"role": "user", "content": "hi"}])
    assert err.value.status is None


# --- OpenAI-compatible ------------------------------------------------------------------------


def openai_completion(message: dict, finish="stop", model="gpt-4o-mini-2024-07-18", usage=(2000, 100)):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def test_openai_compatible_tool_calls_round_trip(server, keys):
    server.script.append(
        raw(
            openai_completion(
                {
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                        }
                    ],
                },
                finish="tool_calls",
            )
        )
    )
    llm = from_spec(f"openai:gpt-4o-mini@{server.url}/v1")
    reply = llm.chat(HISTORY, system="You are terse.", tools=[WEATHER_TOOL], max_tokens=32)

    [req] = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer not-needed"  # local server, no OPENAI_API_KEY
    body = req.body
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER_TOOL["description"],
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"temp_c": 4}'},
    ]

    assert reply.tool_calls == [ToolCall("call_9", "get_weather", {"city": "Rome"})]
    assert reply.text == "" and reply.stop_reason == "tool_use" and reply.provider == "openai"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (2000, 100)
    # the dated snapshot is priced as gpt-4o-mini ($0.15 / $0.60), not as gpt-4o
    assert reply.cost_usd == pytest.approx(2000 * 0.15 / 1e6 + 100 * 0.6 / 1e6)


def test_openai_json_schema_uses_response_format(server, keys):
    server.script.append(raw(openai_completion({"content": '{"verdict": "pass"}'}, model="qwen2.5-7b-instruct")))
    llm = OpenAILLM("qwen2.5-7b-instruct", base_url=f"{server.url}/v1")
    reply = llm.chat([{"role": "user", "content": "Judge."}], json_schema=VERDICT_SCHEMA)
    assert server.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": VERDICT_SCHEMA},
    }
    assert reply.json() == {"verdict": "pass"} and reply.stop_reason == "end_turn"
    assert reply.cost_usd is None  # a self-hosted model has no list price: no guess


def test_openai_server_without_structured_output_falls_back_to_an_instruction(server, keys):
    server.script.append(
        raw({"error": {"message": "response_format is not supported", "type": "invalid_request_error"}}, status=400)
    )
    server.script.append(raw(openai_completion({"content": 'Sure: {"verdict": "fail"}'})))
    server.script.append(raw(openai_completion({"content": '{"verdict": "pass"}'})))
    llm = OpenAILLM("llama3", base_url=f"{server.url}/v1", retry_wait_s=0.01)
    ask = [{"role": "user", "content": "Judge."}]
    assert llm.chat(ask, system="Be fair.", json_schema=VERDICT_SCHEMA).json() == {"verdict": "fail"}
    assert llm.chat(ask, json_schema=VERDICT_SCHEMA).json() == {"verdict": "pass"}
    first, fallback, later = (r.body for r in server.requests)
    assert "response_format" in first
    assert "response_format" not in fallback and "response_format" not in later  # remembered
    assert fallback["messages"][0] == {"role": "system", "content": "Be fair.\n\n" + json_instruction(VERDICT_SCHEMA)}
    assert later["messages"][0] == {"role": "system", "content": json_instruction(VERDICT_SCHEMA)}


def test_openai_retries_429_and_gives_up_after_bounded_5xx(server, keys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai-key")
    server.script.append(raw({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "0"}))
    server.script.append(raw(openai_completion({"content": "ok"})))
    for _ in range(3):
        server.script.append(raw({"error": {"message": "upstream down"}}, status=503))
    llm = OpenAILLM("gpt-4o", base_url=f"{server.url}/v1", retry_wait_s=0.01)
    assert llm.chat([{"role": "user", "content": "hi"}]).text == "ok"
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-openai-key"
    with pytest.raises(LLMError, match=r"openai:gpt-4o at .*: HTTP 503 after 3 attempts") as err:
        llm.chat([{"role": "user", "content": "hi"}])
    assert err.value.status == 503 and len(server.requests) == 5


def test_openai_api_without_base_url_sends_max_completion_tokens(server, keys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai-key")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")  # the SDK's own override of api.openai.com
    server.script.append(raw(openai_completion({"content": "hi"}, model="gpt-4o-2024-08-06")))
    server.script.append(raw({"error": {"message": "bad key"}}, status=401))
    llm = OpenAILLM("gpt-4o")  # not from_spec: its per-process cache would outlive this server
    assert llm.chat([{"role": "user", "content": "hi"}], max_tokens=16).text == "hi"
    body = server.requests[0].body
    assert body["max_completion_tokens"] == 16 and "max_tokens" not in body  # newer OpenAI models need it
    with pytest.raises(LLMError, match=rf"openai:gpt-4o at {server.url}/v1/?: HTTP 401: .*bad key"):
        llm.chat([{"role": "user", "content": "hi"}])


def test_openai_tool_arguments_that_are_not_json_are_kept_raw_and_named(server, keys):
    server.script.append(
        raw(
            openai_completion(
                {
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city: Rome"},
                        },
                        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "[1]"}},
                    ],
                },
                finish="tool_calls",
            )
        )
    )
    llm = OpenAILLM("llama3", base_url=f"{server.url}/v1")
    reply = llm.chat([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL])
    bad, not_object = reply.tool_calls
    assert (bad.name, bad.arguments, bad.raw_arguments) == ("get_weather", {}, "{city: Rome")
    assert "not a JSON object: '{city: Rome'" in bad.arguments_error
    assert not_object.raw_arguments == "[1]" and not_object.arguments_error


def test_openai_without_base_url_needs_a_key(keys):
    with pytest.raises(MissingResource, match="OPENAI_API_KEY is not set"):
        OpenAILLM("gpt-4o")


def test_openai_tool_choice_parallel_and_stop_map_to_native_fields(server, keys):
    calc = {"name": "calc", "description": "Arithmetic.", "input_schema": {"type": "object", "properties": {}}}
    for _ in range(4):
        server.script.append(raw(openai_completion({"content": "ok"})))
    llm = OpenAILLM("qwen2.5-7b-instruct", base_url=f"{server.url}/v1")
    ask = [{"role": "user", "content": "hi"}]
    llm.chat(ask, tools=[WEATHER_TOOL, calc], tool_choice="required", parallel_tool_calls=False, stop=["\n\n"])
    llm.chat(ask, tools=[WEATHER_TOOL, calc], tool_choice={"name": "calc"})
    llm.chat(ask, tools=[WEATHER_TOOL], tool_choice="none")
    llm.chat(ask, tools=[WEATHER_TOOL])  # auto: the API default, not sent
    required, named, none, auto = (r.body for r in server.requests)
    assert required["tool_choice"] == "required" and required["parallel_tool_calls"] is False
    assert required["stop"] == ["\n\n"]
    assert named["tool_choice"] == {"type": "function", "function": {"name": "calc"}}
    assert "parallel_tool_calls" not in named and "stop" not in named
    assert none["tool_choice"] == "none"
    assert "tool_choice" not in auto


def test_anthropic_tool_choice_parallel_and_stop_map_to_native_fields(server, keys):
    for _ in range(4):
        server.script.append(raw(anthropic_message([{"type": "text", "text": "ok"}])))
    llm = AnthropicLLM("claude-haiku-4-5", base_url=server.url)
    ask = [{"role": "user", "content": "hi"}]
    llm.chat(ask, tools=[WEATHER_TOOL], tool_choice="required", stop=["END"])
    llm.chat(ask, tools=[WEATHER_TOOL], tool_choice={"name": "get_weather"}, parallel_tool_calls=False)
    llm.chat(ask, tools=[WEATHER_TOOL], tool_choice="none")
    llm.chat(ask, tools=[WEATHER_TOOL], parallel_tool_calls=False)
    required, named, none, auto_single = (r.body for r in server.requests)
    assert required["tool_choice"] == {"type": "any"} and required["stop_sequences"] == ["END"]
    assert named["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert none["tool_choice"] == {"type": "none"}
    assert auto_single["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    "choice, tools, message",
    [
        ("sometimes", [WEATHER_TOOL], "expected one of auto, required, none"),
        ("required", None, "needs at least one tool"),
        ({"name": "delete_db"}, [WEATHER_TOOL], "names tool 'delete_db', which is not among the tools given"),
        ({"type": "function"}, [WEATHER_TOOL], "needs a tool name"),
    ],
)
def test_bad_tool_choice_is_refused_before_any_request(server, keys, choice, tools, message):
    llm = OpenAILLM("m", base_url=f"{server.url}/v1")
    with pytest.raises(ValueError, match=message):
        llm.chat([{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice)
    assert server.requests == []


# --- specs, prices, JSON replies --------------------------------------------------------------


def test_from_spec_rejects_bad_specs_and_caches():
    with pytest.raises(ConfigError, match="expected provider:model"):
        from_spec("smollm2")
    with pytest.raises(ConfigError, match="unknown provider 'mistral'"):
        from_spec("mistral:large")
    local = from_spec("local:smollm2-135m-instruct")  # constructing loads nothing
    assert isinstance(local, LocalLLM) and local is from_spec("local:smollm2-135m-instruct")
    assert local.spec == "local:smollm2-135m-instruct"


def test_price_table():
    assert cost_usd("anthropic", "claude-sonnet-4-5", 1_000_000, 1_000_000) == 18.0
    assert cost_usd("anthropic", "claude-sonnet-4-5-20250929", 2_000, 0) == pytest.approx(0.006)
    assert cost_usd("openai", "gpt-4o-2024-08-06", 0, 1_000_000) == 10.0
    assert cost_usd("openai", "gpt-4o-mini", 1_000_000, 0) == 0.15
    assert cost_usd("openai", "gpt-4omega", 10, 10) is None  # a family prefix needs the dash
    assert cost_usd("openai", "llama3", 10, 10) is None
    assert cost_usd("local", "smollm2-135m-instruct", 10_000, 10_000) == 0.0


def test_parse_json_reply_tolerates_fences_and_prose():
    assert parse_json_reply('{"a": 1}') == {"a": 1}
    assert parse_json_reply('Here:\n```json\n{"a": [1, 2]}\n```\nDone.') == {"a": [1, 2]}
    assert parse_json_reply('The answer is {"a": {"b": 2}} as asked.') == {"a": {"b": 2}}
    with pytest.raises(JSONReplyError, match="reply is not JSON: 'no json here'"):
        parse_json_reply("no json here")


# --- the embedded local model, on both engines -----------------------------------------------------

ENGINES = ["llama.cpp", "transformers"]


@pytest.fixture(scope="module", params=ENGINES)
def smollm(request):
    return LocalLLM("smollm2-135m-instruct", engine=request.param)


@pytest.mark.slow
def test_local_model_generates_text(smollm):
    reply = smollm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=8)
    assert reply.text.strip() and reply.provider == "local"
    assert reply.usage.input_tokens > 5 and 1 <= reply.usage.output_tokens <= 8
    assert reply.cost_usd == 0.0 and reply.latency_s > 0
    assert reply.stop_reason in ("end_turn", "max_tokens")
    info = smollm.describe()
    assert info["n_params"] == 134_515_008
    assert info["engine"].startswith(smollm.engine_request)
    # llama.cpp runs the shipped Q4_1 weights requantized to Q8_0; transformers runs them dequantized
    assert info["dtype"] == {"llama.cpp": "Q8_0", "transformers": "float32"}[smollm.engine_request]


@pytest.mark.slow
def test_local_choice_probs(smollm):
    probs = smollm.choice_probs(
        [{"role": "user", "content": "Rate 'The cat sat on the mat.' for grammar, 1-5."}],
        choices=["1", "2", "3", "4", "5"],
        prefix="Score: ",
    )
    assert list(probs) == ["1", "2", "3", "4", "5"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and all(p > 0 for p in probs.values())
    with pytest.raises(ValueError, match="choices must be single tokens"):
        smollm.choice_probs([{"role": "user", "content": "hi"}], choices=["excellent"])


@pytest.mark.slow
def test_prefix_cached_choice_probs_equal_a_full_forward_pass(smollm):
    """The prefix KV cache gives the same probabilities for a fraction of the tokens (transformers: up
    to float rounding; llama.cpp: up to its batch-size-dependent activation quantization)."""
    smollm.reset_prefix_cache()
    tolerance = {"llama.cpp": 2e-2, "transformers": 1e-4}[smollm.engine_request]
    system = "You are a strict grader. " * 5
    asks = [
        ("Q: what is 2+2? A: 4. Rate accuracy.", "accuracy score: "),
        ("Q: what is 2+2? A: 4. Rate depth.", "depth score: "),  # shares a prefix: copy + extend
        ("Q: what is GQA? A: a benchmark. Rate accuracy.", "accuracy score: "),
        ("Q: what is GQA? A: a benchmark. Rate accuracy.", "accuracy score: "),
    ]  # identical: recompute last token
    for text, prefix in asks:
        msgs = [{"role": "user", "content": text}]
        plain = smollm.choice_probs(msgs, list("12345"), system=system, prefix=prefix, use_prefix_cache=False)
        fast = smollm.choice_probs(msgs, list("12345"), system=system, prefix=prefix)
        assert fast == pytest.approx(plain, abs=tolerance)
    stats = smollm.prefix_cache_stats
    assert stats["computed"] < stats["requested"] / 2


@pytest.mark.slow
def test_an_agent_conversation_reuses_its_prefix_and_decodes_the_same(smollm):
    """Step 2 of a conversation resends step 1: only the new turn runs, and greedy output is unchanged."""
    smollm.reset_prefix_cache()
    history = [{"role": "user", "content": "Name a colour."}]
    first = smollm.chat(history, max_tokens=12)
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Name another one."}]
    before = smollm.prefix_cache_stats["computed"]
    second = smollm.chat(history, max_tokens=12)
    assert smollm.prefix_cache_stats["computed"] - before < second.usage.input_tokens / 2
    smollm.reset_prefix_cache()
    assert smollm.chat(history, max_tokens=12).text == second.text  # from scratch: the same reply


@pytest.mark.slow
def test_transformers_choice_probs_project_only_the_last_position_and_match_a_full_forward():
    """The vocabulary projection runs on the one position read (not on every prompt token), on both
    the plain and the prefix-cached path, and gives the probabilities of a full-logits forward."""
    import torch  # noqa: PLC0415 (heavy: torch loads on first use)

    llm = LocalLLM("smollm2-135m-instruct", engine="transformers")
    model, tok = llm.engine.model, llm.tokenizer
    msgs = [{"role": "user", "content": "Context: the sky is blue.\n\nIs the sky blue? Answer Yes or No."}]
    ids = tok(
        tok.apply_chat_template(chat_turns(msgs), add_generation_prompt=True, tokenize=False) + "Verdict:"
    ).input_ids
    with torch.inference_mode():
        full = model(torch.tensor([ids])).logits[0, -1]  # every position projected
    choice = [tok.encode(c, add_special_tokens=False)[0] for c in (" Yes", " No")]
    expected = torch.softmax(full[choice], dim=-1).tolist()
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[1]))
    try:
        llm.reset_prefix_cache()
        plain = llm.choice_probs(msgs, [" Yes", " No"], prefix="Verdict:", use_prefix_cache=False)
        cached = llm.choice_probs(msgs, [" Yes", " No"], prefix="Verdict:")
    finally:
        hook.remove()
    assert rows == [1, 1] and len(ids) > 20
    for probs in (plain, cached):
        assert [probs[" Yes"], probs[" No"]] == pytest.approx(expected, abs=1e-5)
