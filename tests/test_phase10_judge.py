"""The judge API: strict verdict parsing, retry-then-failure, choice_probs scoring, hashes."""

import json

import pytest

from lab.llm import LLM, ChatResponse, LLMError
from phase10_alignment.rubric_judge import (
    Dimension,
    Judge,
    JudgeFailure,
    JudgeParseError,
    Rubric,
    Verdict,
    expected_score,
    parse_verdict,
    summarize,
    verdict_schema,
)

ANCHORS = {1: "bad", 3: "ok", 5: "great"}
RUBRIC = Rubric(
    name="test",
    version="1.0",
    dimensions=(Dimension("accuracy", "is it right", ANCHORS), Dimension("concise", "is it short", ANCHORS)),
    flags=("confident_hallucination",),
)
GOOD = {"reasoning": "fine", "scores": {"accuracy": 4, "concise": 2}, "flags": {"confident_hallucination": False}}


class ScriptedLLM(LLM):
    """A test double of the LLM interface: replies from a script, records what it was sent.

    It stands in for a model so that the judge's own retry logic is what is tested.
    """

    provider = "fake"

    def __init__(self, replies):
        super().__init__("scripted")
        self.replies = list(replies)
        self.calls = []

    def chat(self, messages, system=None, tools=None, max_tokens=512, temperature=0.0, json_schema=None):
        self.calls.append({"messages": messages, "system": system, "json_schema": json_schema})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return ChatResponse(text=reply, provider=self.provider, model=self.model)


class ProbsLLM(ScriptedLLM):
    """A test double with choice_probs: fixed distributions per choice set."""

    scores_choices = True

    def __init__(self, digits, yes_no):
        super().__init__([])
        self.digits, self.yes_no = digits, yes_no
        self.prefixes = []

    def choice_probs(self, messages, choices, system=None, prefix=""):
        self.prefixes.append(prefix)
        return dict(self.digits) if choices[0] == "1" else dict(self.yes_no)


def test_parse_verdict_accepts_a_valid_reply_in_a_fence():
    verdict = parse_verdict("Sure:\n```json\n" + json.dumps(GOOD) + "\n```", RUBRIC)
    assert verdict.scores == {"accuracy": 4.0, "concise": 2.0}
    assert verdict.flags == {"confident_hallucination": False}
    assert verdict.reasoning == "fine" and verdict.method == "json"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["scores"].pop("concise"), "scores.concise"),
        (lambda d: d["scores"].update(accuracy=6), "scores.accuracy"),
        (lambda d: d["scores"].update(accuracy=0), "scores.accuracy"),
        (lambda d: d["scores"].update(accuracy="4"), "scores.accuracy"),
        (lambda d: d["scores"].update(accuracy=3.5), "scores.accuracy"),
        (lambda d: d["scores"].update(accuracy=True), "scores.accuracy"),
        (lambda d: d["flags"].update(confident_hallucination="no"), "flags.confident_hallucination"),
        (lambda d: d["flags"].pop("confident_hallucination"), "flags.confident_hallucination"),
        (lambda d: d.pop("flags"), "flags"),
        (lambda d: d.pop("scores"), "scores"),
        (lambda d: d.update(reasoning=3), "reasoning"),
    ],
)
def test_parse_verdict_errors_name_the_field(mutate, field):
    reply = json.loads(json.dumps(GOOD))
    mutate(reply)
    with pytest.raises(JudgeParseError, match=f"'{field}'"):
        parse_verdict(json.dumps(reply), RUBRIC)


def test_parse_verdict_rejects_non_json_and_non_objects():
    with pytest.raises(JudgeParseError, match="not a JSON object"):
        parse_verdict("The answer is good, 4/5.", RUBRIC)
    with pytest.raises(JudgeParseError, match="expected an object"):
        parse_verdict("[1, 2]", RUBRIC)


def test_json_judge_retries_with_the_error_then_scores():
    bad = json.dumps({**GOOD, "scores": {"accuracy": 9, "concise": 2}})
    llm = ScriptedLLM(["no json here", bad, json.dumps(GOOD)])
    verdict = Judge(llm, RUBRIC, method="json", max_retries=2).score("What is KV cache?", "A cache.")
    assert isinstance(verdict, Verdict) and verdict.attempts == 3 and verdict.scores["accuracy"] == 4.0
    # the retry shows the model its bad reply and names the wrong field
    last = llm.calls[-1]["messages"]
    assert last[-2] == {"role": "assistant", "content": bad}
    assert "scores.accuracy" in last[-1]["content"]
    assert llm.calls[0]["json_schema"] == verdict_schema(RUBRIC)
    assert "What is KV cache?" in llm.calls[0]["messages"][0]["content"]


def test_json_judge_records_a_failure_after_the_retries_never_a_score():
    llm = ScriptedLLM(["nope", '{"scores": {}}', "still nope"])
    result = Judge(llm, RUBRIC, method="json", max_retries=2).score("q", "a")
    assert isinstance(result, JudgeFailure)
    assert result.attempts == 3 and result.replies == ["nope", '{"scores": {}}', "still nope"]
    assert "unparseable after 3 attempts" in result.reason
    assert not llm.replies  # exactly 1 + max_retries calls


def test_json_judge_turns_a_provider_error_into_a_failure():
    llm = ScriptedLLM([LLMError("fake:scripted: HTTP 529 after 3 attempts", status=529)])
    result = Judge(llm, RUBRIC, method="json").score("q", "a")
    assert isinstance(result, JudgeFailure) and "HTTP 529" in result.reason and result.replies == []


def test_auto_method_picks_choice_probs_only_when_the_llm_has_it():
    assert Judge(ScriptedLLM([]), RUBRIC).method == "json"
    assert Judge(ProbsLLM({}, {}), RUBRIC).method == "choice_probs"
    with pytest.raises(ValueError, match="choice_probs"):
        Judge(ScriptedLLM([]), RUBRIC, method="choice_probs")


def test_choice_probs_judge_takes_the_expected_score_and_flag_majority():
    digits = {"1": 0.0, "2": 0.0, "3": 0.5, "4": 0.5, "5": 0.0}
    llm = ProbsLLM(digits, {" Yes": 0.7, " No": 0.3})
    verdict = Judge(llm, RUBRIC).score("q", "a", reference="ref")
    assert verdict.method == "choice_probs"
    assert verdict.scores == {"accuracy": 3.5, "concise": 3.5}
    assert verdict.flags == {"confident_hallucination": True}
    assert verdict.details["confident_hallucination"] == {"Yes": 0.7, "No": 0.3}
    assert llm.prefixes == ["accuracy score: ", "concise score: ", "confident_hallucination:"]


def test_choice_probs_judge_fails_on_a_broken_distribution():
    llm = ProbsLLM({"1": float("nan"), "2": 0, "3": 0, "4": 0, "5": 0}, {" Yes": 1, " No": 0})
    result = Judge(llm, RUBRIC).score("q", "a")
    assert isinstance(result, JudgeFailure) and "accuracy" in result.reason


def test_expected_score_renormalises():
    assert expected_score({"1": 0.1, "2": 0.1, "3": 0.0, "4": 0.0, "5": 0.0}) == pytest.approx(1.5)


def test_hashes_change_with_the_rubric_and_are_stable():
    same = Rubric(name="test", version="1.0", dimensions=RUBRIC.dimensions, flags=RUBRIC.flags)
    assert same.sha256() == RUBRIC.sha256() and len(RUBRIC.sha256()) == 64
    capped = Rubric(
        name="test",
        version="1.1",
        dimensions=RUBRIC.dimensions,
        flags=RUBRIC.flags,
        instructions="a wrong core definition caps accuracy at 2",
    )
    assert capped.sha256() != RUBRIC.sha256()
    judge = Judge(ScriptedLLM([]), RUBRIC)
    assert len(judge.prompt_sha256) == 64
    assert judge.describe()["rubric_sha256"] == RUBRIC.sha256()


def test_rubric_validation_names_the_problem():
    with pytest.raises(ValueError, match="outside 1..5"):
        Dimension("x", "d", {0: "zero"})
    with pytest.raises(ValueError, match="repeat"):
        Rubric("r", "1", (Dimension("x", "d", ANCHORS), Dimension("x", "d", ANCHORS)))


def test_summarize_excludes_failures_from_means():
    v1 = Verdict({"accuracy": 4.0, "concise": 2.0}, {"confident_hallucination": True}, "", 1, "json")
    v2 = Verdict({"accuracy": 2.0, "concise": 4.0}, {"confident_hallucination": False}, "", 2, "json")
    summary = summarize([v1, JudgeFailure("bad", 3, ["x"]), v2], RUBRIC)
    assert summary["n"] == 3 and summary["n_scored"] == 2 and summary["n_failed"] == 1
    assert summary["means"] == {"accuracy": 3.0, "concise": 3.0} and summary["overall"] == 3.0
    assert summary["flag_rates"] == {"confident_hallucination": 0.5}
    assert summarize([JudgeFailure("bad", 1, [])], RUBRIC)["overall"] is None
