"""``LLMWrapper``: a wrapper forwards the whole ``LLM`` interface, so a stack of them (metering, tracing, a
fallback chain, a recorder, a cache) offers exactly what the model underneath offers — a judge on the
stack reads choice probabilities when the model scores choices, and asks for JSON when it does not.
Scripted ``LLM`` subclasses stand in for the models (no download, no server)."""

import inspect

import pytest

from lab.llm import LLM, CapabilityError, ChatResponse, LLMError, LLMWrapper, Usage
from lab.llm.base import PromptTooLongError
from phase10_alignment.rubric_judge import Dimension, Judge, Rubric
from phase12_rag_storage.rag_judge import YesNoJudge
from phase14_frameworks.metered import RecordingLLM
from phase15_production.resilient_calls import ResilientLLM, RetryPolicy
from phase15_production.telemetry import TracedLLM
from phase16_capstone.metering import StageMeter

RUBRIC = Rubric(
    name="t",
    version="1",
    dimensions=(Dimension("accuracy", "is it right", {1: "bad", 5: "great"}),),
    flags=("confident_hallucination",),
)
DIGITS = {"1": 0.0, "2": 0.0, "3": 0.5, "4": 0.5, "5": 0.0}  # expected score 3.5
YES_NO = {" Yes": 0.2, " No": 0.8}


class ChatOnly(LLM):
    """A hosted-like model: chat, no choice scoring (``scores_choices`` stays False)."""

    provider = "fake"

    def __init__(self, model="chat-only"):
        super().__init__(model)
        self.chats = 0

    def chat(self, messages, system=None, tools=None, max_tokens=512, temperature=0.0, json_schema=None, **kw):
        self.chats += 1
        text = (
            '{"reasoning": "ok", "scores": {"accuracy": 4}, "flags": {"confident_hallucination": false}}'
            if json_schema
            else "hello"
        )
        return ChatResponse(text=text, provider=self.provider, model=self.model, usage=Usage(7, 3), cost_usd=0.0)


class Scoring(ChatOnly):
    """A local-like model: a forward pass reads the distribution of the next token over ``choices``;
    ``fail_with`` makes every call raise it (a provider that is down)."""

    provider = "local"
    scores_choices = True
    parallel_requests = 4

    def __init__(self, model="scoring", fail_with: Exception | None = None):
        super().__init__(model)
        self.fail_with = fail_with
        self.scored = []

    def chat(self, messages, **kwargs):
        if self.fail_with is not None:
            raise self.fail_with
        return super().chat(messages, **kwargs)

    def choice_probs(self, messages, choices, system=None, prefix="", use_prefix_cache=True):
        if self.fail_with is not None:
            raise self.fail_with
        self.scored.append((tuple(choices), prefix, use_prefix_cache))
        return dict(DIGITS) if choices[0] == "1" else dict(YES_NO)

    def count_tokens(self, messages, system=None, **kw):
        return len(" ".join([system or ""] + [m["content"] for m in messages]).split())

    def prepare(self, messages, *, timeout_s=None, **kw):
        if "too long" in messages[-1]["content"]:
            raise PromptTooLongError(f"{self.spec}: the prompt is too long")


def _resilient(*chain):

    return ResilientLLM(list(chain), policy=RetryPolicy(max_attempts=1, sleep=lambda s: None))


def _stage_meter(inner):

    return StageMeter(inner)


def _traced(inner):

    return TracedLLM(inner)


def _recording(inner):

    return RecordingLLM(inner)


def _memo(inner):
    from phase15_production.injection import _memo  # noqa: PLC0415 (its name is bound otherwise at module level)

    return _memo(inner)


WRAPPERS = {
    "LLMWrapper": LLMWrapper,
    "StageMeter": _stage_meter,
    "TracedLLM": _traced,
    "ResilientLLM": _resilient,
    "RecordingLLM": _recording,
    "Memo": _memo,
}


def stack(model):
    """What the capstone engine runs with ``--fallback``: metering(tracing(resilient(model, fallback)))."""
    return _stage_meter(_traced(_resilient(model, ChatOnly("fallback"))))


def offers_choice_scoring(llm) -> bool:
    """The capability as callers see it: the flag, and the inner model's own probabilities back."""
    if not llm.scores_choices:
        return False
    return llm.choice_probs([{"role": "user", "content": "Rate it."}], list("12345"), prefix="score: ") == DIGITS


def test_the_wrapper_base_declares_every_part_of_the_llm_interface():
    """A name added to ``LLM`` and not forwarded by ``LLMWrapper`` would be the base's default on every wrapper
    (``scores_choices`` False, ``count_tokens`` None): each public name is defined on the wrapper itself."""
    public = {name for name in dir(LLM) if not name.startswith("_")}
    assert {
        "chat",
        "stream",
        "prepare",
        "count_tokens",
        "describe",
        "choice_probs",
        "scores_choices",
        "parallel_requests",
        "spec",
        "provider",
    } <= public
    assert public <= set(vars(LLMWrapper)), sorted(public - set(vars(LLMWrapper)))


@pytest.mark.parametrize("name", WRAPPERS)
def test_each_wrapper_forwards_the_capability_and_forwards_nothing_by_getattr(name):
    wrap = WRAPPERS[name]
    inner = Scoring()
    llm = wrap(inner)
    assert isinstance(llm, LLMWrapper)
    assert not any("__getattr__" in vars(cls) for cls in type(llm).__mro__), "forward by declaring, not __getattr__"
    assert offers_choice_scoring(llm) and inner.scored  # the inner model's probabilities, computed by it
    assert llm.parallel_requests == 4 and llm.count_tokens([{"role": "user", "content": "a b c"}]) == 3
    assert llm.chat([{"role": "user", "content": "hi"}]).text == "hello"
    assert [x if isinstance(x, str) else x.text for x in llm.stream([{"role": "user", "content": "hi"}])] == [
        "hello",
        "hello",
    ]
    plain = wrap(ChatOnly())
    assert plain.scores_choices is False and not offers_choice_scoring(plain)
    with pytest.raises(CapabilityError, match="chat-only.*scores_choices"):
        plain.choice_probs([{"role": "user", "content": "Rate it."}], list("12345"))


def test_the_engine_stack_keeps_choice_scoring_and_meters_it():
    model = Scoring()
    llm = stack(model)
    assert llm.scores_choices and llm.parallel_requests == 4
    msgs = [{"role": "user", "content": "Rate the answer."}]
    assert (
        llm.choice_probs(msgs, list("12345"), system="Be fair.", prefix="accuracy score: ", use_prefix_cache=False)
        == DIGITS
    )
    assert model.scored == [(tuple("12345"), "accuracy score: ", False)]  # extra keywords reach the model
    # counted as prompt tokens (the primary's count + the prefix's words), no output; priced as the local model
    assert llm.usage == {"calls": 1, "input_tokens": 5 + 2, "output_tokens": 0, "cost_usd": 0.0}
    resilient = llm.inner.inner
    assert resilient.served() == {model.spec: 1}  # a choice_probs call is a call of the chain too


def test_a_judge_on_the_stack_scores_by_probabilities_and_on_a_chat_model_by_json():
    verdict = Judge(stack(Scoring()), RUBRIC).score("q", "a")
    assert verdict.method == "choice_probs" and verdict.scores == {"accuracy": pytest.approx(3.5)}
    assert verdict.flags == {"confident_hallucination": False}
    assert YesNoJudge(stack(Scoring())).method == "choice_probs"

    hosted = ChatOnly()
    judge = Judge(stack(hosted), RUBRIC)
    assert judge.method == "json"
    verdict = judge.score("q", "a")
    assert verdict.method == "json" and verdict.scores == {"accuracy": 4.0} and hosted.chats == 1
    assert YesNoJudge(stack(ChatOnly())).method == "json"
    with pytest.raises(ValueError, match="scores_choices"):
        Judge(stack(ChatOnly()), RUBRIC, method="choice_probs")


def test_a_wrapper_that_does_not_forward_is_caught():
    """The regression this base prevents: a wrapper written against ``LLM`` that forwards only ``chat`` hides
    the capability (the judge silently switches method) — the checks above fail on it."""

    class ChatForwarder(LLM):
        def __init__(self, inner):
            super().__init__(inner.model)
            self.inner, self.provider = inner, inner.provider

        def chat(self, messages, **kwargs):
            return self.inner.chat(messages, **kwargs)

    llm = _stage_meter(ChatForwarder(Scoring()))
    assert not offers_choice_scoring(llm)
    assert Judge(llm, RUBRIC).method == "json"
    assert {n for n in dir(LLM) if not n.startswith("_")} - set(vars(ChatForwarder))  # the completeness check too


def test_a_fallback_chain_scores_only_with_providers_that_can():

    msgs = [{"role": "user", "content": "Rate it."}]
    down = TimeoutError("primary down")  # transient: the chain moves on
    # the primary fails: a fallback that scores choices serves the call
    chain = _resilient(Scoring("primary", fail_with=down), ChatOnly("hosted"), Scoring("local2"))
    assert chain.choice_probs(msgs, list("12345")) == DIGITS
    assert chain.records[-1].served_by == "local:local2"
    assert chain.records[-1].errors == [
        "local:primary: TimeoutError: primary down",
        "fake:hosted: cannot score choices (scores_choices is False)",
    ]
    # ... and when none can, the error says why each was not used
    chain = _resilient(Scoring("primary", fail_with=down), ChatOnly("hosted"))
    with pytest.raises(LLMError, match=r"primary down.*fake:hosted: cannot score choices"):
        chain.choice_probs(msgs, list("12345"))
    # the capability is the primary's: a chat-only primary does not score, whatever its fallbacks do
    chain = _resilient(ChatOnly("hosted"), Scoring("local2"))
    assert chain.scores_choices is False
    with pytest.raises(CapabilityError):
        chain.choice_probs(msgs, list("12345"))
    # chat still falls back to any provider, and a stream is one resilient chat
    chain = _resilient(Scoring("primary", fail_with=down), ChatOnly("hosted"))
    assert chain.chat(msgs).text == "hello" and chain.records[-1].served_by == "fake:hosted"
    assert chain.describe() == {
        "id": "resilient:local:primary > fake:hosted",
        "chain": ["local:primary", "fake:hosted"],
    }
    assert chain.spec == "resilient:local:primary > fake:hosted" and chain.provider == "resilient"
    assert isinstance(chain, ResilientLLM) and inspect.isgenerator(chain.stream(msgs))
    chain.prepare([{"role": "user", "content": "too long"}])  # not the primary's refusal: a fallback may fit it


def test_recording_llm_records_refusals_at_prepare_and_choice_probs():
    rec = _recording(Scoring())
    with pytest.raises(LLMError, match="too long"):
        rec.prepare([{"role": "user", "content": "too long"}], timeout_s=1.0)
    rec.prepare([{"role": "user", "content": "fine"}])  # passes: nothing recorded until the call itself
    rec.choice_probs([{"role": "user", "content": "Rate it."}], list("12345"), system="Be fair.", prefix="s: ")
    assert [(c.error is not None, c.input_tokens, c.output_tokens) for c in rec.calls] == [(True, 0, 0), (False, 5, 0)]
    assert rec.totals()["calls"] == 2 and rec.totals()["errors"] == 1


def test_stage_meter_counts_streams_like_chats():
    meter = _stage_meter(ChatOnly())
    meter.chat([{"role": "user", "content": "hi"}])
    list(meter.stream([{"role": "user", "content": "hi"}]))
    assert meter.usage == {"calls": 2, "input_tokens": 14, "output_tokens": 6, "cost_usd": 0.0}
