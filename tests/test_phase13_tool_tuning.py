"""Phase 13 tool-use tuning: the generated data keeps its held-out splits apart, its rows are the prompts
inference builds, the adapter is published with a recipe that matches, and the exercise runs end to end."""

import json
from pathlib import Path

import jsonschema
import pytest

from lab import runner
from lab.llm.base import ToolCall
from lab.llm.constrained import render_tool_call, repeated_call_at, tools_prompt
from lab.llm.local import LocalLLM
from phase13_react import tool_tuning
from phase13_react.loop import FINAL_ANSWER, final_answer_tool
from phase13_react.research_tools import safe_eval
from phase13_react.tool_adapter import PUBLISHED, check_published
from phase13_react.tool_use_data import (
    FUNCTIONS,
    PROJECT_TEMPLATES,
    READER_METRICS,
    generate,
    research_task_metrics,
    training_rows,
)


@pytest.fixture(scope="module")
def data():
    return generate()


def test_generation_is_deterministic(data):
    assert generate.__wrapped__().sha256() == data.sha256()  # a fresh generation, not the cached one
    assert generate(seed=1).sha256() != data.sha256()


def test_held_out_splits_never_reach_training(data):
    train_text = json.dumps([e.to_dict() for e in data.train])
    for fn in FUNCTIONS:
        assert (fn.name in train_text) is (not fn.heldout), fn.name  # held-out functions: not even as distractors
    assert "search_notes" not in train_text  # the held-out tool
    assert {e.family for e in data.train} & {"indirect"} == set()
    held_prefixes = {t.split("{")[0] for k in PROJECT_TEMPLATES.values() for t in k.get("heldout", ())} - {""}
    assert not any(e.messages[0]["content"].startswith(p) for e in data.train for p in held_prefixes)
    assert not set(READER_METRICS) & research_task_metrics()  # phase13.research_agent stays a held-out measure
    train_requests = {e.messages[0]["content"] for e in data.train}
    for split, examples in data.heldout.items():
        assert examples, split
        assert not {e.messages[0]["content"] for e in examples} & train_requests, split
    assert not {t.question for t in data.multistep} & train_requests
    assert len([e for x in data.heldout.values() for e in x]) + len(data.multistep) >= 100


def test_every_gold_call_validates_against_its_offered_schema(data):
    for e in data.train + [e for x in data.heldout.values() for e in x]:
        if "call" not in e.gold:
            assert all(t["name"] != e.function or e.kind != "irrelevant" for t in e.tools), e.id
            continue
        tool = next(t for t in e.tools if t["name"] == e.gold["call"]["name"])
        jsonschema.validate(e.gold["call"]["arguments"], tool["input_schema"])


def test_multistep_answers_come_from_running_the_tools(data):

    calc = [t for t in data.multistep if t.id.split("-")[1] == "calculator"]
    assert calc
    for task in calc:
        expression = (
            task.question.split("of ", 1)[-1].split(",")[0].rstrip(".")
            if "value of" in task.question
            else task.question.replace("Work out ", "").replace(", please.", "")
        )
        assert float(task.contains[0]) == pytest.approx(safe_eval(expression), rel=1e-3)


def test_training_rows_are_the_prompts_inference_builds(data):
    """A row's turns before its last assistant turn, templated with a generation prompt, are exactly the
    tokens LocalLLM sends for that request; the target is the Hermes call block (or the text)."""

    llm = LocalLLM("smollm2-135m-instruct")
    example = next(e for e in data.train if e.kind == "final")  # has a call and a tool result in its history
    row = training_rows([example])[0]
    tok = llm.tokenizer
    prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    mode = "required" if example.mode == "agent" else "auto"
    ids, *_ = llm._prompt(example.messages, example.system, example.tools, None, mode)
    assert list(prompt) == list(ids)
    call_turn = row["messages"][-3]
    call = example.messages[1]["tool_calls"][0]
    assert call_turn["content"] == render_tool_call(call)
    assert tools_prompt(example.tools) in row["messages"][0]["content"]


def test_repeated_call_is_found_at_its_start():
    one = render_tool_call(ToolCall("a", "f", {"x": 1, "y": 2}))
    same = render_tool_call(ToolCall("b", "f", {"y": 2, "x": 1}))
    other = render_tool_call(ToolCall("c", "g", {"x": 1}))
    assert repeated_call_at(one) is None
    assert repeated_call_at(one + "\n" + other) is None
    text = one + "\n" + other + "\n" + same
    assert repeated_call_at(text) == text.rindex("<tool_call>")


def test_final_answer_with_citations_is_one_action():
    tool = final_answer_tool(cite=True)
    assert tool["name"] == FINAL_ANSWER and tool["input_schema"]["required"] == ["answer", "citations"]
    jsonschema.validate({"answer": "4.29 GB", "citations": ["results/x.md#2"]}, tool["input_schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"answer": "4.29 GB"}, tool["input_schema"])
    assert "citations" not in final_answer_tool()["input_schema"]["properties"]


def test_same_value_accepts_what_a_caller_would():
    assert tool_tuning.same_value(75, 75.0) and tool_tuning.same_value("Paris ", "paris")
    assert tool_tuning.same_value({"adults": 2, "children": 0}, {"children": 0, "adults": 2})
    assert not tool_tuning.same_value(["a", "b"], ["b", "a"]) and not tool_tuning.same_value(True, 1)


def test_published_adapter_matches_the_current_recipe():
    """The committed smollm2-135m-agent was trained from the recipe the code states now (data included)."""

    record = check_published()
    assert (PUBLISHED / "adapter_model.safetensors").stat().st_size <= 5 * 1024 * 1024
    assert record["params"]["data"]["sha256"] == generate().sha256()


def test_tool_tuning_tiny_runs_base_and_tuned(tmp_path):
    exercise = tool_tuning.EXERCISE
    doc = runner.execute(exercise, "cpu", dict(exercise.tiny), results_root=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    m = doc["metrics"]
    for label in ("base", "tuned"):
        n = m[f"decision_accuracy_{label}_n"]["value"]
        assert n == 2 * len(tool_tuning.DECISION_SPLITS)
        low, high = m[f"decision_accuracy_{label}_ci_low"]["value"], m[f"decision_accuracy_{label}_ci_high"]["value"]
        assert 0 <= low <= m[f"decision_accuracy_{label}"]["value"] <= high <= 1
    assert {"base_vs_tuned", "decisions_by_split", "tuned_misses"} <= set(doc["tables"])
    assert (Path(doc["_path"]).parent / "training_curve.png").is_file()
