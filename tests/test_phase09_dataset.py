"""Phase 9.1: every filter on known bad rows, JSON repair, dedup, versioning, and the exercise end to end."""

import json
import random

import pytest

from lab.jsonl import read_jsonl
from lab.runner import execute
from phase09_finetuning import pipeline
from phase09_finetuning.data import make_raw
from phase09_finetuning.dataset import EXERCISE, RAW_PATH

LONG = (
    "The KV cache keeps keys and values of earlier tokens so each decoding step only computes the new "
    "token's projections and reads the rest from memory. Its size is two times layers times key-value "
    "heads times head dimension times tokens times bytes per element, so grouped-query attention and "
    "8-bit caches shrink it directly. Serving engines page it in fixed blocks to avoid fragmentation, "
    "share blocks between requests with a common prefix, and evict or offload blocks under memory pressure."
)


def rec(id, answer=LONG, question="What does the KV cache store?", topic="kv_cache"):
    return dict(id=id, topic=topic, question=question, answer=answer)


def write_raw(tmp_path, lines):
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_long_answer_fixture_passes_every_filter():
    assert len(LONG.split()) >= pipeline.MIN_ANSWER_WORDS
    assert pipeline.check_row(rec("ok")) is None


@pytest.mark.parametrize(
    "row, reason",
    [
        (rec("short", answer="Keys and values of past tokens."), "too_short"),
        (rec("chat", question="Where is the billing page for the pod?"), "off_topic"),
        (rec("chat2", answer=LONG + " Let's put the follow-up in the calendar."), "off_topic"),
        (rec("meta", answer="As we discussed above, " + LONG), "meta_reference"),
        (rec("meta2", answer=LONG + " The table above has the numbers."), "meta_reference"),
        (rec("meta3", answer="Like I said in the previous answer, " + LONG), "meta_reference"),
    ],
)
def test_each_content_filter_rejects_its_known_bad_row(row, reason):
    got = pipeline.check_row(row)
    assert got is not None and got[0] == reason, got


def test_unescaped_quotes_in_code_are_repaired():
    line = (
        '{"id": "c1", "topic": "serving", "question": "How to call it?", '
        '"answer": "Use OpenAI(base_url="http://localhost:8000/v1") then print("ok")."}'
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    fixed = pipeline.repair_json_line(line)
    assert fixed["answer"] == 'Use OpenAI(base_url="http://localhost:8000/v1") then print("ok").'
    assert fixed["id"] == "c1"


def test_truncated_or_non_json_lines_are_quarantined_not_guessed(tmp_path):
    raw = write_raw(
        tmp_path,
        [
            rec("good"),
            '{"id": "t", "topic": "x", "question": "q?", "answer": "cut off',
            "Q: loose text A: not json",
            rec("empty", answer=""),
        ],
    )
    records, quarantine, repaired, n = pipeline.parse_raw(raw)
    assert n == 4 and [r["id"] for r in records] == ["good"] and repaired == []
    assert [q["reason"] for q in quarantine] == ["malformed_json", "malformed_json", "missing_field"]
    assert quarantine[0]["where"] == "raw.jsonl:2" and "unrepairable" in quarantine[0]["detail"]
    assert "answer" in quarantine[2]["detail"]


def test_exact_and_near_duplicates_keep_the_first():
    reworded = LONG.replace("keeps keys and values", "stores the keys and values").replace("directly", "at once")
    other = rec("other", answer=" ".join(reversed(LONG.split())))
    kept, dropped, max_kept = pipeline.deduplicate([rec("a"), rec("a-again"), rec("b", answer=reworded), other])
    assert [r["id"] for r in kept] == ["a", "other"]
    assert [(d["id"], d["reason"]) for d in dropped] == [("a-again", "exact_duplicate"), ("b", "near_duplicate")]
    assert "with a" in dropped[1]["detail"] and max_kept < pipeline.NEAR_DUP_JACCARD


def test_version_hash_changes_with_content_only(tmp_path):

    def distinct_answer(i):  # unrelated word sequences: no two are near-duplicates
        return " ".join(f"w{random.Random(i).randrange(5000)}x{j}" for j in range(80))

    rows = [rec(f"r{i}", question=f"Question number {i}?", answer=distinct_answer(i)) for i in range(12)]
    first = pipeline.build(write_raw(tmp_path, rows))
    again = pipeline.build(write_raw(tmp_path, rows))
    assert first.kept_pairs == 12
    assert first.sha256 == again.sha256 and len(first.sha256) == 64
    rows[3]["answer"] += " One more sentence changes the content."
    changed = pipeline.build(write_raw(tmp_path, rows))
    assert changed.sha256 != first.sha256


def test_split_is_stable_per_topic():
    rows = [rec(f"id{i}", topic="a" if i % 2 else "b") for i in range(40)]
    train, evals = pipeline.split(rows)
    assert len(evals) == 4 and len(train) == 36
    assert {r["topic"] for r in evals} == {"a", "b"}
    train2, evals2 = pipeline.split(rows + [rec("new", topic="c")])
    assert [r["id"] for r in evals2] == [r["id"] for r in evals]


def test_committed_raw_file_is_what_make_raw_composes():
    assert RAW_PATH.read_text(encoding="utf-8") == "\n".join(make_raw.compose()) + "\n"


def test_shipped_raw_really_contains_every_failure_mode():
    result = pipeline.build(RAW_PATH)
    c = result.counts
    for reason in (
        "malformed_json",
        "missing_field",
        "too_short",
        "off_topic",
        "meta_reference",
        "exact_duplicate",
        "near_duplicate",
    ):
        assert c[reason] >= 1, reason
    assert c["repaired_json"] >= 1
    assert result.kept_pairs >= 300
    assert result.kept_pairs + len(result.quarantine) == result.raw_pairs
    for row in result.train + result.eval:
        msgs = row["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert len(msgs[1]["content"].split()) >= 75


def test_dataset_exercise_end_to_end(tmp_path):
    doc = execute(EXERCISE, "cpu", EXERCISE.tiny, out=tmp_path)
    assert doc["status"] == "ok", doc["reason"]
    m = {k: v["value"] for k, v in doc["metrics"].items()}
    assert m["raw_pairs"] == m["kept_pairs"] + sum(r[1] for r in doc["tables"]["filters"]["rows"])
    assert 0 < m["filter_rate"] < 20
    ref = {r["metric"]: r for r in doc["reference"]}
    assert ref["kept_pairs"]["seed"] == 550 and ref["kept_pairs"]["ours"] == m["kept_pairs"]
    out = tmp_path / "phase09" / "dataset" / "cpu"
    quarantine = read_jsonl(out / "quarantine.jsonl")
    assert len(quarantine) == m["raw_pairs"] - m["kept_pairs"]
    assert all(q["reason"] and q["detail"] for q in quarantine)
    assert doc["data"][0]["sha256"] in (out / "dataset_card.md").read_text()
