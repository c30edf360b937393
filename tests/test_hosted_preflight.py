"""A hosted judge's prerequisites are checked before any model loads: a missing ANTHROPIC_API_KEY skips
the a100 judge exercises at once, not after the GPU generations were paid for."""

import pytest

from lab import models
from lab.errors import ConfigError, MissingResource
from lab.llm import check_spec
from lab.registry import resolve
from lab.runner import execute


def test_check_spec_names_the_missing_key_and_builds_nothing(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingResource, match="anthropic:claude-sonnet-4-5: ANTHROPIC_API_KEY is not set"):
        check_spec("anthropic:claude-sonnet-4-5")
    with pytest.raises(MissingResource, match="OPENAI_API_KEY"):
        check_spec("openai:gpt-5")
    check_spec("openai:llama@http://127.0.0.1:8000/v1")  # your own server: no key needed
    check_spec("local:smollm2-135m-instruct")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    check_spec("anthropic:claude-sonnet-4-5")


def test_check_spec_rejects_a_malformed_spec(monkeypatch):
    for bad, why in [
        ("claude", "expected provider:model"),
        ("mistral:large", "unknown provider"),
        ("anthropic:@http://proxy", "no model name"),
    ]:
        with pytest.raises(ConfigError, match=why):
            check_spec(bad)
    monkeypatch.setenv("LAB_LLM", "nonsense")
    with pytest.raises(ConfigError, match="'nonsense'"):
        check_spec(None)  # like from_spec: None means $LAB_LLM


@pytest.mark.parametrize(
    "exercise_id", ["phase11.model_comparison", "phase11.contamination", "phase11.calibration", "phase10.judge"]
)
def test_a100_judge_exercises_skip_before_loading_anything_without_the_key(exercise_id, tmp_path, monkeypatch):

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("LAB_LLM", raising=False)

    def no_model(*args, **kwargs):
        pytest.fail("a model was loaded before the judge's API key was checked")

    monkeypatch.setattr(models, "load_causal_lm", no_model)
    monkeypatch.setattr(models, "resolve", no_model)
    (exercise,) = resolve(exercise_id)
    doc = execute(exercise, "a100", {}, out=tmp_path, quiet=True)
    assert doc["status"] == "skipped"
    assert doc["reason"].startswith("the judge cannot run: anthropic:claude-sonnet-4-5: ANTHROPIC_API_KEY is not set")
