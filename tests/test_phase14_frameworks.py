"""Phase 14 frameworks (LangGraph, CrewAI, the comparison) against a SCRIPTED OpenAI-compatible server.

The script is a ``lab.llm`` model served by ``lab serve`` on loopback: it calls the calculator a
set number of times, then answers 42 (through final_answer when it is offered), slowly enough that
a worker can be killed between nodes. Crash and approval tests run the LangGraph worker in separate
processes; nothing leaves the machine.
"""

import json
import os
import time
import uuid

import pytest

from lab.jsonl import read_jsonl
from lab.llm.base import LLM, ChatResponse, ToolCall, Usage
from lab.runner import execute
from lab.serve.background import serving
from phase13_react.research_tools import calculator
from phase13_react.tools import Toolbox
from phase14_frameworks import langgraph_research as lr
from phase14_frameworks.comparison import ADAPTERS, ROOT, adapter_lines, default_tasks, when_to_choose
from phase14_frameworks.comparison_tasks import TASKS_FILE, build_rows
from phase14_frameworks.langgraph_agent import time_travel


class ScriptedModel(LLM):
    """``n_calls`` calculator calls, then the answer; asked for CrewAI's text format, it replies
    without the ``Final Answer:`` marker (a format miss on purpose)."""

    provider = "scripted"

    def __init__(self, n_calls: int = 3, delay_s: float = 0.0):
        super().__init__("scripted-model")
        self.n_calls, self.delay_s = n_calls, delay_s

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
    ):
        time.sleep(self.delay_s)
        usage = Usage(20, 5)
        names = [t["name"] for t in tools or []]
        done = sum(1 for m in messages if m.get("role") == "tool")
        if "calculator" in names and done < self.n_calls:
            call = ToolCall(f"c{uuid.uuid4().hex[:6]}", "calculator", {"expression": f"6*7+{done}-{done}"})
            return ChatResponse("", self.provider, self.model, [call], usage, stop_reason="tool_use")
        if "final_answer" in names:
            call = ToolCall("cfinal", "final_answer", {"answer": "The answer is 42."})
            return ChatResponse("", self.provider, self.model, [call], usage, stop_reason="tool_use")
        if "Final Answer:" in (system or ""):
            return ChatResponse("The answer is 42.", self.provider, self.model, [], usage)
        return ChatResponse("Thought: I know it\nFinal Answer: The answer is 42.", self.provider, self.model, [], usage)


@pytest.fixture
def scripted():

    model = ScriptedModel(n_calls=3, delay_s=0.15)
    with serving(model) as url:
        yield url


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "six_sevens",
                "question": "What is 6 times 7?",
                "answer": 42,
                "answer_type": "number",
                "tolerance": 0,
            }
        )
        + "\n"
    )
    return str(path)


@pytest.fixture
def saver():

    s = lr.open_saver(lr.database_url())
    yield s
    s.conn.close()


def _metrics(doc):
    assert doc["status"] == "ok", doc.get("reason") or doc.get("error")
    return {k: v["value"] for k, v in doc["metrics"].items()}


def test_a_rejected_answer_is_not_published_and_time_travel_reruns_only_later_nodes(scripted, saver):
    from langgraph.types import Command  # noqa: PLC0415 (langgraph loads only on the path that uses it)

    model = lr.chat_model(f"{scripted}/v1", "none", "scripted-model")
    graph = lr.build_graph(model, Toolbox([calculator]), checkpointer=saver, approval=True)
    thread_id = f"test-reject-{uuid.uuid4().hex[:6]}"
    lr.run_thread(graph, thread_id, lr.initial_state("What is 6 times 7?", 8))
    assert graph.get_state(lr.thread(thread_id)).next == ("review",)
    values = lr.run_thread(graph, thread_id, Command(resume="reject"))
    assert values["stop_reason"] == "rejected"
    assert (
        saver.conn.execute("SELECT count(*) AS n FROM p14_published WHERE thread_id = %s", (thread_id,)).fetchone()["n"]
        == 0
    )

    plain = lr.build_graph(model, Toolbox([calculator]), checkpointer=saver)
    thread_id = f"test-travel-{uuid.uuid4().hex[:6]}"
    lr.run_thread(plain, thread_id, lr.initial_state("What is 6 times 7?", 8))
    tt = time_travel(plain, saver.conn, thread_id)
    assert tt["nodes_before_fork_rerun"] == 0 and tt["nodes_replayed"] >= 3
    assert tt["checkpoints_after"] > tt["checkpoints_before"] and tt["answer_replayed"] == tt["answer_original"]


def test_langgraph_exercise_tiny_run(scripted, tasks_file, tmp_path):
    from phase14_frameworks.langgraph_agent import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    doc = execute(
        EXERCISE,
        "cpu",
        {**EXERCISE.tiny, "tasks": tasks_file, "max_steps": 6, "llm": f"openai:scripted-model@{scripted}/v1"},
        out=tmp_path,
        quiet=True,
    )
    m = _metrics(doc)
    assert m["success_rate"] == 1.0 and m["steps_per_task"] == 4 and m["llm_calls_per_task"] == 4
    assert m["checkpoints_per_run"] == 9  # input, start, 4 agent turns, 3 tool nodes
    # SIGKILL in one process, continued by another: finished nodes never run twice
    table = doc["tables"]["crash"]
    crashes = [dict(zip(table["columns"], row)) for row in table["rows"]]
    assert [c["kill once checkpoints >="] for c in crashes] == [2, 4] and m["kills_mid_run"] == 2
    assert all(c["checkpoints at kill"] >= c["kill once checkpoints >="] and c["nodes run after"] >= 1 for c in crashes)
    assert crashes[-1]["nodes done before kill"] >= 2 and all(c["stop after resume"] == "answer" for c in crashes)
    assert m["nodes_reexecuted_after_crash"] == 0
    # the negative control: continued from an older checkpoint, the same counter sees the re-run nodes
    assert m["nodes_reexecuted_control"] > 0
    # approval: paused in one process (nothing published), approved in another (published once)
    assert m["approval_paused"] is True and m["published_after_approval"] == 1
    assert any("'approve' → 1 row(s) published, 0 agent/tool nodes re-run" in f for f in doc["findings"])
    assert m["replay_nodes_before_fork_rerun"] == 0


def test_crew_runs_against_the_server_with_home_isolated_and_counts_format_misses(scripted, tmp_path, monkeypatch):

    from phase14_frameworks.crewai_crew import EXERCISE  # noqa: PLC0415 (EXERCISE of several modules in this file)

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    doc = execute(
        EXERCISE,
        "cpu",
        {**EXERCISE.tiny, "llm": f"openai:scripted-model@{scripted}/v1"},
        out=tmp_path / "out",
        quiet=True,
    )
    m = _metrics(doc)
    # native: the Researcher calls its tool 3 times, then one call per agent; text: one call per agent
    assert m["llm_calls_native"] == 6 and m["llm_calls_text"] == 3
    assert m["tokens_native"] == 6 * 25 and m["empty_outputs_native"] == m["empty_outputs_text"] == 0
    assert m["text_format_prompts"] == 1 and m["text_format_misses"] == 1  # the Researcher's reply
    assert any("neither 'Final Answer:' nor 'Action:'" in f for f in doc["failure_modes"])
    rows = doc["tables"]["agents"]["rows"]
    assert [r[1] for r in rows] == ["Researcher", "Writer", "Editor"] * 2
    assert rows[1][6] == "The answer is 42."  # CrewAI stripped its marker from the Writer's reply
    assert rows[3][6] == "The answer is 42."  # and took the marker-less reply as the Researcher's answer
    assert not list(home.iterdir()) and os.environ["HOME"] == str(home)  # nothing written to the real HOME


def test_comparison_tiny_run_counts_every_framework_at_one_meter(scripted, tasks_file, tmp_path, monkeypatch):
    from phase14_frameworks.comparison import EXERCISE, OPENCLAW_ABSENT  # noqa: PLC0415 (EXERCISE of several modules in this file)

    monkeypatch.setenv("HOME", str(tmp_path))
    served = f"openai:scripted-model@{scripted}/v1"  # the scripted server stands in for the agent model
    doc = execute(
        EXERCISE,
        "cpu",
        {**EXERCISE.tiny, "tasks": tasks_file, "max_steps": 6, "models": ["agent"], "specs": {"agent": served}},
        out=tmp_path / "out",
        quiet=True,
    )
    m = _metrics(doc)
    assert m["success_raw_agent"] == m["success_langgraph_agent"] == m["success_crewai_agent"] == 1.0
    assert m["success_raw_agent_n"] == m["n_tasks_raw"] == m["n_tasks_crewai"] == 1
    assert m["success_raw_agent_ci_low"] < 1.0  # one task proves little, and the interval says so
    assert m["calls_raw_agent"] == m["calls_langgraph_agent"] == 4  # same agent, same script: same calls
    assert m["calls_crewai_agent"] == 4  # three tool calls and a plain answer
    assert m["prompt_chars_crewai_agent"] > 0 and m["prompt_chars_raw_agent"] > 0
    rows = {(r[0], r[1]): r for r in doc["tables"]["comparison"]["rows"]}
    assert set(rows) == {("raw Phase 13", "agent"), ("LangGraph", "agent"), ("CrewAI", "agent")}
    assert rows["LangGraph", "agent"][3] == m["loc_langgraph"] > 0
    assert OPENCLAW_ABSENT in doc["findings"]
    assert any("success does not separate" in f for f in doc["findings"])  # n = 1: no framework is "better"


def test_when_to_choose_speaks_only_where_intervals_separate():

    class Ctx:
        def __init__(self):
            self.findings = []

        def finding(self, text):
            self.findings.append(text)

    apart = {
        "success": (0.6, 0.8),
        "answered": (0.9, 1.0),
        "calls": (2, 1.8, 2.2),
        "tokens": (900, 800, 1000),
        "wall": (3, 2, 4),
    }
    close = {**apart, "success": (0.5, 0.7), "tokens": (950, 850, 1050)}
    far = {**apart, "success": (0.0, 0.1), "tokens": (5000, 4000, 6000)}
    ctx = Ctx()
    when_to_choose(ctx, {("A", "m"): apart, ("B", "m"): close})
    assert not any("do not overlap" in f for f in ctx.findings)
    ctx = Ctx()
    when_to_choose(ctx, {("A", "m"): apart, ("C", "m"): far})
    assert any(f.startswith("m: A answered more tasks correctly than C") for f in ctx.findings)
    assert any(f.startswith("m: A used fewer tokens per task than C") for f in ctx.findings)


def test_adapter_lines_count_named_definitions_without_blanks_comments_and_docstrings(tmp_path):

    f = tmp_path / "m.py"
    f.write_text(
        '"""Doc.\n\nMore."""\n\n# comment\nx = 1  # trailing\n\ndef f():\n    """Doc."""\n'
        "    return (x +\n            2)\n\n\ndef measure():\n    return 0\n"
    )
    assert adapter_lines(f, ["x", "f"]) == 4  # x = 1, def f():, return (x +, 2) -- measure() not counted
    with pytest.raises(ValueError, match="does not define"):
        adapter_lines(f, ["x", "gone"])


def test_every_adapter_definition_exists_and_the_task_files_are_current():

    assert all(adapter_lines(ROOT / p, names) > 0 for files in ADAPTERS.values() for p, names in files.items())
    assert read_jsonl(TASKS_FILE) == build_rows()
    tasks, _ = default_tasks()
    assert len(tasks) >= 30 and len({t.id for t in tasks}) == len(tasks)
