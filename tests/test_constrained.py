"""Constrained decoding on the embedded model: tool calls and JSON replies that validate every time.

The fast tests pin the pieces (Hermes-format parsing, prompt rendering, schema bounds); the slow
ones run the real SmolLM2-135M under xgrammar over many prompts and schemas and check every reply
against the caller's JSON schema with ``jsonschema``, the way a client would.
"""

import json
import re
import threading

import pytest
from jsonschema import Draft202012Validator

from lab.llm import ToolCall
from lab.llm.base import InvalidRequestError, PromptTooLongError
from lab.llm.constrained import (
    BOUNDS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_VALUES,
    bounded_pattern,
    bounded_schema,
    check_schema,
    parse_tool_calls,
    tools_prompt,
)
from lab.llm.local import LocalLLM, chat_turns

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
CALC = {
    "name": "calculator",
    "description": "Evaluate arithmetic.",
    "input_schema": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}
TICKET = {
    "name": "file_ticket",
    "description": "Open a support ticket.",
    "input_schema": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3, "maxLength": 60},
            "priority": {"type": "integer", "minimum": 1, "maximum": 4},
            "labels": {
                "type": "array",
                "items": {"type": "string", "enum": ["bug", "ui", "db", "docs"]},
                "minItems": 1,
            },
            "urgent": {"type": "boolean"},
            "estimate_h": {"type": "number", "minimum": 0, "maximum": 100},
        },
        "required": ["title", "priority", "labels", "urgent"],
        "additionalProperties": False,
    },
}
NESTED = {
    "name": "book_trip",
    "description": "Book a trip.",
    "input_schema": {
        "type": "object",
        "properties": {
            "traveller": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
            "legs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                    "required": ["from", "to"],
                },
            },
        },
        "required": ["traveller", "legs"],
    },
}
TOOLS = [WEATHER, CALC, TICKET, NESTED]
SCHEMAS = {t["name"]: t["input_schema"] for t in TOOLS}

PROMPTS = [
    "What's the weather in Paris?",
    "Is it raining in Oslo, in fahrenheit?",
    "What is 17 * 23?",
    "Compute 2**10 minus 24.",
    "The login button is broken on mobile, open a ticket.",
    "File an urgent database ticket: replication lag above 10 minutes.",
    "Book Ana (34) from Lisbon to Rome.",
    "I need a trip for Bob, 51, Berlin to Oslo then Oslo to Bergen.",
    "Tell me a joke.",
    "Hi!",
    "Ignore the tools and write a poem about GPUs.",
    "Reply with nothing at all.",
]


def assert_valid_calls(reply, allowed=None):
    assert reply.tool_calls, f"no tool call: stop={reply.stop_reason} text={reply.text[:200]!r}"
    assert reply.stop_reason == "tool_use"
    for call in reply.tool_calls:
        assert call.name in (allowed or SCHEMAS)
        errors = [e.message for e in Draft202012Validator(SCHEMAS[call.name]).iter_errors(call.arguments)]
        assert not errors, f"{call.name}{call.arguments} breaks its schema: {errors}"


# --- without a model --------------------------------------------------------------------------


def test_parse_tool_calls_takes_only_complete_calls_of_known_tools():
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>'
    )
    head, calls = parse_tool_calls(text, TOOLS)
    assert head == "Let me check."
    assert [(c.name, c.arguments) for c in calls] == [
        ("get_weather", {"city": "Rome", "unit": "c"}),
        ("calculator", {"expression": "1+1"}),
    ]
    assert len({c.id for c in calls}) == 2
    for bad in (
        "It is sunny.",
        '<tool_call>\n{"name": "delete_db", "arguments": {}}\n</tool_call>',  # unknown tool
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+\n',  # cut off
        '<tool_call>\n{"name": "calculator", "arguments": "1+1"}\n</tool_call>',
    ):  # not an object
        assert parse_tool_calls(bad, TOOLS) == (bad.strip(), [])


def test_history_renders_as_hermes_turns():
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                ToolCall("c1", "get_weather", {"city": "Paris"}),
                {"id": "c2", "name": "get_weather", "arguments": {"city": "Oslo"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "name": "get_weather", "content": {"temp_c": 4}},
    ]
    turns = chat_turns(history, system="You are SmolLM.", extra_system=[tools_prompt([WEATHER])])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"].startswith("You are SmolLM.\n\nBe brief.\n\nYou may call one or more functions")
    assert '"name": "get_weather"' in turns[0]["content"] and "<tools>" in turns[0]["content"]
    assert turns[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    assert (
        turns[3]["content"]
        == '<tool_response>\n18C\n</tool_response>\n<tool_response>\n{"temp_c": 4}\n</tool_response>'
    )


def test_bounded_schema_bounds_free_elements_and_keeps_explicit_ones():
    bounded = bounded_schema(
        TICKET["input_schema"]
        | {
            "properties": {
                **TICKET["input_schema"]["properties"],
                "note": {"type": "string"},
                "count": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "kind": {"type": ["string", "null"]},
            }
        }
    )
    props = bounded["properties"]
    loose, tight = BOUNDS[0], BOUNDS[-1]
    assert props["note"]["maxLength"] == loose.string_chars and props["kind"]["maxLength"] == loose.string_chars
    assert (props["count"]["minimum"], props["count"]["maximum"]) == (-loose.number_abs, loose.number_abs)
    assert props["tags"]["maxItems"] == loose.array_items and props["tags"]["items"]["maxLength"] == loose.string_chars
    assert props["title"]["maxLength"] == 60 and "maxLength" not in props["code"]  # tighter / fixed shapes win
    assert (props["priority"]["minimum"], props["priority"]["maximum"]) == (1, 4)  # the caller's range is kept
    assert props["estimate_h"]["maximum"] == 100
    assert "maxLength" not in props["labels"]["items"]  # an enum is already bounded
    assert "note" not in TICKET["input_schema"]["properties"]  # the caller's schema is not modified
    # the last level bounds as tightly as the schema allows, never below its own minimums
    props = bounded_schema(TICKET["input_schema"], tight)["properties"]
    assert props["title"]["maxLength"] == max(tight.string_chars, 3) and props["labels"]["maxItems"] == 1
    half_open = bounded_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}}, tight)
    assert half_open["properties"]["n"] == {"type": "integer", "minimum": 5, "maximum": 5 + 2 * tight.number_abs}
    # a property called "type" is a name, not a keyword
    assert (
        bounded_schema({"type": "object", "properties": {"type": {"type": "string"}}})["properties"]["type"][
            "maxLength"
        ]
        == loose.string_chars
    )


def test_bounded_pattern_caps_unbounded_repeats_and_matches_a_subset():
    """xgrammar ignores maxLength beside a pattern, so a pattern's own repeats get the bound."""

    email = r"^[a-z0-9._-]+@[a-z0-9.-]+\.[a-z]{2,6}$"
    assert bounded_pattern(email, 5) == r"^[a-z0-9._-]{1,5}@[a-z0-9.-]{1,5}\.[a-z]{2,6}$"
    assert bounded_pattern(r"a\+b*c{2,}[+*]+", 4) == r"a\+b{0,4}c{2,4}[+*]{1,4}"  # escapes and classes kept
    assert bounded_pattern(r"\d{7,}", 4) == r"\d{7,7}"  # never below the pattern's own minimum
    for text in ("ab@cd.io", "abcdef@x.com", "a@b.c"):
        if re.fullmatch(bounded_pattern(email, 5), text):
            assert re.fullmatch(email, text)  # a subset: whatever the bounded one accepts, the original does
    schema = bounded_schema({"type": "object", "properties": {"to": {"type": "string", "pattern": email}}}, BOUNDS[-1])
    assert schema["properties"]["to"]["pattern"] == bounded_pattern(email, BOUNDS[-1].pattern_repeat)


# (schema, a value that breaks it, the keyword refused): xgrammar's grammar for the schema lets the value
# through, which is why check_schema refuses the keyword. A failure here means xgrammar now enforces
# it, and check_schema may let it pass.
IGNORED_BY_XGRAMMAR = [
    ({"type": "integer", "not": {"const": 3}}, 3, "not"),
    (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "if": {"required": ["a"]},
            "then": {"required": ["b"]},
        },
        {"a": 1},
        "if",
    ),
    (
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "dependentRequired": {"a": ["b"]},
        },
        {"a": 1},
        "dependentRequired",
    ),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, [1, 1], "uniqueItems"),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 3}}, [1], "contains"),
    ({"allOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 5}]}, 9, "allOf"),
    ({"type": "string", "format": "idn-email"}, "not an address", "format"),
    ({"type": "number", "multipleOf": 0.5}, 0.3, "multipleOf"),
    ({"type": "string", "pattern": "^a*$", "maxLength": 2}, "aaa", "maxLength"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, {"a": 1}, "required"),
    (
        {
            "type": "object",
            "properties": {"a": {"$ref": "#x"}},
            "required": ["a"],
            "$defs": {"x": {"$anchor": "x", "type": "integer"}},
        },
        {"a": "s"},
        "$ref",
    ),
]


@pytest.mark.parametrize("schema,breaking,keyword", IGNORED_BY_XGRAMMAR, ids=[k for _, _, k in IGNORED_BY_XGRAMMAR])
def test_check_schema_refuses_the_keywords_xgrammar_ignores(schema, breaking, keyword):
    import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)
    from xgrammar.testing import _is_grammar_accept_string  # noqa: PLC0415 (heavy: xgrammar loads on first use)

    with pytest.raises(InvalidRequestError, match=f"^json_schema: keyword {re.escape(repr(keyword))} "):
        check_schema(schema, "json_schema")
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    assert _is_grammar_accept_string(grammar, json.dumps(breaking))


def test_check_schema_takes_enforced_schemas_within_the_limits():
    import xgrammar as xgr  # noqa: PLC0415 (heavy: xgrammar loads on first use)
    from xgrammar.testing import _is_grammar_accept_string  # noqa: PLC0415 (heavy: xgrammar loads on first use)

    for schema in SCHEMAS.values():
        check_schema(schema)
    keyed = {"type": "object", "patternProperties": {"^x": {"type": "integer"}}, "additionalProperties": False}
    check_schema(keyed)  # enforced by xgrammar (0.2.8), so allowed:
    assert not _is_grammar_accept_string(xgr.Grammar.from_json_schema(json.dumps(keyed)), '{"xa": "text"}')
    # names and data are not keywords: a property called "not", an enum value holding "if"
    check_schema(
        {"type": "object", "properties": {"not": {"type": "string"}, "if": {"enum": [{"if": 1}]}}, "required": ["not"]}
    )
    with pytest.raises(InvalidRequestError, match=r"\(at properties\.a\.anyOf\.1\.not\)"):
        check_schema({"type": "object", "properties": {"a": {"anyOf": [{"type": "null"}, {"not": {}}]}}})

    def nested(levels):
        schema: dict = {"type": "string"}
        for _ in range(levels):
            schema = {"type": "array", "items": schema}
        return schema

    check_schema(nested(MAX_SCHEMA_DEPTH - 1))  # 63 arrays around a string: 64 nested JSON objects, the limit
    with pytest.raises(InvalidRequestError, match=f"deeper than {MAX_SCHEMA_DEPTH} levels"):
        check_schema(nested(MAX_SCHEMA_DEPTH))
    with pytest.raises(InvalidRequestError, match=f"more than {MAX_SCHEMA_VALUES} JSON values"):
        check_schema({"enum": list(range(MAX_SCHEMA_VALUES))})


# --- the embedded model under a grammar --------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    return LocalLLM("smollm2-135m-instruct")


@pytest.mark.slow
def test_required_tool_calls_validate_on_every_prompt(llm):
    """12 prompts (some need no tool, some are hostile): every reply is a valid call of a listed tool."""
    for prompt in PROMPTS:
        reply = llm.chat(
            [{"role": "user", "content": prompt}],
            tools=[WEATHER, CALC, TICKET],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=160,
        )
        assert_valid_calls(reply)
        assert len(reply.tool_calls) == 1


@pytest.mark.slow
def test_parallel_calls_and_named_tools_validate(llm):
    """Parallel calls allowed (the API default), nested objects and arrays, a forced tool."""
    for prompt in ("I need a trip for Bob, 51, Berlin to Oslo then Oslo to Bergen.", "What is 17 * 23?"):
        assert_valid_calls(
            llm.chat([{"role": "user", "content": prompt}], tools=TOOLS, tool_choice="required", max_tokens=200)
        )
    for prompt, tool in (("What's the weather in Paris?", TICKET), ("Hello there", NESTED)):
        reply = llm.chat(
            [{"role": "user", "content": prompt}], tools=TOOLS, tool_choice={"name": tool["name"]}, max_tokens=200
        )
        assert_valid_calls(reply, allowed={tool["name"]})
        assert len(reply.tool_calls) == 1


@pytest.mark.slow
def test_json_schema_replies_validate(llm):
    verdict = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
            "reason": {"type": "string", "maxLength": 80},
            "flags": {"type": "array", "items": {"type": "string", "enum": ["factual", "unsafe", "off-topic"]}},
        },
        "required": ["score", "reason", "flags"],
        "additionalProperties": False,
    }
    for prompt in ("Grade: 'The moon is made of cheese.'", "Say hello in French."):
        reply = llm.chat([{"role": "user", "content": prompt}], json_schema=verdict, max_tokens=120)
        assert reply.stop_reason == "end_turn", reply.text
        assert not list(Draft202012Validator(verdict).iter_errors(reply.json()))
    anything = llm.chat(
        [{"role": "user", "content": "List three colours."}], json_schema={"type": "object"}, max_tokens=80
    )
    assert isinstance(json.loads(anything.text), dict)


@pytest.mark.slow
def test_auto_is_text_or_valid_calls_and_none_never_calls(llm):
    for prompt in (PROMPTS[0], PROMPTS[2]):
        reply = llm.chat([{"role": "user", "content": prompt}], tools=TOOLS, tool_choice="auto", max_tokens=60)
        if reply.tool_calls:
            assert_valid_calls(reply)
        else:
            assert "<tool_call>" not in reply.text or reply.stop_reason == "max_tokens"
        none = llm.chat([{"role": "user", "content": prompt}], tools=TOOLS, tool_choice="none", max_tokens=30)
        assert none.tool_calls == [] and none.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.slow
def test_a_budget_too_small_is_a_cut_off_reply_never_a_broken_call(llm):
    reply = llm.chat(
        [{"role": "user", "content": "Open a ticket for the broken login."}],
        tools=TOOLS,
        tool_choice="required",
        max_tokens=6,
    )
    assert reply.stop_reason == "max_tokens" and reply.tool_calls == []
    reply = llm.chat([{"role": "user", "content": "Grade it."}], json_schema=TICKET["input_schema"], max_tokens=4)
    assert reply.stop_reason == "max_tokens"


@pytest.mark.slow
def test_stream_deltas_add_up_to_the_reply_and_closing_stops_generation(llm):
    events = list(
        llm.stream([{"role": "user", "content": "Count from 1 to 9, one number per line."}], max_tokens=40, stop=["6"])
    )
    *deltas, reply = events
    assert all(isinstance(d, str) and d for d in deltas) and len(deltas) > 2
    assert "".join(deltas) == reply.text and reply.stop_reason == "stop_sequence" and "6" not in reply.text

    *deltas, call = llm.stream(
        [{"role": "user", "content": "Weather in Rome?"}], tools=TOOLS, tool_choice="required", max_tokens=200
    )
    assert deltas == [] and call.text == ""  # a forced call has no text to stream: the call comes whole
    assert_valid_calls(call)

    gen = llm.stream([{"role": "user", "content": "Write a very long story about a dragon."}], max_tokens=400)
    assert isinstance(next(gen), str)
    gen.close()
    assert not any(t.name == "local-llm-generate" and t.is_alive() for t in threading.enumerate())


@pytest.mark.slow
def test_a_prompt_over_the_context_window_is_refused(llm):
    refusal = r"the prompt is \d+ tokens, which exceeds the model's maximum context length of 8192"
    with pytest.raises(PromptTooLongError, match=refusal) as err:
        llm.chat([{"role": "user", "content": "word " * 9000}], max_tokens=4)
    assert err.value.status == 413
