"""The constrained yes/no judge behind 12.5's faithfulness and relevancy: failures are counted, not scored."""

from types import SimpleNamespace

import pytest

from phase12_rag_storage.rag_judge import YesNoJudge, statements


class _ReplyLLM:
    """A hosted-style LLM (does not score choices) that returns canned replies in turn."""

    spec = "fake:json"
    scores_choices = False

    def __init__(self, replies):
        self.replies = list(replies)
        self.schemas = []

    def chat(self, messages, system=None, max_tokens=0, temperature=0.0, json_schema=None):

        self.schemas.append(json_schema)
        return SimpleNamespace(text=self.replies.pop(0))


class _ProbsLLM:
    spec = "fake:probs"
    scores_choices = True

    def __init__(self, p_yes):
        self.p_yes = p_yes

    def choice_probs(self, messages, choices, system=None, prefix=""):
        assert choices == [" Yes", " No"] and prefix == "Verdict:"
        return {" Yes": self.p_yes * 0.5, " No": (1 - self.p_yes) * 0.5}  # renormalised by the judge


def test_statements_are_the_answers_sentences():
    text = "GQA shares K/V heads. It shrinks the cache by four!  Ok. Why does it matter? Because memory."
    assert statements(text) == ["GQA shares K/V heads.", "It shrinks the cache by four!", "Why does it matter?"]
    assert statements("") == [] and len(statements("One two three. " * 20, limit=8)) == 8


def test_json_judge_counts_an_unparseable_reply_as_a_failure_of_that_question_only():
    llm = _ReplyLLM(['{"verdict": "yes"}', "Sure, it is supported!", '{"verdict": "no"}', '{"verdict": "maybe"}'])
    judge = YesNoJudge(llm)
    assert judge.method == "json"
    faith = judge.faithfulness("First claim here. Second claim here. Third claim here.", ["ctx"])
    assert (faith.value, faith.judged, faith.failed) == (0.5, 2, 1)
    rel = judge.relevancy("q?", "a")  # an out-of-schema verdict is a failure too
    assert (rel.value, rel.judged, rel.failed) == (None, 0, 1)
    assert llm.schemas[0]["properties"]["verdict"]["enum"] == ["yes", "no"]


def test_choice_probs_judge_reads_p_yes_and_never_fails_to_parse():
    judge = YesNoJudge(_ProbsLLM(0.8))
    assert judge.method == "choice_probs"
    assert judge.relevancy("q?", "a").value == pytest.approx(0.8)
    faith = judge.faithfulness("One claim here. Another claim here.", ["ctx"])
    assert faith.value == pytest.approx(0.8) and faith.failed == 0
    assert judge.faithfulness("", ["ctx"]).value is None  # nothing to check: no score, no failure
