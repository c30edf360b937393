"""`lab serve`: the OpenAI and Anthropic wire formats exercised by the official SDKs (and LangChain)
against the embedded SmolLM2 and MiniLM, one server per session (``lab_server`` in conftest).

The server's own behaviour under load and failure (queue, 429, 5xx mapping, client disconnects)
is tested with real providers pointed at a scripted slow upstream, or with a tiny LLM subclass
where the model's output does not matter; the server code itself is never mocked.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anthropic
import httpx
import jsonschema
import numpy as np
import openai
import pytest

from lab.llm.base import LLM, ChatResponse, LLMError, Usage
from lab.llm.openai_client import OpenAILLM
from lab.llm.scripted_server import Reply, ScriptedServer, error, say
from lab.models import load_embedder
from lab.serve.app import MAX_BODY_BYTES, field_path
from lab.serve.background import serving

MODEL = "smollm2-135m-instruct"
AGENT_MODEL = "smollm2-135m-agent"  # the tool-tuned model, served beside the base

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}
TIMER = {
    "name": "set_timer",
    "description": "Start a countdown timer.",
    "parameters": {
        "type": "object",
        "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 120}, "label": {"type": "string"}},
        "required": ["minutes"],
    },
}
SEARCH = {
    "name": "search_docs",
    "description": "Search the documentation.",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["query", "top_k"],
        "additionalProperties": False,
    },
}
TOOLS = {t["name"]: t for t in (WEATHER, TIMER, SEARCH)}


def openai_tools(*tools):
    return [{"type": "function", "function": t} for t in tools]


def anthropic_tool(tool):
    return {"name": tool["name"], "description": tool["description"], "input_schema": tool["parameters"]}


def assert_valid_call(name: str, arguments: dict | str):
    """A tool call names an offered tool and its arguments validate against that tool's schema."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert name in TOOLS, name
    jsonschema.validate(args, TOOLS[name]["parameters"])
    return args


@pytest.fixture
def oai(lab_server):
    return openai.OpenAI(base_url=lab_server.openai_url, api_key=lab_server.api_key, max_retries=0, timeout=120)


@pytest.fixture
def claude(lab_server):
    return anthropic.Anthropic(base_url=lab_server.url, api_key=lab_server.api_key, max_retries=0, timeout=120)


@pytest.fixture
def http(lab_server):
    with httpx.Client(
        base_url=lab_server.url, headers={"authorization": f"Bearer {lab_server.api_key}"}, timeout=120
    ) as client:
        yield client


# --- a scripted upstream and tiny models for the server's own behaviour ---------------------------


class Upstream(ScriptedServer):
    """A scripted OpenAI-compatible server on 127.0.0.1: every chat request waits ``delay_s`` then answers
    ``status``; counts how many requests it served at once."""

    def __init__(self):
        super().__init__(self.answer)
        self.delay_s, self.status = 0.0, 200
        self.active = self.max_active = self.served = 0
        self._count = threading.Lock()

    def answer(self, body: dict) -> Reply:
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._count:
                self.active -= 1
                self.served += 1
        return say("pong", usage=(3, 1)) if self.status == 200 else error(self.status, f"upstream says {self.status}")

    def llm(self, timeout_s: float = 30.0) -> OpenAILLM:
        return OpenAILLM("upstream-model", base_url=self.openai_url, max_attempts=1, timeout_s=timeout_s)


@pytest.fixture
def upstream():
    with Upstream() as up:
        yield up


class Broken(LLM):
    """A model whose every call fails with an internal error (a bug, from the server's view)."""

    provider = "test"

    def chat(self, messages, **kwargs):
        raise RuntimeError("secret internals at /srv/weights")


class Ticker(LLM):
    """A model that streams a tick every 20 ms (400 in all) and records when its stream is closed."""

    provider = "test"

    def __init__(self):
        super().__init__("ticker")
        self.closed = threading.Event()
        self.produced = 0

    def chat(self, messages, **kwargs):
        return ChatResponse("done", self.provider, self.model, usage=Usage(1, 1), stop_reason="end_turn")

    def stream(self, messages, **kwargs):
        try:
            for i in range(400):
                time.sleep(0.02)
                self.produced += 1
                yield f"t{i} "
            yield self.chat(messages)
        finally:
            self.closed.set()


class DropsMidStream(LLM):
    """A model whose stream fails after its first words (a provider dropping the connection)."""

    provider = "test"

    def chat(self, messages, **kwargs):
        raise AssertionError("only streams are asked of this model")

    def stream(self, messages, **kwargs):
        yield "Partial "
        yield "answer"
        raise LLMError("test:drops: the upstream closed the connection")


def chat_body(model=MODEL, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4, **extra}


# --- keys, models, request validation (no generation) ---------------------------------------------


def test_api_key_required_bearer_or_x_api_key(lab_server, http):
    wrong = openai.OpenAI(base_url=lab_server.openai_url, api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in err.value.response.text and lab_server.api_key not in err.value.response.text

    assert httpx.get(f"{lab_server.url}/v1/models").status_code == 401  # no key at all
    assert httpx.get(f"{lab_server.url}/v1/models", headers={"x-api-key": lab_server.api_key}).status_code == 200
    assert http.get("/v1/models").status_code == 200  # Authorization: Bearer
    assert httpx.get(f"{lab_server.url}/health").json()["status"] == "ok"  # liveness needs no key

    claude_wrong = anthropic.Anthropic(base_url=lab_server.url, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        claude_wrong.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert aerr.value.body["type"] == "error" and aerr.value.body["error"]["type"] == "authentication_error"


def test_an_oversized_body_is_refused_unread(lab_server, http):

    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * MAX_BODY_BYTES + b'"}]}'
    r = http.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_models_lists_the_chat_models_and_embedders(oai):
    assert [m.id for m in oai.models.list().data] == [MODEL, AGENT_MODEL, "all-minilm-l6-v2"]
    assert oai.models.retrieve(f"local:{MODEL}").id == f"local:{MODEL}"  # the spec is a name too
    assert oai.models.retrieve(AGENT_MODEL).id == AGENT_MODEL


def test_unknown_model_is_404_naming_the_served_models(oai, claude, lab_server):
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert MODEL in err.value.message and err.value.param == "model" and err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="all-minilm-l6-v2"):
        oai.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(anthropic.NotFoundError) as aerr:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert aerr.value.body["error"]["type"] == "not_found_error" and MODEL in aerr.value.body["error"]["message"]
    assert aerr.value.body["request_id"].startswith("req_")
    r = httpx.get(f"{lab_server.url}/v1/nowhere", headers={"x-api-key": lab_server.api_key})
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route GET /v1/nowhere"


OPENAI_400 = [
    ({"model": MODEL}, "messages", "Field required"),
    (chat_body(messages=[]), "messages", "at least 1"),
    (
        chat_body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ]
        ),
        "messages.0.content.1",
        "'image_url' is not supported",
    ),
    (chat_body(messages=[{"role": "wizard", "content": "hi"}]), "messages.0.role", "Input should be"),
    (chat_body(messages=[{"role": "tool", "content": "42"}]), "messages.0", "tool_call_id"),
    (chat_body(temperature="hot"), "temperature", "valid number"),
    (chat_body(temperature=3), "temperature", "less than or equal to 2"),
    (chat_body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (chat_body(n=2), "n", "only n=1"),
    (chat_body(logprobs=True), "logprobs", "not returned"),
    (chat_body(functions=[{"name": "f"}]), "functions", "use 'tools'"),
    (chat_body(tools=openai_tools(WEATHER), tool_choice="sometimes"), "tool_choice", "'auto', 'required' or 'none'"),
    (
        chat_body(tools=openai_tools(WEATHER), tool_choice={"type": "function", "function": {"name": "rm_rf"}}),
        "tool_choice",
        "'rm_rf', which is not among the tools",
    ),
    (chat_body(tool_choice="required"), "tool_choice", "needs at least one tool"),
    (chat_body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools.0.function.name", "pattern"),
    (chat_body(response_format={"type": "json_schema"}), "response_format", "needs 'json_schema'"),
    (chat_body(response_format={"type": "xml"}), "response_format.type", "Input should be"),
    (chat_body(stop=7), "stop", "valid"),
    (
        chat_body(
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city: Paris"},
                        }
                    ],
                },
            ]
        ),
        "messages.1.tool_calls.0.function.arguments",
        "not valid JSON",
    ),
]


@pytest.mark.parametrize("payload,param,fragment", OPENAI_400, ids=[p for _, p, _ in OPENAI_400])
def test_bad_chat_request_is_400_naming_the_field(http, payload, param, fragment):
    r = http.post("/v1/chat/completions", json=payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(param) and fragment in error["message"], error["message"]


def test_bad_embedding_and_json_requests_are_400(http, oai):
    for body, param, fragment in [
        ({"model": "all-minilm-l6-v2", "input": [101, 2023, 102]}, "input", "token arrays"),
        ({"model": "all-minilm-l6-v2", "input": [[101, 102]]}, "input", "token arrays"),
        ({"model": "all-minilm-l6-v2", "input": []}, "input", "must not be empty"),
        (
            {"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"},
            "encoding_format",
            "'float' or 'base64'",
        ),
    ]:
        r = http.post("/v1/embeddings", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param and fragment in r.json()["error"]["message"]
    r = http.post(
        "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError) as err:  # through the SDK: the field comes back as .param
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=3)
    assert err.value.param == "n"


ANTHROPIC_400 = [
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens", "Field required"),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                    ],
                }
            ],
        },
        "messages.0.content.0",
        "'image' is not supported",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is ("}],
        },
        "messages.1",
        "prefill",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "hi"}],
        },
        "thinking",
        "not supported",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "hi"}],
        },
        "tools.0",
        "'web_search_20250305' is not supported",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "tool_choice": {"type": "tool"},
            "tools": [anthropic_tool(WEATHER)],
            "messages": [{"role": "user", "content": "hi"}],
        },
        "tool_choice",
        "needs 'name'",
    ),
    (
        {
            "model": MODEL,
            "max_tokens": 4,
            "messages": [
                {"role": "user", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]}
            ],
        },
        "messages.0",
        "assistant turns",
    ),
]


@pytest.mark.parametrize("payload,param,fragment", ANTHROPIC_400, ids=[p for _, p, _ in ANTHROPIC_400])
def test_bad_messages_request_is_400_in_anthropic_shape(http, payload, param, fragment):
    r = http.post("/v1/messages", json=payload)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["message"].startswith(param) and fragment in body["error"]["message"], body


def test_field_path_drops_pydantic_union_tags():
    assert field_path(("body", "messages", 0, "content", "list[ContentPart]", 1, "type")) == "messages.0.content"
    assert field_path(("body", "tool_choice", "literal['auto','required','none']")) == "tool_choice"
    assert field_path(("body", "tool_choice", "NamedToolChoice", "function")) == "tool_choice"
    assert field_path(("body", "stop", "str")) == "stop"


# --- queue, upstream failures, crashes, disconnects ----------------------------------------------


def test_one_generation_at_a_time_and_429_when_the_queue_is_full(upstream):
    upstream.delay_s = 1.0
    with serving(upstream.llm(), max_queue=1) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        results: dict[int, object] = {}

        def call(i):
            try:
                results[i] = client.chat.completions.create(
                    model="upstream-model", messages=[{"role": "user", "content": "ping"}], max_tokens=2
                )
            except openai.APIStatusError as exc:
                results[i] = exc

        def wait_for(check, what):
            deadline = time.monotonic() + 10
            while not check():
                assert time.monotonic() < deadline, what
                time.sleep(0.01)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        threads[0].start()
        wait_for(lambda: upstream.active == 1, "first request reached the upstream")
        threads[1].start()
        wait_for(lambda: httpx.get(f"{url}/health").json()["waiting_or_running"] == 2, "second request queued")
        threads[2].start()  # one running + one waiting = full (max_queue=1)
        for t in threads:
            t.join(30)

        assert results[0].choices[0].message.content == "pong" and results[1].choices[0].message.content == "pong"
        full = results[2]
        assert isinstance(full, openai.RateLimitError) and full.status_code == 429
        assert int(full.response.headers["retry-after"]) >= 1
        assert full.body["type"] == "rate_limit_error" and "busy" in full.message
        assert upstream.max_active == 1  # never two generations at once
        assert httpx.get(f"{url}/health").json()["waiting_or_running"] == 0
        upstream.delay_s = 0.0
        assert (
            client.chat.completions.create(
                model="upstream-model", messages=[{"role": "user", "content": "x"}], max_tokens=2
            ).usage.total_tokens
            == 4
        )


def test_hanging_upstream_is_502_and_frees_the_model(upstream):
    upstream.delay_s = 5.0
    with serving(upstream.llm(timeout_s=0.5)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="upstream-model", messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 502 and "Timeout" in err.value.message
        assert time.monotonic() - start < 4
        upstream.delay_s = 0.0
        reply = client.chat.completions.create(model="upstream-model", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "pong" and reply.usage.prompt_tokens == 3


@pytest.mark.parametrize("upstream_status,status", [(400, 400), (413, 413), (429, 503), (500, 502)])
def test_upstream_errors_map_to_gateway_statuses(upstream, upstream_status, status):
    upstream.status = upstream_status
    with serving(upstream.llm()) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat_body("upstream-model"), timeout=30)
        assert r.status_code == status, r.text
        assert f"upstream says {upstream_status}" in r.json()["error"]["message"]
        if status == 503:
            assert int(r.headers["retry-after"]) >= 1


def test_internal_error_is_500_without_details_and_logged_with_request_id(caplog):
    with serving(Broken("broken")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(
                    model="broken", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            rid = err.value.response.headers["x-request-id"]
            body = err.value.response.text
            assert err.value.status_code == 500 and rid in body
            assert "secret internals" not in body and "Traceback" not in body and "RuntimeError" not in body
            assert any(
                rid in r.getMessage() and r.exc_info and "secret internals" in str(r.exc_info[1])
                for r in caplog.records
            )
        claude = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as aerr:
            claude.messages.create(model="broken", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert aerr.value.body["error"]["type"] == "api_error" and "secret" not in aerr.value.response.text


def test_error_after_the_stream_started_is_its_last_event():
    with serving(DropsMidStream("drops")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        received = []
        with pytest.raises(openai.APIError, match="the upstream closed the connection"):
            for chunk in client.chat.completions.create(
                model="drops", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                received.append(chunk.choices[0].delta.content if chunk.choices else None)
        assert "".join(filter(None, received)) == "Partial answer"

        claude = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
        texts = []
        with pytest.raises(anthropic.APIStatusError, match="the upstream closed the connection"):
            with claude.messages.stream(model="drops", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
                texts.extend(s.text_stream)
        assert "".join(texts) == "Partial answer"


def test_client_disconnect_closes_the_stream_and_frees_the_model():
    ticker = Ticker()
    with serving(ticker) as url:
        with httpx.Client(timeout=10) as client:
            with client.stream(
                "POST",
                f"{url}/v1/chat/completions",
                json={"model": "ticker", "messages": [{"role": "user", "content": "go"}], "stream": True},
            ) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                deltas = 0
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content": "t' in line:
                        deltas += 1
                    if deltas == 3:
                        break  # leave mid-stream: the connection closes
        assert ticker.closed.wait(5), "the model's stream was not closed after the client left"
        assert ticker.produced < 100
        reply = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=10).chat.completions.create(
            model="ticker", messages=[{"role": "user", "content": "again"}]
        )
        assert reply.choices[0].message.content == "done"  # the model slot was released


def test_api_key_never_reaches_the_logs(capfd, caplog):
    key = "sk-never-log-this-0123456789"
    with serving(Broken("broken"), api_key=key, log_level="info") as url:
        for headers in ({"authorization": f"Bearer {key}"}, {"x-api-key": key}, {"x-api-key": key + "-wrong"}):
            httpx.post(f"{url}/v1/chat/completions", json=chat_body("broken"), headers=headers)
    out = capfd.readouterr()
    logs = out.out + out.err + caplog.text
    assert "POST /v1/chat/completions" in logs  # the access log was on
    assert key not in logs


def test_lab_serve_command_binds_loopback_and_serves(upstream):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = "sk-cli-secret-key"
    lab = str(Path(sys.executable).parent / "lab")
    proc = subprocess.Popen(
        [lab, "serve", "--llm", f"openai:upstream-model@{upstream.url}/v1", "--port", str(port), "--max-queue", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LAB_SERVE_API_KEY": key, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "lab serve did not start"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        assert (
            client.chat.completions.create(
                model="upstream-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            .choices[0]
            .message.content
            == "pong"
        )
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/v1" in output and "API key:   required" in output
    assert key not in output


# --- the embedded model through the OpenAI SDK --------------------------------------------------


@pytest.mark.slow
def test_chat_completion_with_system_developer_and_text_parts(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        max_completion_tokens=6,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}],
            },
        ],
        # accepted, harmless: they change nothing for this server
        seed=1,
        user="tester",
        top_p=1.0,
        n=1,
        logprobs=False,
        presence_penalty=0.0,
        stop=["\n\n"],
    )
    assert raw.headers["x-request-id"].startswith("req_")
    reply = raw.parse()
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.message.role == "assistant" and not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    u = reply.usage
    assert (
        u.prompt_tokens > 10
        and 1 <= u.completion_tokens <= 6
        and u.total_tokens == u.prompt_tokens + u.completion_tokens
    )


@pytest.mark.slow
def test_stream_sends_role_deltas_finish_usage_and_done(oai, http):
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 5 and chunks[-1].usage.prompt_tokens > 0
    assert len({c.id for c in chunks}) == 1

    with http.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens=2, stream=True)) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert all("usage" not in json.loads(line[6:]) for line in lines[:-1])  # no usage unless asked for


@pytest.mark.slow
def test_leaving_a_local_stream_stops_generation(lab_server, http):
    body = chat_body(
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=400,
        stream=True,
    )
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        deltas = 0
        for line in r.iter_lines():
            deltas += line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line
            if deltas == 2:
                break
    left = time.monotonic()
    while http.get("/health").json()["waiting_or_running"]:  # 400 tokens would take ~30 s more
        assert time.monotonic() - left < 5, "generation went on after the client left"
        time.sleep(0.05)


PROMPTS = [
    "What's the weather in Paris right now?",
    "Set a timer for 10 minutes for the pasta.",
    "Find the documentation about the KV cache, top 3 results.",
    "Is it cold in Oslo? Answer in fahrenheit.",
    "Remind me in 25 minutes to stretch.",
]


@pytest.mark.slow
def test_tool_choice_required_returns_schema_valid_calls_over_many_prompts(oai):
    names = []
    for prompt in PROMPTS:
        reply = oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=openai_tools(WEATHER, TIMER, SEARCH),
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", (prompt, choice)
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id
        assert_valid_call(call.function.name, call.function.arguments)
        names.append(call.function.name)
    print("tools chosen:", names)  # which tool is the model's judgement; validity is the server's promise


def test_parallel_calls_stop_at_the_first_repeat_and_false_allows_one(oai):
    """With parallel_tool_calls left at its default (true), a model that repeats its call is stopped at the first
    repeat instead of running to max_tokens; with false, a reply holds one call."""
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    reply = oai.chat.completions.create(
        model=MODEL, messages=messages, tools=openai_tools(WEATHER), tool_choice="required", max_tokens=300
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls
    keys = [(c.function.name, json.dumps(json.loads(c.function.arguments), sort_keys=True)) for c in calls]
    assert len(set(keys)) == len(keys)  # no repeated call
    assert reply.usage.completion_tokens < 300  # it stopped, not the budget
    one = oai.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=openai_tools(WEATHER, TIMER),
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
    )
    assert len(one.choices[0].message.tool_calls) == 1


# Written for this test, after the agent model was trained: tools and requests it has not seen.
UNSEEN_TOOLS = (
    {
        "name": "get_flight_status",
        "description": "Status of a flight by its flight number.",
        "parameters": {"type": "object", "properties": {"flight": {"type": "string"}}, "required": ["flight"]},
    },
    {
        "name": "lookup_recipe",
        "description": "Find a cooking recipe by dish name.",
        "parameters": {"type": "object", "properties": {"dish": {"type": "string"}}, "required": ["dish"]},
    },
    {
        "name": "count_words",
        "description": "Count the words in a piece of text.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
)
FITS = (
    ("Is flight LH455 on time today?", "get_flight_status"),
    ("Has BA117 landed yet?", "get_flight_status"),
    ("Find me a recipe for mushroom risotto.", "lookup_recipe"),
    ("I want to cook shakshuka tonight, how?", "lookup_recipe"),
    ("How many words are in 'the quick brown fox jumps'?", "count_words"),
    ("Count the words in this sentence: I like green apples.", "count_words"),
)
FITS_NONE = (
    "What is the tallest mountain in Africa?",
    "Say something nice about Mondays.",
    "Which ocean is the largest?",
    "Translate 'good night' into German.",
    "Who invented the telephone?",
    "What's 2 plus 2?",
)


def test_the_agent_model_acts_when_a_tool_fits_and_declines_when_none_does(oai):
    """tool_choice auto, from outside through the OpenAI SDK: the tuned model calls the fitting tool and answers
    in text when none fits; the base model, asked the same, never calls (what the tuning changed)."""

    def ask(model, prompt):
        return (
            oai.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                tools=openai_tools(*UNSEEN_TOOLS),
                tool_choice="auto",
                parallel_tool_calls=False,
                max_tokens=64,
            )
            .choices[0]
            .message
        )

    acted = [
        (m := ask(AGENT_MODEL, p)).tool_calls is not None and m.tool_calls[0].function.name == tool for p, tool in FITS
    ]
    declined = [ask(AGENT_MODEL, p).tool_calls is None for p in FITS_NONE]
    base_calls = sum(ask(MODEL, p).tool_calls is not None for p, _ in FITS)
    print(
        f"agent: right call {sum(acted)}/{len(FITS)}, declined {sum(declined)}/{len(FITS_NONE)}; "
        f"base called {base_calls}/{len(FITS)}"
    )
    # a behaviour check on a handful of cases (the measurement, with n and intervals, is phase13.tool_tuning):
    # most fitting requests get the right call, most others none, and the tuned model acts where the base does not
    assert sum(acted) > len(FITS) / 2 and sum(declined) > len(FITS_NONE) / 2
    assert base_calls < sum(acted)


@pytest.mark.slow
def test_named_tool_choice_and_streamed_tool_call_deltas(oai):
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "I need to boil an egg."}],
        tools=openai_tools(WEATHER, TIMER),
        tool_choice={"type": "function", "function": {"name": "set_timer"}},
        parallel_tool_calls=False,
        max_tokens=64,
    )
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "set_timer"
    assert_valid_call("set_timer", call.function.arguments)

    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Lisbon?"}],
            tools=openai_tools(WEATHER),
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    assert_valid_call("get_weather", arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage.completion_tokens > 0


@pytest.mark.slow
def test_tool_results_round_trip_back_to_text(oai):
    reply = oai.chat.completions.create(
        model=MODEL,
        max_tokens=10,
        tools=openai_tools(WEATHER),
        tool_choice="none",
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        ],
    )
    message = reply.choices[0].message
    assert message.content and not message.tool_calls and reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_response_format_json_schema_strict_and_json_object(oai):
    schema = {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["pass", "fail"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["verdict", "score"],
        "additionalProperties": False,
    }
    reply = oai.chat.completions.create(
        model=MODEL,
        max_tokens=40,
        messages=[{"role": "user", "content": "Grade this answer: 2+2=4."}],
        response_format={"type": "json_schema", "json_schema": {"name": "grade", "schema": schema, "strict": True}},
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)

    reply = oai.chat.completions.create(
        model=MODEL,
        max_tokens=60,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe Paris as a JSON object with a name and a country."}],
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_a_schema_the_grammar_engine_cannot_compile_is_400_not_a_model_failure(oai):
    broken = {"type": "object", "properties": {"a": {"$ref": "#/nope"}}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "broken", "schema": broken}},
        )
    assert "cannot be compiled to a grammar" in err.value.body["message"]


@pytest.mark.slow
def test_stop_sequences_end_the_reply(oai, claude):
    ask = [{"role": "user", "content": "List the numbers 1 to 10 separated by commas."}]
    reply = oai.chat.completions.create(model=MODEL, messages=ask, max_tokens=8, stop=",")
    assert reply.choices[0].finish_reason == "stop" and "," not in reply.choices[0].message.content
    message = claude.messages.create(model=MODEL, max_tokens=8, messages=ask, stop_sequences=[","])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == ","
    assert "," not in message.content[0].text


@pytest.mark.slow
def test_prompt_over_the_context_window_is_413(oai, claude):
    long_prompt = "word " * 9000  # SmolLM2 attends over 8192 tokens
    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_prompt}], max_tokens=2)
    assert err.value.status_code == 413 and err.value.code == "context_length_exceeded" and "8192" in err.value.message
    with pytest.raises(anthropic.APIStatusError) as aerr:
        claude.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": long_prompt}])
    assert aerr.value.status_code == 413 and aerr.value.body["error"]["type"] == "request_too_large"


@pytest.mark.slow
def test_embeddings_float_and_base64_match_the_model(oai, http):

    texts = ["The KV cache grows with context.", "Paris is in France."]
    expected = load_embedder("all-minilm-l6-v2").encode(texts)
    sdk = oai.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the SDK asks for base64 by default
    assert [d.index for d in sdk.data] == [0, 1] and sdk.usage.prompt_tokens == sdk.usage.total_tokens > 8
    assert np.allclose([d.embedding for d in sdk.data], expected, atol=1e-5)

    r = http.post(
        "/v1/embeddings",
        json={
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "input": texts[1],
            "encoding_format": "float",
            "dimensions": 384,
        },
    )
    data = r.json()["data"]
    assert r.status_code == 200 and len(data) == 1 and isinstance(data[0]["embedding"], list)
    assert np.allclose(data[0]["embedding"], expected[1], atol=1e-5)
    r = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": texts, "encoding_format": "base64"})
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    assert np.allclose(decoded, expected, atol=1e-5)
    r = http.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x", "dimensions": 128})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


@pytest.mark.slow
def test_langchain_chat_openai_bind_tools(lab_server):
    from langchain_core.tools import tool  # noqa: PLC0415 (langchain_core loads only on the path that uses it)
    from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: PLC0415 (langchain_core loads only on the path that uses it)
    from langchain_openai import ChatOpenAI  # noqa: PLC0415 (langchain_openai loads only on the path that uses it)

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return "18C"

    chat = ChatOpenAI(
        model=MODEL,
        base_url=lab_server.openai_url,
        api_key=lab_server.api_key,
        temperature=0,
        max_tokens=64,
        max_retries=0,
    )
    message = chat.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False).invoke(
        "What's the weather in Madrid?"
    )
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], convert_to_openai_tool(get_weather)["function"]["parameters"])
    assert message.usage_metadata["input_tokens"] > 0


# --- the embedded model through the Anthropic SDK -----------------------------------------------


@pytest.mark.slow
def test_anthropic_create_and_stream(claude):
    message = claude.messages.create(
        model=MODEL,
        max_tokens=6,
        metadata={"user_id": "tester"},
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": "Name a colour."}],
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.input_tokens > 5 and 1 <= message.usage.output_tokens <= 6

    with claude.messages.stream(model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "Say hello."}]) as s:
        events = [event.type for event in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(events)
    assert final.content[0].text.strip() and final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 5 and final.usage.output_tokens >= 1


@pytest.mark.slow
def test_anthropic_tool_use_round_trip_with_tool_result(claude):
    tools = [anthropic_tool(WEATHER), anthropic_tool(TIMER)]
    ask = {"role": "user", "content": "What's the weather in Madrid?"}
    first = claude.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=tools,
        messages=[ask],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert_valid_call(use.name, use.input)

    second = claude.messages.create(
        model=MODEL,
        max_tokens=10,
        tools=tools,
        tool_choice={"type": "none"},
        messages=[
            ask,
            {"role": "assistant", "content": first.content},  # the SDK's own blocks, sent back as they came
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": [{"type": "text", "text": "21C, clear sky"}],
                    },
                    {"type": "text", "text": "Thanks. Summarise."},
                ],
            },
        ],
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert second.content and all(b.type == "text" for b in second.content)

    failed = claude.messages.create(
        model=MODEL,
        max_tokens=6,
        messages=[
            ask,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "is_error": True,
                        "content": "weather service unavailable",
                    }
                ],
            },
        ],
        tools=tools,
        tool_choice={"type": "none"},
    )
    assert failed.content[0].type == "text"


@pytest.mark.slow
def test_anthropic_named_tool_streams_input_json(claude):
    with claude.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "Start my tea."}],
        tools=[anthropic_tool(WEATHER), anthropic_tool(TIMER)],
        tool_choice={"type": "tool", "name": "set_timer", "disable_parallel_tool_use": True},
    ) as s:
        events = [event for event in s]
        final = s.get_final_message()
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(e.delta.type == "input_json_delta" for e in deltas)
    [use] = final.content
    assert use.type == "tool_use" and use.name == "set_timer" and final.stop_reason == "tool_use"
    assert_valid_call("set_timer", use.input)
    assert final.usage.output_tokens > 0
