"""`lab serve` under hostile requests, sent with a raw HTTP client as an attacker would: each is refused
with a 4xx naming the problem, in the caller's wire format and without an internal path, before it
holds the model, and the server answers a normal request afterwards. Then a soak: mixed good and bad
requests from 8 clients leave no 5xx and a healthy server.

The server is the session's ``lab_server`` (the embedded SmolLM2, as in test_serve.py); good requests
ask for one token, so the file stays cheap.
"""

import json
import os
import re
import threading
from collections import Counter

import httpx
import pytest

from lab.llm.constrained import MAX_SCHEMA_DEPTH, MAX_SCHEMA_VALUES
from lab.llm.local import LocalLLM
from lab.serve.background import serving
from lab.serve.limits import MAX_BODY_BYTES

MODEL = "smollm2-135m-instruct"
INTERNAL_PATH = re.compile(r"/site-packages/|[\w/-]+\.(py|cc|cpp|h)\b")


@pytest.fixture
def http(lab_server):
    with httpx.Client(base_url=lab_server.url, headers={"x-api-key": lab_server.api_key}, timeout=120) as client:
        yield client


def chat(content="ping", **extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}


def message(content="ping", **extra):
    return {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": content}], **extra}


def reply_schema(schema):
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}}


def nested(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def refusal(r: httpx.Response, status: int, *fragments: str) -> str:
    """The error message of a refusal in either wire format, checked: status, each fragment, no internal path."""
    assert r.status_code == status, r.text
    body = r.json()
    if r.request.url.path == "/v1/messages":
        assert body["type"] == "error" and body["request_id"].startswith("req_"), body
    text = body["error"]["message"]
    for fragment in fragments:
        assert fragment in text, text
    assert not INTERNAL_PATH.search(r.text) and "Traceback" not in r.text, r.text
    return text


def assert_serves(http):
    r = http.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1, r.text
    assert http.get("/health").json()["waiting_or_running"] == 0


def test_a_chunked_body_past_the_limit_is_413_before_it_is_parsed(http):
    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 2**20 + 2):
            yield b"a" * 2**20
        yield b'"}]}'

    r = http.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.json()["error"]["code"] == "request_too_large"
    refusal(r, 413, f"at most {MAX_BODY_BYTES} bytes")
    r = http.post("/v1/messages", content=body(), headers={"content-type": "application/json"})
    assert r.json()["error"]["type"] == "request_too_large"
    assert_serves(http)


def test_a_deeply_nested_schema_is_400_naming_the_depth_limit(http):
    deep = nested(240)
    limit = f"deeper than {MAX_SCHEMA_DEPTH} levels"
    r = http.post("/v1/chat/completions", json=chat(**reply_schema(deep)))
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"
    refusal(r, 400, limit)
    tool = {"type": "function", "function": {"name": "deep", "parameters": deep}}
    refusal(
        http.post("/v1/chat/completions", json=chat(tools=[tool], tool_choice="required")),
        400,
        "tools.0.function.parameters",
        limit,
    )
    refusal(
        http.post("/v1/messages", json=message(output_config={"format": {"type": "json_schema", "schema": deep}})),
        400,
        "output_config.format.schema",
        limit,
    )
    refusal(
        http.post("/v1/messages", json=message(tools=[{"name": "deep", "input_schema": deep}])),
        400,
        "tools.0.input_schema",
        limit,
    )
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(MAX_SCHEMA_VALUES // 2)}}
    refusal(
        http.post("/v1/chat/completions", json=chat(**reply_schema(wide))),
        400,
        f"more than {MAX_SCHEMA_VALUES} JSON values",
    )
    assert_serves(http)


def test_a_grammar_slower_than_the_compile_timeout_is_400_naming_the_limit(http):
    llm = LocalLLM(MODEL)  # its own server, with a timeout no compile meets: a fresh schema always times out
    with serving(llm, grammar_timeout_s=0, embedders=()) as url:
        schema = {"type": "object", "properties": {"slow": {"type": "integer"}}, "required": ["slow"]}
        r = httpx.post(f"{url}/v1/chat/completions", json=chat(**reply_schema(schema)), timeout=120)
        refusal(r, 400, "did not compile within 0 s", "json_schema")
        assert httpx.get(f"{url}/health").json()["waiting_or_running"] == 0  # it never took the model
        assert httpx.post(f"{url}/v1/chat/completions", json=chat(), timeout=120).status_code == 200
    assert_serves(http)


SURROGATE = "x\ud800y"  # a lone surrogate: JSON carries it (as "x\\ud800y"), but it is not Unicode text


def raw(body) -> bytes:
    """The body as JSON, lone surrogates escaped as JSON allows (httpx's ``json=`` refuses to encode them)."""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


SURROGATE_REQUESTS = [
    ("/v1/chat/completions", chat(SURROGATE), "messages.0.content"),
    ("/v1/chat/completions", {**chat(SURROGATE), "stream": True}, "messages.0.content"),
    (
        "/v1/chat/completions",
        chat(tools=[{"type": "function", "function": {"name": "f", "description": SURROGATE}}]),
        "tools.0.function.description",
    ),
    ("/v1/messages", message(SURROGATE), "messages.0.content"),
    ("/v1/messages", {**message([{"type": "text", "text": SURROGATE}]), "stream": True}, "messages.0.content.0.text"),
    ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": ["fine", SURROGATE]}, "input.1"),
]


@pytest.mark.parametrize("path,body,field", SURROGATE_REQUESTS, ids=[f"{p}:{f}" for p, _, f in SURROGATE_REQUESTS])
def test_a_lone_surrogate_is_400_naming_the_field(http, path, body, field):
    assert b"\\ud800" in raw(body)
    r = http.post(path, content=raw(body), headers={"content-type": "application/json"})
    refusal(r, 400, field, "lone UTF-16 surrogate")
    assert_serves(http)


def test_a_prompt_of_megabytes_is_refused_before_it_is_tokenized(http):
    huge = "word " * 1_000_000  # 5 MB: under the body limit, far past what 8192 tokens can hold
    r = http.post("/v1/chat/completions", json=chat(huge))
    assert r.json()["error"]["code"] == "context_length_exceeded"
    refusal(r, 413, "the prompt is 5000000 characters", "8192 tokens")
    r = http.post("/v1/messages", json={**message(huge), "stream": True})
    refusal(r, 413, "characters")
    assert_serves(http)


def test_grammar_errors_name_the_problem_without_internal_paths(http):
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}, "required": ["a"]}
    refusal(
        http.post("/v1/chat/completions", json=chat(**reply_schema(dangling))),
        400,
        "cannot be compiled to a grammar",
        "nowhere",
    )
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"code": {"type": "string", "pattern": "(("}}},
        },
    }
    refusal(
        http.post("/v1/chat/completions", json=chat(tools=[tool], tool_choice="required")),
        400,
        "tools cannot be compiled to a grammar",
        "Regex",
    )
    assert_serves(http)


def obj(**properties):
    return {"type": "object", "properties": properties}


CANNOT_ENFORCE = [
    ("not", obj(age={"type": "integer", "not": {"const": 3}}), "properties.age.not"),
    (
        "if",
        {**obj(a={"type": "integer"}, b={"type": "integer"}), "if": {"required": ["a"]}, "then": {"required": ["b"]}},
        "at if",
    ),
    (
        "uniqueItems",
        obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        "properties.tags.uniqueItems",
    ),
    (
        "contains",
        obj(ids={"type": "array", "items": {"type": "integer"}, "contains": {"const": 7}}),
        "properties.ids.contains",
    ),
    (
        "dependentRequired",
        {**obj(a={"type": "integer"}, b={"type": "integer"}), "dependentRequired": {"a": ["b"]}},
        "at dependentRequired",
    ),
    (
        "allOf",
        obj(n={"allOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 9}]}),
        "properties.n.allOf",
    ),
    ("format", obj(mail={"type": "string", "format": "idn-email"}), "properties.mail.format"),
    ("$ref", obj(x={"$ref": "https://example.com/schema.json"}), "properties.x.$ref"),
    ("maxLength", obj(code={"type": "string", "pattern": "^[a-z]+$", "maxLength": 4}), "properties.code.maxLength"),
    ("required", {**obj(a={"type": "integer"}), "required": ["b"]}, "at required"),
]


@pytest.mark.parametrize("keyword,schema,where", CANNOT_ENFORCE, ids=[k for k, _, _ in CANNOT_ENFORCE])
def test_a_keyword_the_grammar_cannot_enforce_is_400_naming_it_and_where(http, keyword, schema, where):
    r = http.post("/v1/chat/completions", json=chat(**reply_schema(schema)))
    refusal(r, 400, "response_format.json_schema.schema", f"keyword {keyword!r}", where, "not enforced")
    r = http.post(
        "/v1/messages", json=message(tools=[{"name": "f", "input_schema": schema}], tool_choice={"type": "any"})
    )
    refusal(r, 400, "tools.0.input_schema", f"keyword {keyword!r}", where)
    assert_serves(http)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:  # the server runs in this process (a uvicorn thread)
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_soak_of_mixed_requests_from_8_clients_leaves_no_5xx_and_a_healthy_server(lab_server, http):
    deep = nested(100)
    huge = "word " * 1_000_000
    kinds = [  # (path, body or raw bytes, expected status)
        ("/v1/chat/completions", chat(), 200),
        ("/v1/messages", message(), 200),
        ("/v1/chat/completions", chat(SURROGATE), 400),
        ("/v1/chat/completions", chat(**reply_schema(deep)), 400),
        ("/v1/messages", message(tools=[{"name": "f", "input_schema": CANNOT_ENFORCE[0][1]}]), 400),
        ("/v1/chat/completions", b'{"model": "x", "messages": [', 400),
        ("/v1/chat/completions", {**chat(), "model": "gpt-4o"}, 404),
        ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": [SURROGATE]}, 400),
    ]
    rare = [("/v1/chat/completions", chat(huge), 413), ("/v1/chat/completions", b"[" * (MAX_BODY_BYTES + 1), 413)]
    plan = [kinds[i % len(kinds)] for i in range(192)] + rare * 4
    statuses: Counter = Counter()
    wrong: list[str] = []
    lock = threading.Lock()
    assert_serves(http)  # the model is loaded before the baseline
    before = rss_mb()

    def client(jobs):
        with httpx.Client(
            base_url=lab_server.url,
            headers={"x-api-key": lab_server.api_key, "content-type": "application/json"},
            timeout=120,
        ) as c:
            for path, body, expected in jobs:
                r = c.post(path, content=raw(body))
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code != expected:
                        wrong.append(f"{path} -> {r.status_code} (expected {expected}): {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(plan[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(statuses.values()) == len(plan) == 200
    assert not [s for s in statuses if s >= 500], statuses
    assert not wrong, wrong[:5]  # 429s too: 8 clients never fill 4 running + 8 waiting
    assert_serves(http)
    assert rss_mb() - before < 300, f"the server grew from {before:.0f} MB to {rss_mb():.0f} MB"
