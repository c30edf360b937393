"""Phase 15 tracing and cost: span structure and GenAI attributes, redaction, OTLP export to an
in-process receiver, the local store, `lab traces`, cost arithmetic, and tiny runs of both exercises —
all against a scripted OpenAI-compatible server (a loopback double of the wire protocol), never mocks."""

import json
import os
import subprocess
import sys
import types

import pytest

from lab import registry
from lab.errors import ConfigError
from lab.llm.base import LLMError, ToolCall
from lab.llm.openai_client import OpenAILLM
from lab.llm.scripted_server import Reply, ScriptedServer, call, error, say
from lab.runner import execute
from phase13_react.tools import Toolbox, tool
from phase15_production import cost_model
from phase15_production import tracing as tracing_exercise
from phase15_production.cost import A100_USD_PER_HOUR, SelfHosted, cost_by_agent, hosted_pricer, run_cost, span_cost
from phase15_production.otlp_receiver import OTLPReceiver
from phase15_production.telemetry import (
    SPAN_KIND,
    SpanStore,
    TracedLLM,
    TracedToolbox,
    agent_span,
    configure_tracing,
    redact_text,
    run_span,
    traced_agent,
)
from phase15_production.trace_view import tree_text

SECRET = "sk-live-0123456789abcdefABCDEF"


def _arguments(schema: dict, task: str) -> dict:
    values = {"expression": "(17 + 4) * 23", "unit_from": "days", "unit_to": "seconds"}
    args = {}
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type")
        args[name] = 3 if kind in ("number", "integer") else values.get(name, " ".join(task.split()[:6]))
    return args


def policy(body: dict) -> Reply:
    """The scripted model: with tools offered, call the first real tool with arguments made from its schema,
    then (after a tool result) ``final_answer``; without tools, a short text."""
    messages, tools = body["messages"], body.get("tools") or []
    task = next(m["content"] for m in messages if m["role"] == "user")
    real = [t["function"] for t in tools if t["function"]["name"] != "final_answer"]
    if tools and messages[-1]["role"] != "tool" and real:
        return call(real[0]["name"], _arguments(real[0]["parameters"], task))
    if tools and any(t["function"]["name"] == "final_answer" for t in tools):
        return call("final_answer", {"answer": f"done after {len(messages)} messages"})
    return say("A short scripted draft about " + " ".join(task.split()[:8]))


@pytest.fixture
def scripted():
    """An OpenAI Chat Completions double on 127.0.0.1 answering by ``policy`` (a test swaps ``script`` for an
    HTTP error); usage is the words of the request and the reply."""
    with ScriptedServer(policy) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    tracing = configure_tracing(store=tmp_path / "spans.jsonl")
    yield tracing
    tracing.close()


@tool(timeout_s=5)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(timeout_s=5)
def leaky(key: str) -> str:
    """Fetch a setting (fails, quoting its credentials like careless backends do)."""
    raise RuntimeError(f"denied: Authorization: Bearer {SECRET} x-api-key={SECRET}")


def llm_at(server, key=SECRET):
    return OpenAILLM("scripted-model", base_url=server.openai_url, api_key=key, max_attempts=1)


def by_kind(spans):
    out = {}
    for s in spans:
        out.setdefault(s["attributes"].get(SPAN_KIND) or "sdk", []).append(s)
    return out


# --- span structure -------------------------------------------------------------------------------------


def test_agent_run_is_one_nested_trace_with_gen_ai_attributes(scripted, store):
    with run_span("demo", "run-struct"):
        run = traced_agent(
            llm_at(scripted), "add 3 and 3", Toolbox([add]), agent="solver", tool_choice="required", max_steps=3
        )
    assert run.stop_reason == "answer" and len(run.steps) == 2
    spans = store.store.spans("run-struct")
    kinds = by_kind(spans)
    assert {k: len(v) for k, v in kinds.items() if k != "sdk"} == {
        "run": 1,
        "agent": 1,
        "step": 2,
        "chat": 2,
        "tool": 1,
    }
    ids = {s["span_id"]: s for s in spans}
    root, agent = kinds["run"][0], kinds["agent"][0]
    assert root["parent_id"] is None and agent["parent_id"] == root["span_id"]
    assert all(ids[s["parent_id"]]["attributes"][SPAN_KIND] == "agent" for s in kinds["step"])
    assert all(ids[s["parent_id"]]["attributes"][SPAN_KIND] == "step" for s in kinds["chat"] + kinds["tool"])
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    assert all(s["attributes"]["lab.run.id"] == "run-struct" for s in spans if s["scope"].startswith("phase15"))
    chat = kinds["chat"][0]["attributes"]
    assert chat["gen_ai.operation.name"] == "chat" and chat["gen_ai.system"] == "openai"
    assert chat["gen_ai.request.model"] == "scripted-model" and chat["gen_ai.usage.input_tokens"] > 0
    assert sum(s["attributes"]["gen_ai.usage.output_tokens"] for s in kinds["chat"]) == run.output_tokens
    tool_span = kinds["tool"][0]["attributes"]
    assert tool_span["gen_ai.operation.name"] == "execute_tool" and tool_span["gen_ai.tool.name"] == "add"
    assert tool_span["lab.tool.outcome"] == "ok" and tool_span["gen_ai.tool.call.result"] == "6"
    assert (
        agent["attributes"]["gen_ai.agent.name"] == "solver"
        and agent["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    )
    # the maintained OpenAI SDK instrumentation nests its spans under our chat spans
    chat_ids = {s["span_id"] for s in kinds["chat"]}
    assert kinds.get("sdk") and all(s["parent_id"] in chat_ids for s in kinds["sdk"])


def test_a_failing_tool_and_a_failing_model_are_error_spans(scripted, store):
    scripted.script = [error(400, "bad request: context too long")]
    with agent_span("solo", "run-err"):
        box = TracedToolbox(Toolbox([add], retries=0))
        obs = box.execute(ToolCall("c1", "nope", {}))
        with pytest.raises(LLMError):
            TracedLLM(llm_at(scripted)).chat([{"role": "user", "content": "hi"}])
    assert obs.outcome == "unknown_tool"
    kinds = by_kind(store.store.spans("run-err"))
    assert kinds["tool"][0]["status"] == "ERROR" and kinds["tool"][0]["attributes"]["error.type"] == "unknown_tool"
    assert kinds["chat"][0]["status"] == "ERROR" and "HTTP 400" in kinds["chat"][0]["status_description"]
    assert kinds["agent"][0]["parent_id"] is None  # an agent span outside a run is the run's root


# --- redaction ------------------------------------------------------------------------------------------


def test_redact_text_blanks_keys_headers_and_bot_tokens(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plain-looking-value-42")
    text = (
        f"key {SECRET}; Authorization: Bearer abc.DEF-123456; x-api-key: zzzzzzzz; "
        "bot 123456789:AAHk4mVn0Q2lZp9xYtR3sW8uE7cB1dF6gJ0 and plain-looking-value-42"
    )
    cleaned = redact_text(text)
    for secret in (
        SECRET,
        "abc.DEF-123456",
        "zzzzzzzz",
        "AAHk4mVn0Q2lZp9xYtR3sW8uE7cB1dF6gJ0",
        "plain-looking-value-42",
    ):
        assert secret not in cleaned
    assert redact_text("17 * 23 = 391 tokens") == "17 * 23 = 391 tokens"


def test_secrets_in_a_prompt_an_error_and_a_header_never_reach_any_exporter(scripted, tmp_path):
    with OTLPReceiver() as receiver:
        tracing = configure_tracing(store=tmp_path / "s.jsonl", otlp_endpoint=receiver.url)
        with run_span("leak-test", "run-leak"):
            llm = TracedLLM(llm_at(scripted))
            llm.chat([{"role": "user", "content": f"my key is {SECRET}, keep it safe"}])
            TracedToolbox(Toolbox([leaky], retries=0)).execute(ToolCall("c1", "leaky", {"key": "x"}))
            scripted.script = [error(401, f"Incorrect API key provided: {SECRET}")]
            with pytest.raises(Exception, match="401"):
                llm.chat([{"role": "user", "content": "again"}])
        tracing.close()
    # the secret really was in play: sent as a header and quoted back by the server
    assert scripted.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    local = (tmp_path / "s.jsonl").read_text()
    assert SECRET not in local and "***" in local
    assert receiver.raw and all(SECRET.encode() not in body for body in receiver.raw)
    error_span = next(s for s in receiver.spans if s["name"].startswith("chat") and s["status_message"])
    assert "401" in error_span["status_message"] and SECRET not in json.dumps(error_span)


# --- export: OTLP and the local store ---------------------------------------------------------------------


def test_otlp_export_from_the_environment_reaches_a_receiver(scripted, tmp_path, monkeypatch):
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        tracing = configure_tracing(store=tmp_path / "s.jsonl")
        with run_span("otlp", "run-otlp"):
            traced_agent(
                llm_at(scripted), "add 1 and 2", Toolbox([add]), agent="a", tool_choice="required", max_steps=2
            )
        tracing.close()
    local = SpanStore(tmp_path / "s.jsonl").spans("run-otlp")
    assert tracing.counts()["otlp"] == tracing.counts()["local"] == len(local) == len(receiver.spans)
    assert {s["span_id"] for s in receiver.spans} == {s["span_id"] for s in local}
    assert {s["service"] for s in receiver.spans} == {"llm-systems-lab"}
    assert any(s["attributes"].get("gen_ai.tool.name") == "add" for s in receiver.spans)


def test_store_lists_runs_finds_by_prefix_and_names_bad_lines(scripted, tmp_path):

    path = tmp_path / "s.jsonl"
    with configure_tracing(store=path):
        for run_id in ("alpha-1", "beta-1"):
            with run_span("r", run_id):
                TracedLLM(llm_at(scripted)).chat([{"role": "user", "content": "hi"}])
    store = SpanStore(path)
    assert [r["run_id"] for r in store.runs()] == ["alpha-1", "beta-1"]
    assert {s["attributes"].get("lab.run.id") for s in store.spans("alp") if s["scope"].startswith("phase15")} == {
        "alpha-1"
    }
    with pytest.raises(ConfigError, match="no run"):
        store.spans("gamma")
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ConfigError, match=r"s\.jsonl:\d+"):
        store.runs()


def test_lab_traces_lists_runs_and_renders_a_tree(scripted, tmp_path):
    path = tmp_path / "s.jsonl"
    with configure_tracing(store=path):
        with run_span("engine", "run-cli"):
            traced_agent(
                llm_at(scripted), "add 2 and 2", Toolbox([add]), agent="writer", tool_choice="required", max_steps=2
            )
    env = {**os.environ, "LAB_TRACES": str(path), "COLUMNS": "200"}
    listing = subprocess.run(
        [sys.executable, "-m", "lab", "traces"], capture_output=True, text=True, env=env, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "run-cli" in listing.stdout and "invoke_workflow engine" in listing.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "lab", "traces", "run-cli", "--store", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    for expected in (
        "invoke_agent writer",
        "step 0",
        "chat scripted-model",
        "execute_tool add",
        " ms",
        "tok",
        "cost n/a",
    ):
        assert expected in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "lab", "traces", "nope", "--store", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


# --- cost arithmetic ----------------------------------------------------------------------------------------


def _chat(span_id, parent, tokens_in, tokens_out, model="gpt-4o-mini", system="openai", **extra):
    return {
        "span_id": span_id,
        "parent_id": parent,
        "trace_id": "t1",
        "duration_s": 1.0,
        "scope": "phase15",
        "attributes": {
            SPAN_KIND: "chat",
            "gen_ai.operation.name": "chat",
            "gen_ai.system": system,
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
            **extra,
        },
    }


def _agent(span_id, name):
    return {
        "span_id": span_id,
        "parent_id": "root",
        "trace_id": "t1",
        "duration_s": 3.0,
        "scope": "phase15",
        "attributes": {SPAN_KIND: "agent", "gen_ai.agent.name": name, "lab.run.id": "r1"},
    }


def test_cost_arithmetic_hosted_self_hosted_and_no_double_counting():
    root = {
        "span_id": "root",
        "parent_id": None,
        "trace_id": "t1",
        "duration_s": 5.0,
        "scope": "phase15",
        "attributes": {SPAN_KIND: "run", "lab.run.id": "r1"},
    }
    sdk = {
        "span_id": "sdk1",
        "parent_id": "c1",
        "trace_id": "t1",
        "duration_s": 1.0,
        "scope": "openai",
        "attributes": {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 1_000_000,
            "gen_ai.usage.output_tokens": 0,
        },
    }
    spans = [
        root,
        _agent("a1", "researcher"),
        _agent("a2", "writer"),
        _chat("c1", "a1", 1_000_000, 0),
        sdk,
        _chat("c2", "a2", 0, 1_000_000),
        _chat("c3", "a2", 2_000_000, 0),
    ]
    rows = cost_by_agent(spans, hosted_pricer("gpt-4o-mini"))  # $0.15 in / $0.60 out per Mtok
    assert (
        rows["researcher"]["cost"] == pytest.approx(0.15) and rows["researcher"]["calls"] == 1
    )  # SDK span not re-counted
    assert rows["writer"]["cost"] == pytest.approx(0.60 + 0.30) and rows["writer"]["input"] == 2_000_000
    assert run_cost(spans, hosted_pricer("gpt-4o"))["r1"] == pytest.approx(2.5 + 10.0 + 5.0)
    a100 = SelfHosted("a100", A100_USD_PER_HOUR, decode_tokens_per_s=1000.0, prefill_tokens_per_s=10_000.0)
    assert a100.seconds(10_000, 1000) == pytest.approx(2.0)
    assert a100.cost(10_000, 1000) == pytest.approx(1.50 * 2.0 / 3600)
    assert span_cost(_chat("x", None, 10, 10, model="smollm2", system="local")) == 0.0
    assert span_cost(_chat("y", None, 10, 10, model="my-vllm-model")) is None  # unpriced: None, never a silent 0
    assert span_cost(_chat("z", None, 10, 10, **{"lab.cost_usd": 0.25})) == 0.25
    with pytest.raises(ValueError, match="no list price"):
        hosted_pricer("unknown-model")
    with pytest.raises(ValueError):
        SelfHosted("bad", 1.5, decode_tokens_per_s=0)
    assert "writer" in tree_text(
        [
            {**s, "name": s["attributes"].get("gen_ai.agent.name", s["span_id"]), "status": "OK", "start_ns": i}
            for i, s in enumerate(spans)
        ]
    )


# --- the exercises, tiny, against the scripted server ----------------------------------------------------


def test_tracing_exercise_tiny(scripted, tmp_path):
    exercise = tracing_exercise.EXERCISE
    overrides = {**exercise.tiny, "llm": f"openai:scripted@{scripted.openai_url}"}
    doc = execute(exercise, "cpu", overrides, out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("reason")
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["llm_call_span_coverage"] == 1.0 and m["tool_call_span_coverage"] == 1.0
    assert m["secrets_leaked"] == 0 and m["spans_with_redactions"] >= 1
    assert (
        m["spans_exported_local"] == m["spans_exported_otlp"] == m["spans_received_by_collector"] == m["spans_per_run"]
    )
    assert m["chat_spans_with_gen_ai_attributes"] == 1.0 and m["span_tokens_match_steps"] == 1
    assert m["openai_sdk_spans_nested"] == m["spans_openai_sdk"] > 0
    assert "invoke_agent solver-1" in (tmp_path / "phase15" / "tracing" / "cpu" / "trace_tree.txt").read_text()


def test_cost_model_exercise_tiny_and_reading_a_span_store(scripted, tmp_path):
    overrides = {**cost_model.EXERCISE.tiny, "llm": f"openai:scripted@{scripted.openai_url}"}
    doc = execute(cost_model.EXERCISE, "cpu", overrides, out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("reason")
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["runs_traced"] == overrides["runs"]
    agents = ("researcher", "writer", "editor")
    assert set(agents) <= {row[0] for row in doc["tables"]["by_agent"]["rows"]}
    assert m["cost_per_run_usd_gpt_4o"] > m["cost_per_run_usd_gpt_4o_mini"] > 0
    assert m["cost_per_1000_runs_usd_gpt_4o"] == pytest.approx(1000 * m["cost_per_run_usd_gpt_4o"], rel=1e-6)
    assert any("dominates" in f for f in doc["findings"])
    # --set traces=PATH re-prices any span store, here the one the first run wrote
    spans_path = tmp_path / "phase15" / "cost_model" / "cpu" / "spans.jsonl"
    again = execute(
        cost_model.EXERCISE, "cpu", {**overrides, "traces": str(spans_path)}, out=tmp_path / "again", quiet=True
    )
    assert again["status"] == "ok", again.get("reason")
    assert again["metrics"]["cost_per_run_usd_gpt_4o"]["value"] == pytest.approx(m["cost_per_run_usd_gpt_4o"])


def test_phase_commands_are_declared_by_phase_packages_and_checked(monkeypatch):

    assert registry.phase_commands()["traces"] == "phase15_production.trace_view:cli"
    bad = types.ModuleType("phase98_bad")
    bad.COMMANDS = {"traces2": "no_function_named"}
    monkeypatch.setitem(sys.modules, "phase98_bad", bad)
    monkeypatch.setattr(registry, "_phase_packages", lambda: ["phase98_bad"])
    with pytest.raises(ConfigError, match="phase98_bad/__init__.py COMMANDS\\['traces2'\\].*module:function"):
        registry.phase_commands()
