"""Phase 15 resilience: retry, breaker, fallback, idempotent effects and the fault proxy, against
scripted OpenAI-compatible servers on loopback (never mocks of our own code)."""

import json
import threading
import time

import pybreaker
import pytest

from lab.db import connect
from lab.llm.base import LLMError
from lab.llm.openai_client import OpenAILLM
from lab.llm.scripted_server import ScriptedServer, error, say
from lab.runner import execute
from phase15_production.faults import FaultProxy, FaultSpec, fault_proxy, first_attempts_served, read_log
from phase15_production.resilience import EXERCISE, STRATEGIES, bare_from_log
from phase15_production.resilient_calls import (
    Breaker,
    IdempotentEffects,
    ResilientLLM,
    RetryPolicy,
    client_for,
    is_transient,
    retry_after_s,
)


class ScriptedOpenAI(ScriptedServer):
    """A scripted OpenAI-compatible server: each request takes the next step ("ok", an HTTP status as int,
    or (status, retry_after)); once the steps are spent it answers "ok"."""

    def __init__(self, *steps, reply: str = "scripted reply"):
        def answer(step):
            if step == "ok":
                return say(reply, usage=(3, 2))
            status, after = step if isinstance(step, tuple) else (step, None)
            return error(status, f"scripted {status}", retry_after=after)

        super().__init__([answer(step) for step in (*steps, "ok")])

    @property
    def spec(self) -> str:
        return f"openai:m@{self.openai_url}"


MSG = [{"role": "user", "content": "hi"}]


def test_retry_honours_retry_after_and_never_retries_a_400():

    waits = []
    policy = RetryPolicy(max_attempts=4, sleep=waits.append)
    with ScriptedOpenAI((429, 7), 503, "ok") as server:
        client = client_for(server.spec)
        assert policy.call(lambda: client.chat(MSG)).text == "scripted reply"
        assert len(server.requests) == 3
        assert waits[0] == 7.0 and 0 <= waits[1] <= policy.max_wait_s  # Retry-After, then jittered backoff
    waits.clear()
    with ScriptedOpenAI(400, "ok") as server:
        with pytest.raises(LLMError) as err:
            policy.call(lambda: client_for(server.spec).chat(MSG))
        assert err.value.status == 400 and len(server.requests) == 1 and waits == []


def test_retry_gives_up_after_max_attempts_with_the_last_error():

    with ScriptedOpenAI(500, 500, 529, "ok") as server:
        with pytest.raises(LLMError) as err:
            RetryPolicy(max_attempts=3, sleep=lambda s: None).call(lambda: client_for(server.spec).chat(MSG))
        assert err.value.status == 529 and len(server.requests) == 3


def test_breaker_goes_closed_open_half_open_closed():
    import pybreaker  # noqa: PLC0415 (pybreaker loads only on the path that uses it)

    with ScriptedOpenAI(500, 500, "ok") as server:
        client, breaker = client_for(server.spec), Breaker("scripted", fail_max=2, reset_timeout_s=0.2)
        for _ in range(2):
            with pytest.raises(LLMError):
                breaker.call(client.chat, MSG)
        assert breaker.state == "open"
        with pytest.raises(pybreaker.CircuitBreakerError):  # open: refused without a request
            breaker.call(client.chat, MSG)
        assert len(server.requests) == 2
        time.sleep(0.25)  # past reset_timeout_s: the next call is the half-open trial
        assert breaker.call(client.chat, MSG).text == "scripted reply"
        assert breaker.state == "closed" and len(server.requests) == 3
    assert dict(breaker.transitions) == {"closed->open": 1, "open->half-open": 1, "half-open->closed": 1}


def test_breaker_does_not_count_a_callers_400():

    with ScriptedOpenAI(400, 400, 400) as server:
        client, breaker = client_for(server.spec), Breaker("scripted", fail_max=2)
        for _ in range(3):
            with pytest.raises((LLMError, pybreaker.CircuitBreakerError)):
                breaker.call(client.chat, MSG)
        assert breaker.state == "closed" and not breaker.transitions


def test_fallback_serves_when_the_primary_fails_and_records_who_served():

    with ScriptedOpenAI(*[503] * 50) as primary, ScriptedOpenAI(reply="from fallback") as fallback:
        llm = ResilientLLM(
            [primary.spec, fallback.spec],
            policy=RetryPolicy(max_attempts=2, sleep=lambda s: None),
            fail_max=2,
            reset_timeout_s=60,
        )
        replies = [llm.chat(MSG).text for _ in range(5)]
        assert replies == ["from fallback"] * 5
        assert llm.served() == {fallback.spec: 5}
        assert [r.provider_index for r in llm.records] == [1] * 5
        assert len(primary.requests) == 2  # two attempts opened its breaker; later calls skip it
        assert llm.breakers[0].state == "open" and llm.records[0].retries == 1


def test_fallback_is_not_used_for_a_bad_request():

    with ScriptedOpenAI(400) as primary, ScriptedOpenAI() as fallback:
        with pytest.raises(LLMError):
            ResilientLLM([primary.spec, fallback.spec]).chat(MSG)
        assert len(fallback.requests) == 0


def test_resilient_llm_refuses_a_client_that_retries_on_its_own():

    with pytest.raises(ValueError, match="max_attempts=3"):
        ResilientLLM([OpenAILLM("m", base_url="http://127.0.0.1:9/v1", max_attempts=3)])


def test_fault_proxy_injects_seeded_faults_the_policy_classifies():

    proxies = [FaultProxy("http://127.0.0.1:9", FaultSpec(rate=0.3, seed=5)) for _ in range(2)]
    draws = [[proxy.draw() for _ in range(200)] for proxy in proxies]
    assert draws[0] == draws[1] and sum(d is not None for d in draws[0]) == 60  # exactly 30% of every deck of 20
    assert all(sum(d is not None for d in draws[0][i : i + 20]) == 6 for i in range(0, 200, 20))
    with ScriptedOpenAI() as upstream:
        for kind in ("429", "529", "truncated", "timeout"):
            spec = FaultSpec(rate=1.0, kinds={kind: 1.0}, retry_after_s=2, hang_s=1.0)
            with fault_proxy(upstream.url, spec) as proxy:
                with pytest.raises(LLMError) as err:
                    client_for(f"openai:m@{proxy.url}/v1", timeout_s=0.3).chat(MSG)
                assert is_transient(err.value), kind
                assert retry_after_s(err.value) == (2.0 if kind == "429" else None)
                assert proxy.counts == {kind: 1}
        with fault_proxy(upstream.url, FaultSpec(rate=0.0)) as proxy:
            assert client_for(f"openai:m@{proxy.url}/v1").chat(MSG).text == "scripted reply"


@pytest.fixture
def effects():

    table = f"p15_test_effects_{threading.get_ident() % 100000}"
    store = IdempotentEffects(table=table, wait_s=10)
    yield store
    with connect(store.url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")


def test_idempotent_effect_runs_once_under_concurrent_retries(effects):
    ran = []

    def publish():
        ran.append(1)
        time.sleep(0.1)  # still running when the duplicates arrive
        return {"post": 42}

    results = []
    threads = [threading.Thread(target=lambda: results.append(effects.run_once("job-1", publish))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ran) == 1 and results == [{"post": 42}] * 6
    assert effects.executed == 1 and effects.deduplicated == 5


def test_a_failed_effect_releases_its_key_for_a_retry(effects):
    def broken():
        raise RuntimeError("smtp down")

    with pytest.raises(RuntimeError):
        effects.run_once("job-2", broken)
    assert effects.run_once("job-2", lambda: "sent") == "sent"
    assert effects.run_once("job-2", lambda: "sent twice") == "sent"


def test_resilience_exercise_tiny_run_has_no_duplicate_effects(tmp_path):

    doc = execute(EXERCISE, "cpu", dict(EXERCISE.tiny), out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    out = tmp_path / "phase15" / "resilience" / "cpu"
    saved = json.loads((out / "result.json").read_text())
    m = {k: v["value"] for k, v in saved["metrics"].items()}
    assert m["duplicate_side_effects"] == 0
    for strategy in STRATEGIES:  # no faults: every strategy completes every job in one request each
        assert m[f"completion_rate_{strategy}_0pct"] == 1.0 and m[f"completion_rate_{strategy}_0pct_n"] == 4
        assert m[f"calls_{strategy}_0pct"] >= 4
        assert "max_s_" + strategy + "_0pct" in m and "p99_s_" + strategy + "_0pct" not in m  # 4 jobs: a max
    # the bare figure is recomputed from the proxy's log, written next to the result
    log = read_log(out / "proxy_log.jsonl")
    timeout = saved["tables"]["timing"]["rows"][0][1]
    served, jobs = bare_from_log(log, 0.5, timeout)
    assert jobs == 4 and m["completion_rate_bare_50pct"] == served / jobs
    assert not [f for f in saved["failure_modes"] if "proxy log says" in f]
    # the fallback has its own faulty path: its proxy injected faults at the same rate
    fallback_rows = [r for r in log if r["strategy"] == "fallback" and r["path"] == "fallback" and r["rate"] == 0.5]
    assert all(r["fault"] is None for r in log if r["rate"] == 0.0)
    assert 0.0 <= m["fallback_share_50pct"] <= 1.0 and "fallback_share_50pct_ci_low" in m
    assert {r["path"] for r in log if r["strategy"] == "fallback"} <= {"primary", "fallback"}
    if fallback_rows:
        assert len({r["prompt"] for r in fallback_rows}) <= 4
    table = saved["tables"]["by_strategy"]
    for row in table["rows"]:  # a delivery that reached the effect either ran it or was answered from the table
        cell = dict(zip(table["columns"], row))
        assert cell["effects run"] + cell["effects deduplicated"] == cell["deliveries reaching effect"]
        rate, n = (
            cell["completion [95% CI] (n)"].split()[0],
            cell["completion [95% CI] (n)"].split("(n=")[1].rstrip(")"),
        )
        assert cell["effects run"] == round(float(rate) * int(n))
        assert cell["duplicate effects"] == 0
        assert "(n=" in cell["completion [95% CI] (n)"]
    assert (out / "resilience.png").stat().st_size > 0


def test_the_bare_figure_from_the_log_counts_only_first_attempts_served_in_time():

    def row(i, prompt, served, seconds=0.1):
        return {
            "i": i,
            "fault": None if served else "500",
            "status": 200 if served else 500,
            "served": served,
            "tokens": 5,
            "seconds": seconds,
            "prompt": prompt,
        }

    rows = [
        row(0, "a", False),
        row(1, "a", True),  # retried: a bare client failed it
        row(2, "b", True),
        row(3, "b", True),  # served, then redelivered after a lost ack
        row(4, "c", True, seconds=9.0),
    ]  # served after the client had given up
    assert first_attempts_served(rows, within_s=5.0) == (1, 3)


def test_a_fallback_behind_its_own_fault_deck_can_fail():
    """The negative control for the old design: with every request to both paths faulted, the
    + fallback client completes nothing (a fallback called directly would have completed all)."""

    with ScriptedOpenAI() as upstream:
        spec = dict(rate=1.0, kinds={"500": 1.0})
        with (
            fault_proxy(upstream.url, FaultSpec(seed=0, **spec)) as a,
            fault_proxy(upstream.url, FaultSpec(seed=1, **spec)) as b,
        ):
            llm = ResilientLLM(
                [f"openai:m@{a.url}/v1", f"openai:m@{b.url}/v1"],
                policy=RetryPolicy(max_attempts=2, sleep=lambda s: None),
                fail_max=None,
            )
            with pytest.raises(LLMError):
                llm.chat(MSG)
            assert len(a.log) == 2 and len(b.log) == 2 and not llm.breakers
            assert [r["status"] for r in a.log + b.log] == [500] * 4 and llm.served() == {"none": 1}
