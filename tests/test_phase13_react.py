"""Phase 13: the loop against scripted OpenAI-compatible servers (every failure mode, stop conditions),
research-agent persistence across a SIGKILL in a separate process, and tiny runs of the exercises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lab import db, runner
from lab.llm.openai_client import OpenAILLM
from lab.llm.scripted_server import ScriptedServer, call, say
from phase13_react import failure_modes, function_calling, react_loop, research_agent
from phase13_react.loop import run_agent
from phase13_react.research import research
from phase13_react.state_store import AgentStateStore
from phase13_react.tools import Toolbox, tool

REPO = Path(__file__).resolve().parent.parent


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool
def nothing(query: str) -> str:
    """Find nothing."""
    return ""


@tool
def boom(key: str) -> str:
    """Always fails."""
    raise RuntimeError("backend down")


@tool(timeout_s=0.1)
def hang(query: str) -> str:
    """Hangs."""
    time.sleep(2)
    return "late"


def _llm(url: str, timeout_s: float = 10.0) -> OpenAILLM:
    return OpenAILLM("scripted", base_url=url, api_key="sk-scripted", max_attempts=1, timeout_s=timeout_s)


def _run(script, mode="native", **kw):
    box = Toolbox([add, nothing, boom, hang], retries=1, backoff_s=0.01)
    with ScriptedServer(script) as srv:
        result = run_agent(_llm(srv.openai_url, kw.pop("timeout_s", 10.0)), "What is 1 + 2?", box, mode=mode, **kw)
        return result, [r.body for r in srv.requests]


@pytest.mark.parametrize(
    "script,outcome,stop",
    [
        ([call("web_browse", {"url": "x"}), say("3")], "unknown_tool", "answer"),
        ([call("add", '{"a": 1, "b": '), say("3")], "invalid_arguments", "answer"),  # not JSON
        ([call("add", {"a": 1}), say("3")], "invalid_arguments", "answer"),  # a required field missing
        ([call("add", "[1, 2]"), say("3")], "invalid_arguments", "answer"),  # JSON, but not an object
        ([call("boom", {"key": "k"}), say("3")], "tool_error", "answer"),
        ([call("hang", {"query": "q"}), say("3")], "tool_timeout", "answer"),
        ([call("nothing", {"query": "q"}), say("3")], "empty_observation", "answer"),
        ([call("add", {"a": 1, "b": 2})], "repeated_action", "repeated_action"),  # the same call forever
    ],
)
def test_every_failure_mode_is_an_observation_and_the_run_goes_on(script, outcome, stop):
    result, requests = _run(script, max_steps=6, max_repeats=2)
    assert result.outcome_counts()[outcome] >= 1
    assert result.stop_reason == stop
    first = next(o for s in result.steps for o in s.observations if o["outcome"] == outcome)
    # the model is shown the failure on its next request, as a role=tool message
    shown = [m for r in requests[1:] for m in r["messages"] if m.get("role") == "tool"]
    assert any(m["content"] == first["content"] for m in shown)


def test_unknown_tool_observation_names_the_real_tools():
    result, _ = _run([call("web_browse", {}), say("3")])
    content = result.steps[0].observations[0]["content"]
    assert "web_browse" in content and "add" in content


def test_timeout_is_retried_before_it_becomes_an_observation():
    result, _ = _run([call("hang", {"query": "q"}), say("3")])
    assert result.steps[0].observations[0]["attempts"] == 2


def test_repeated_action_runs_the_tool_once():
    calls = []

    @tool
    def counted(x: int) -> int:
        """Count calls."""
        calls.append(x)
        return x

    with ScriptedServer([call("counted", {"x": 1})]) as srv:
        result = run_agent(_llm(srv.openai_url), "loop", Toolbox([counted]), max_steps=10, max_repeats=3)
    assert calls == [1] and result.stop_reason == "repeated_action" and len(result.steps) == 4


def test_max_steps_stops_a_model_that_never_answers():
    result, requests = _run(lambda body: call("add", {"a": len(body["messages"]), "b": 1}), max_steps=3)
    assert result.stop_reason == "max_steps" and len(result.steps) == 3 == len(requests)
    assert result.outcome_counts()["max_steps"] == 1


def test_garbage_text_in_text_mode_is_a_parse_error_not_a_crash():
    result, _ = _run([say("}}{{ <tool_call> garbage")], mode="text", max_steps=2)
    assert [s.error for s in result.steps] == ["parse_error", "parse_error"] and result.stop_reason == "max_steps"


def test_text_mode_runs_actions_and_reads_the_final_answer():
    script = [say('Thought: add\nAction: add\nAction Input: {"a": 1, "b": 2}'), say("Final Answer: 3")]
    result, requests = _run(script, mode="text")
    assert result.answer == "3" and result.steps[0].observations[0]["content"] == "3.0"
    assert "Observation: 3.0" in requests[1]["messages"][-1]["content"]


def test_slow_model_is_a_model_error_stop():
    result, _ = _run([say("late", delay_s=1.5)], timeout_s=0.3)
    assert result.stop_reason == "model_error" and result.steps[-1].error == "model_error"


def test_final_answer_tool_ends_the_run_under_required_tool_choice():
    result, requests = _run(
        [call("add", {"a": 1, "b": 2}), call("final_answer", {"answer": "3"})], tool_choice="required"
    )
    assert result.answer == "3" and result.stop_reason == "answer"
    assert requests[0]["tool_choice"] == "required"
    assert "final_answer" in [t["function"]["name"] for t in requests[0]["tools"]]


# --- persistence: a research run killed mid-task in another process, resumed here ------------------------
CHILD = textwrap.dedent("""
    import json, os, sys
    from lab.llm.openai_client import OpenAILLM
    from phase13_react.research import research
    from phase13_react.state_store import AgentStateStore
    from phase13_react.tools import Toolbox, tool

    LOG = os.environ["P13_TOOL_LOG"]

    def logged(name):
        def fn(**kw):
            with open(LOG, "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "tool": name}) + "\\n")
            return f"{name} result 42"
        return fn

    @tool(name="search_notes")
    def search_notes(query: str) -> str:
        "Search."
        return logged("search_notes")(query=query)

    @tool(name="read_chunk")
    def read_chunk(chunk_id: str) -> str:
        "Read."
        return logged("read_chunk")(chunk_id=chunk_id)

    @tool(name="calculator")
    def calculator(expression: str) -> str:
        "Compute."
        return logged("calculator")(expression=expression)

    TOOLS = Toolbox([search_notes, read_chunk, calculator])
    if __name__ == "__main__":
        llm = OpenAILLM("scripted", base_url=sys.argv[1], api_key="sk-scripted", max_attempts=1, timeout_s=600)
        research(llm, "What is 6 * 7?", TOOLS, AgentStateStore(), sys.argv[2])
""")


def _research_script(block_compute: bool):
    def reply(body):
        messages = body["messages"]
        step = messages[-1]["content"]
        if "response_format" in body:
            if "(plan)" in step:
                return say(json.dumps({"search_query": "six times seven", "plan": "search, read, compute"}))
            return say(json.dumps({"answer": "42", "citations": ["notes.md#0"]}))
        name = body["tools"][0]["function"]["name"]
        if name == "calculator" and block_compute:
            return say("never", delay_s=120)  # the process is killed while waiting here
        return call(
            name,
            {
                "search_notes": {"query": "q"},
                "read_chunk": {"chunk_id": "notes.md#0"},
                "calculator": {"expression": "6*7"},
            }[name],
        )

    return reply


def test_research_run_killed_mid_task_resumes_without_redoing_steps(tmp_path, monkeypatch):

    (tmp_path / "p13_child.py").write_text(CHILD)
    log = tmp_path / "tools.log"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("P13_TOOL_LOG", str(log))
    env = {
        **os.environ,
        "P13_TOOL_LOG": str(log),
        "LAB_DATABASE_URL": db.database_url(),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]),
    }
    run_id = f"p13-test-kill-{os.getpid()}-{time.time_ns()}"
    store = AgentStateStore(env["LAB_DATABASE_URL"])
    with ScriptedServer(_research_script(block_compute=True)) as srv:
        child = subprocess.Popen(
            [sys.executable, str(tmp_path / "p13_child.py"), srv.openai_url, run_id], env=env, cwd=REPO
        )
        try:
            deadline = time.monotonic() + 120
            while len(store.steps(run_id)) < 3 and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.2)
            while len(srv.requests) < 4 and time.monotonic() < deadline:  # the compute request is in flight
                time.sleep(0.1)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert [s.index for s in store.steps(run_id)] == [0, 1, 2]
    killed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["tool"] for e in killed] == ["search_notes", "read_chunk"]

    import p13_child  # the same tools, executed in this process now  # noqa: PLC0415 (the module this test wrote at run time)

    with ScriptedServer(_research_script(block_compute=False)) as srv:
        res = research(_llm(srv.openai_url), "What is 6 * 7?", p13_child.TOOLS, store, run_id)
    assert res.run.resumed_from == 3 and res.tool_executions == 1
    assert [s.index for s in store.steps(run_id)] == [0, 1, 2, 3, 4]
    assert res.run.answer == "42" and res.citations == ["notes.md#0"]
    executed = [json.loads(line)["tool"] for line in log.read_text().splitlines()]
    assert executed == ["search_notes", "read_chunk", "calculator"]  # no step ran twice
    assert len(srv.requests) == 2  # compute + answer: the stored steps were not asked again
    assert store.run(run_id)["status"] == "finished"
    # resuming a finished run does nothing at all
    with ScriptedServer([say("unused")]) as srv:
        again = research(_llm(srv.openai_url), "What is 6 * 7?", p13_child.TOOLS, store, run_id)
    assert again.tool_executions == 0 and srv.requests == [] and again.run.answer == "42"


# --- tiny runs of the four exercises ---------------------------------------------------------------------
def _tiny(module, tmp_path, **extra):
    exercise = module.EXERCISE
    doc = runner.execute(exercise, "cpu", {**exercise.tiny, **extra}, results_root=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    assert set(exercise.summary_metrics) <= set(doc["metrics"])
    return doc


def test_failure_modes_tiny(tmp_path):

    doc = _tiny(failure_modes, tmp_path)
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["modes_detected"] == 7 and m["crashes"] == 0 and m["scenarios_handled"] == 9
    assert all(m[f"{name}_count"] >= 1 for name in failure_modes.FAILURE_MODES)


def _react_script(body):
    if "tools" not in body:  # text mode: one action, then the answer
        last = body["messages"][-1]["content"]
        if last.startswith("Observation"):
            return say("Thought: done\nFinal Answer: 131072")
        return say(
            "Thought: read it\nAction: read_result_metric\nAction Input: "
            '{"exercise": "phase08.kv_cache", "metric": "kv_bytes_per_token"}'
        )
    if body["messages"][-1]["role"] == "tool":
        return call("final_answer", {"answer": "131072 bytes"})
    return call("read_result_metric", {"exercise": "phase08.kv_cache", "metric": "kv_bytes_per_token"})


def test_react_loop_tiny_against_a_scripted_model(tmp_path):

    with ScriptedServer(_react_script) as srv:
        doc = _tiny(
            react_loop, tmp_path, llm=f"openai:scripted@{srv.openai_url}", task_ids=["kv_bytes_token"], max_steps=3
        )
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["success_native_agent"] == 1.0 and m["success_text_agent"] == 1.0
    assert m["valid_step_rate_native_agent"] == 1.0 and m["steps_text_agent"] == 2
    assert m["success_native_agent_n"] == 1 and "success_native_base" in m  # the base model's row beside it
    assert (Path(doc["_path"]).parent / "trace.json").is_file()


def test_research_agent_tiny_with_real_tools(tmp_path):

    def script(body):
        step = body["messages"][-1]["content"]
        if "response_format" in body:
            if "(plan)" in step:
                return say(json.dumps({"search_query": "kv_bytes_per_token", "plan": "read the metric"}))
            return say(json.dumps({"answer": "4.29 GB", "citations": ["results/phase08/kv_cache/cpu/result.md#2"]}))
        name = body["tools"][0]["function"]["name"]
        return call(
            name,
            {
                "search_notes": {"query": "kv_cache_gb Llama 3.1 8B"},
                "read_chunk": {"chunk_id": "results/phase08/kv_cache/cpu/result.md#2"},
                "calculator": {"expression": "4.29 * 1"},
            }[name],
        )

    with ScriptedServer(script) as srv:
        doc = _tiny(research_agent, tmp_path, llm=f"openai:scripted@{srv.openai_url}")
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["task_success_agent"] == 1.0 and m["citation_accuracy_agent"] == 1.0
    assert m["steps_per_task_agent"] == 5 and m["tool_calls_per_task_agent"] == 3
    assert m["task_success_agent_n"] == 1 and "task_success_base" in m


def test_function_calling_tiny_both_wires_from_one_definition(tmp_path):
    """The OpenAI wire goes straight to the scripted model, the Anthropic wire through lab serve wrapping it."""

    def script(body):
        if body.get("tool_choice") == "none":
            return say("It needs 4.295 GB.")
        return call("kv_cache_gb", {"context": 32768})

    with ScriptedServer(script) as srv:
        doc = _tiny(function_calling, tmp_path, llm=f"openai:scripted@{srv.openai_url}")
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["calls"] == 2 and m["valid_call_rate"] == 1.0
    assert m["grounded_answer_rate_anthropic"] == 1.0 and m["grounded_answer_rate_openai"] == 1.0
    transcripts = json.loads((Path(doc["_path"]).parent / "wire_transcripts.json").read_text())
    by_wire = {t["wire"]: t["exchanges"] for t in transcripts}
    assert (
        by_wire["anthropic"][0]["request"]["tools"][0]["input_schema"]
        == by_wire["openai"][0]["request"]["tools"][0]["function"]["parameters"]
    )
    assert by_wire["anthropic"][0]["request"]["tool_choice"]["type"] == "any"
    assert by_wire["anthropic"][0]["response"]["content"][0]["type"] == "tool_use"
    assert by_wire["anthropic"][1]["request"]["messages"][-1]["content"][0]["type"] == "tool_result"
    assert by_wire["openai"][1]["request"]["messages"][-1]["role"] == "tool"


def test_function_calling_hosted_without_a_key_is_skipped(tmp_path, monkeypatch):

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    doc = runner.execute(
        function_calling.EXERCISE,
        "cpu",
        {**function_calling.EXERCISE.tiny, "llm": "anthropic:claude-haiku-4-5"},
        results_root=tmp_path,
        quiet=True,
    )
    assert doc["status"] == "skipped" and "ANTHROPIC_API_KEY" in doc["reason"]
