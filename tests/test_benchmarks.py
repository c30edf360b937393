"""The tool-call benchmark end to end on its tiny config, and its judge of a reply."""

import pytest

from benchmarks.demo_time import replay
from benchmarks.setup_time import EXERCISE as SETUP
from benchmarks.tool_calls import EXERCISE, TOOLS, judge, load_prompts
from lab.llm import ChatResponse, ToolCall
from lab.runner import execute
from lab.scheduler import Job


def reply(calls=(), text="", stop="tool_use"):
    return ChatResponse(text=text, provider="t", model="t", tool_calls=list(calls), stop_reason=stop)


def test_judge_names_what_is_wrong_with_a_reply():
    ok = reply([ToolCall("1", "get_weather", {"city": "Oslo", "unit": "celsius"})])
    assert judge(ok, "get_weather") == (True, True, "valid")
    assert judge(ok, "calculator") == (True, False, "valid")
    bad_enum = reply([ToolCall("1", "get_weather", {"city": "Oslo", "unit": "kelvin"})])
    valid, right, outcome = judge(bad_enum, "get_weather")
    assert (valid, right) == (False, True) and outcome.startswith("get_weather: unit: 'kelvin' is not one of")
    missing = reply([ToolCall("1", "set_reminder", {"text": "stretch"})])
    assert judge(missing, "set_reminder")[2] == "set_reminder: arguments: 'minutes_from_now' is a required property"
    assert judge(reply(text="It is sunny.", stop="end_turn"), "get_weather") == (False, False, "no tool call")
    assert judge(reply(text="<tool_call>\n{", stop="max_tokens"), "get_weather")[2] == "cut off by the token budget"


def test_every_prompt_names_a_known_tool():
    prompts = load_prompts(1000)
    assert len(prompts) >= 50 and {p["tool"] for p in prompts} == {t["name"] for t in TOOLS}


@pytest.mark.slow
def test_tiny_benchmark_run(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    metrics = {k: v["value"] for k, v in doc["metrics"].items()}
    assert metrics["validity_constrained"] == 1.0 and metrics["tool_call_rate_constrained"] == 1.0
    assert 0.0 <= metrics["validity_prompt_only"] <= 1.0 and metrics["tokens_per_s_constrained"] > 0
    assert "constraint_overhead_pct" in metrics
    rows = doc["tables"]["replies"]["rows"]
    assert len(rows) == 3 * EXERCISE.tiny["n_prompts"]


def test_setup_time_benchmark_clones_and_times_the_command(tmp_path):

    doc = execute(SETUP, "cpu", SETUP.tiny, out=tmp_path)  # `make --dry-run setup`: the plumbing, in seconds
    assert doc["status"] == "ok", doc["reason"]
    assert doc["metrics"]["setup_wall_s"]["value"] > 0 and doc["metrics"]["venv_mb"]["value"] == 0  # nothing installed


def test_setup_time_benchmark_reports_a_failing_command(tmp_path):

    doc = execute(SETUP, "cpu", {"command": "make no-such-target"}, out=tmp_path)
    assert doc["status"] == "failed" and "`make no-such-target` exited 2" in doc["reason"]


def test_demo_time_replays_the_schedule_with_dependencies():

    def jobs():  # sft (10 s) -> dpo (5 s) -> judge (1 s), and an independent 12 s exercise
        return [
            Job("sft", [], 1),
            Job("dpo", [], 1, deps={"sft"}),
            Job("judge", [], 1, deps={"dpo"}),
            Job("rag", [], 1),
        ]

    seconds = {"sft": 10, "dpo": 5, "judge": 1, "rag": 12}
    assert replay(jobs(), seconds, workers=1) == 28  # one after another
    assert replay(jobs(), seconds, workers=2) == 16  # the sft chain is the critical path: it starts first
