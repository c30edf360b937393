"""Phase 15 shared state: the 40001 retry contract and the contention exercise (separate processes)."""

import json
import os
import threading

import pytest

from lab.db import connect, database_url
from lab.errors import ConfigError
from lab.runner import execute
from phase15_production.contention import EXERCISE
from phase15_production.state import STRATEGIES, create_counters, increment, read_counter, run_transaction


@pytest.fixture(scope="module")
def pg_url():

    return database_url()


def test_run_transaction_reruns_a_transaction_aborted_with_40001(pg_url):
    """A concurrent commit between our read and our write makes PostgreSQL abort us (40001): the
    whole transaction runs again and its second attempt sees the other writer's value."""

    table = f"p15_test_tx_{os.getpid()}"
    with connect(pg_url, autocommit=True) as admin:
        create_counters(admin, table, ["c"])
    attempts = []

    def work(conn):
        value = conn.execute(f"SELECT value FROM {table} WHERE name = 'c'").fetchone()[0]
        if not attempts:  # first attempt: another agent commits in between
            with connect(pg_url, autocommit=True) as other:
                other.execute(f"UPDATE {table} SET value = value + 10 WHERE name = 'c'")
        attempts.append(value)
        conn.execute(f"UPDATE {table} SET value = %s WHERE name = 'c'", (value + 1,))
        return value + 1

    outcome = run_transaction(lambda: connect(pg_url, autocommit=True), work)
    with connect(pg_url, autocommit=True) as admin:
        final = read_counter(admin, table, "c")
        admin.execute(f"DROP TABLE {table}")
    assert outcome.retries == 1 and attempts == [0, 10]
    assert outcome.value == final == 11  # the other writer's +10 survived


def test_run_transaction_refuses_a_connection_inside_a_transaction(pg_url):

    with connect(pg_url) as conn:  # not autocommit: the SELECT opens a transaction
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="outside any transaction"):
            run_transaction(conn, lambda c: None)
    with pytest.raises(ValueError, match="isolation 'snapshot'"):
        run_transaction(lambda: None, lambda c: None, isolation="snapshot")


def test_counter_strategies_hold_under_threads(pg_url):
    """Four threads × 30: every safe strategy is exact; naive never gains."""

    table = f"p15_test_threads_{os.getpid()}"
    finals = {}
    for strategy in STRATEGIES:
        with connect(pg_url, autocommit=True) as admin:
            create_counters(admin, table, ["c"])

        def agent(strategy=strategy):
            with connect(pg_url, autocommit=True) as conn:
                for _ in range(30):
                    increment(conn, strategy, table, "c")

        threads = [threading.Thread(target=agent) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with connect(pg_url, autocommit=True) as admin:
            finals[strategy] = read_counter(admin, table, "c")
            admin.execute(f"DROP TABLE {table}")
    assert finals["naive"] <= 120
    assert {s: finals[s] for s in STRATEGIES if s != "naive"} == {
        "for_update": 120,
        "optimistic": 120,
        "serializable": 120,
    }


def test_contention_exercise_tiny_run_with_separate_processes(tmp_path):

    doc = execute(EXERCISE, "cpu", dict(EXERCISE.tiny), out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    saved = json.loads((tmp_path / "phase15" / "contention" / "cpu" / "result.json").read_text())
    m = {k: v["value"] for k, v in saved["metrics"].items()}
    expected = EXERCISE.tiny["agents"] * EXERCISE.tiny["updates"]
    assert m["expected_total"] == expected
    assert m["final_total_naive"] <= expected and m["lost_updates_naive"] == expected - m["final_total_naive"]
    for strategy in ("for_update", "optimistic", "serializable"):
        assert m[f"final_total_{strategy}"] == expected and m[f"lost_updates_{strategy}"] == 0
    rows = saved["tables"]["strategies"]["rows"]
    crdb = [r for r in rows if r[0] == "cockroachdb"]
    if not os.environ.get("LAB_CRDB_URL"):
        assert crdb and all("LAB_CRDB_URL is not set" in r[-1] for r in crdb)
    assert (tmp_path / "phase15" / "contention" / "cpu" / "contention.png").stat().st_size > 0


@pytest.mark.skipif(not os.environ.get("LAB_CRDB_URL"), reason="LAB_CRDB_URL is not set (no CockroachDB server here)")
def test_contention_on_cockroachdb(tmp_path):

    doc = execute(EXERCISE, "crdb", dict(EXERCISE.tiny), out=tmp_path, quiet=True)
    assert doc["status"] == "ok", doc.get("error")
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    for strategy in ("for_update", "optimistic", "serializable"):
        assert m[f"lost_updates_{strategy}_crdb"] == 0


def test_contention_config_names_a_bad_strategy():

    with pytest.raises(ConfigError, match="unknown strategy"):
        EXERCISE.config("cpu", {"strategies": ["naive", "pessimistic"]})
