"""lab.jsonl: one reader for every JSON-lines file; each bad line names the file, the line and the field."""

from __future__ import annotations

import gzip
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from lab.errors import ConfigError
from lab.jsonl import JsonlError, NonEmptyStr, iter_jsonl, numbered_lines, read_jsonl, write_jsonl


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: NonEmptyStr
    answer: float
    kind: Literal["a", "b"] = "a"


def error(path, **kwargs) -> JsonlError:
    with pytest.raises(JsonlError) as err:
        read_jsonl(path, **kwargs)
    return err.value


def test_rows_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "x", "answer": 1}\n\n   \n{"id": "y", "answer": 2.5, "kind": "b"}\n')
    assert read_jsonl(path) == [{"id": "x", "answer": 1}, {"id": "y", "answer": 2.5, "kind": "b"}]
    assert [(n, r.id) for n, r in iter_jsonl(path, model=Row)] == [(1, "x"), (4, "y")]
    assert [n for n, _ in numbered_lines(path)] == [1, 4]


def test_gz_reads_and_writes_like_plain(tmp_path):
    rows = [{"id": "é", "answer": 1}, {"id": "b", "answer": 2}]
    assert write_jsonl(tmp_path / "rows.jsonl.gz", rows) == 2
    assert gzip.open(tmp_path / "rows.jsonl.gz", "rt", encoding="utf-8").read().startswith('{"id": "é"')
    assert read_jsonl(tmp_path / "rows.jsonl.gz") == rows
    write_jsonl(tmp_path / "sub" / "rows.jsonl", rows)
    assert read_jsonl(tmp_path / "sub" / "rows.jsonl", model=Row)[0] == Row(id="é", answer=1)


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "x", "answer": 1}\n\n{"id": oops}\n')
    err = error(path)
    assert str(err).startswith(f"{path}:3: not valid JSON (")
    assert (err.path, err.line, err.field) == (path, 3, None)
    assert isinstance(err, ValueError) and isinstance(err, ConfigError)


def test_bad_gz_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"id": "x", "answer": 1}\n{"id": "y", "answer": "two"}\n')
    assert (
        str(error(path, model=Row)) == f"{path}:2: field 'answer': Input should be a valid number, "
        "unable to parse string as a number, got 'two'"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"answer": 1}', "field 'id': Field required"),
        ('{"id": "", "answer": 1}', "field 'id': Input should be a non-empty string, got ''"),
        ('{"id": "x", "answer": 1, "kind": "c"}', "field 'kind': Input should be 'a' or 'b', got 'c'"),
        ('{"id": "x", "answer": 1, "color": "red"}', "field 'color': Extra inputs are not permitted, got 'red'"),
        ('["x", 1]', "expected a JSON object, got list"),
        ('{"kind": "c"}', "field 'id': Field required (and 2 more problems on this line)"),
    ],
)
def test_model_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "ok", "answer": 0}\n' + line + "\n")
    assert str(error(path, model=Row)) == f"{path}:2: {message}"


def test_nested_field_is_named_by_its_path(tmp_path):
    class Outer(BaseModel):
        inner: dict[str, Row]

    path = tmp_path / "rows.jsonl"
    path.write_text('{"inner": {"first": {"id": "x", "answer": []}}}\n')
    err = error(path, model=Outer)
    assert err.field == "inner.first.answer" and str(err).startswith(f"{path}:1: field 'inner.first.answer': ")


def test_required_keys_without_a_model(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "prompt": "p"}\n{"id": 2}\n')
    assert str(error(path, required=("id", "prompt"))) == f"{path}:2: field 'prompt': Field required"
    assert read_jsonl(path, required=("id",)) == [{"id": 1, "prompt": "p"}, {"id": 2}]


def test_unique_field_names_both_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "answer": 1}\n{"answer": 2, "id": null}\n{"id": "a", "answer": 3}\n')
    assert str(error(path, unique="id")) == f"{path}:3: field 'id': 'a' is used twice (first on line 1)"


def test_missing_file_is_a_config_error(tmp_path):
    err = error(tmp_path / "nope.jsonl")
    assert str(err) == f"{tmp_path / 'nope.jsonl'}: no such file" and err.line is None


def test_iter_is_lazy_rows_before_a_bad_line_arrive_first(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "x", "answer": 1}\nnot json\n')
    rows = iter_jsonl(path)
    assert next(rows) == (1, {"id": "x", "answer": 1})
    with pytest.raises(JsonlError, match=r"rows\.jsonl:2: not valid JSON"):
        next(rows)
