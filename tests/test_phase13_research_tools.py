"""Phase 13 research tools and the task set: answers re-derived from the committed results, the
checker, loader errors that name file/line/field, and tools that fail as observations."""

from __future__ import annotations

import json

import pytest

from lab.errors import ConfigError
from lab.llm.base import ToolCall
from phase13_react import tasks as T
from phase13_react.research_tools import calculator, kv_cache_gb, read_result_metric, safe_eval
from phase13_react.tools import Toolbox


def test_shipped_answers_match_the_committed_results():
    shipped = T.load_tasks()
    assert len(shipped) >= 20
    for task in shipped:
        assert task.derivation, task.id
        assert T.derive(task.derivation) == pytest.approx(task.answer) if task.answer_type == "number" \
            else str(T.derive(task.derivation)) == task.answer, (task.id, "stale: run python -m phase13_react.tasks --write")
        assert task.evidence["source"].startswith("results/"), task.id


def test_the_file_is_what_the_specs_write():
    rows = [json.loads(line) for line in T.TASKS_FILE.read_text().splitlines() if line.strip()]
    assert rows == json.loads(json.dumps(T.build_rows()))


@pytest.mark.parametrize("reply,ok", [
    ("The cache takes 4.29 GB.", True), ("about 4.3 GB", True), ("4.5 GB", False), ("", False), (None, False),
    ("1 2 3 4 4.29", False),  # a list of guesses
])
def test_number_check(reply, ok):
    task = T.Task("t", "q", 4.29, "number", 0.0429)
    assert T.check(task, reply) is ok


def test_number_check_reads_thousands_separators_and_text_match():
    assert T.check(T.Task("t", "q", 131072, "number", 0), "131,072 bytes per token")
    text = T.Task("t", "q", "all-minilm-l6-v2", "text")
    assert T.check(text, "It used All-MiniLM-L6-v2.")
    assert not T.check(text, "It used MPNet.")


@pytest.mark.parametrize("line,needle", [
    ('{"question": "q", "answer": 1}', "field 'answer_type' is missing"),
    ('{"question": "q", "answer": "x", "answer_type": "number"}', "field 'answer' must be a number"),
    ('{"question": "q", "answer": 1, "answer_type": "float"}', "field 'answer_type' must be one of"),
    ('{"question": "q", "answer": 1, "answer_type": "number", "tolerance": -1}', "field 'tolerance'"),
    ('{"question": "", "answer": 1, "answer_type": "number"}', "field 'question'"),
    ('not json', "not valid JSON"),
])
def test_loader_errors_name_file_line_and_field(tmp_path, line, needle):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"question": "fine", "answer": 2, "answer_type": "number"}\n' + line + "\n")
    with pytest.raises(ConfigError) as err:
        T.load_tasks(path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_calculator_is_arithmetic_only():
    assert safe_eval("(17.2 - 4.3) / 4.3 * 100") == pytest.approx(300.0)
    assert safe_eval("sqrt(16) + max(1, 2)") == 6
    for bad in ("__import__('os').system('true')", "open('x')", "2 ** 10000", "1/0", "x + 1", "[1, 2]"):
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_tools_fail_as_observations_that_name_the_fix():
    box = Toolbox([calculator, read_result_metric, kv_cache_gb])
    unknown_metric = box.execute(ToolCall("1", "read_result_metric", {"exercise": "phase08.kv_cache", "metric": "kv_cache"}))
    assert unknown_metric.outcome == "tool_error" and "kv_cache_gb" in unknown_metric.content
    unknown_ex = box.execute(ToolCall("2", "read_result_metric", {"exercise": "phase08.kv_cach", "metric": "x"}))
    assert unknown_ex.outcome == "tool_error" and "phase08.kv_cache" in unknown_ex.content
    ok = box.execute(ToolCall("3", "read_result_metric", {"exercise": "phase08.kv_cache", "metric": "kv_bytes_per_token"}))
    assert ok.outcome == "ok" and json.loads(ok.content)["value"] == 131072
    assert box.execute(ToolCall("4", "kv_cache_gb", {"context": 32768})).value == pytest.approx(4.295, abs=1e-3)
    assert box.execute(ToolCall("5", "calculator", {"expression": "exec('1')"})).outcome == "tool_error"
