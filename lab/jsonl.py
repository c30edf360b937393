"""The lab's one JSON-lines reader (and writer): ``.jsonl`` and ``.jsonl.gz``, blank lines skipped.

Every bad line fails the same way, with a ``JsonlError`` whose message names the file, the line and the
field — ``tasks.jsonl:7: field 'answer': Field required`` — so a person fixing a data file is sent to the
exact spot. A row's shape is a pydantic model (``model=``): the same validator that checks the lab's
configs and wire formats checks its data files, and its messages are the ones quoted.

    read_jsonl(path)                               # every row as parsed JSON
    read_jsonl(path, required=("id", "prompt"))    # objects that carry these keys
    read_jsonl(path, model=Row, unique="id")       # Row instances, no id used twice
    for line_no, row in iter_jsonl(path, model=Row): ...   # lazily, with line numbers for the caller's own checks
    for line_no, text in numbered_lines(path): ...         # the raw lines, for a caller that handles bad JSON itself
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, cast

from pydantic import AfterValidator, BeforeValidator, TypeAdapter, ValidationError

from lab.errors import ConfigError


class JsonlError(ConfigError, ValueError):
    """A JSON-lines file is missing or one of its lines is not what its reader expects."""

    def __init__(self, path: str | Path, line: int | None, problem: str, field: str | None = None):
        self.path, self.line, self.field, self.problem = Path(path), line, field, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: " + (f"field {field!r}: " if field else "") + problem)


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))  # text mode: a TextIOWrapper
    return open(path, mode, encoding="utf-8")


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, read lazily; a ``.gz`` file is decompressed."""
    path = Path(path)
    if not path.is_file():
        raise JsonlError(path, None, "no such file")
    with _open(path, "r") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.strip():
                yield line_no, line.rstrip("\r\n")


def _non_empty_string(value: str) -> str:
    if not value.strip():
        raise ValueError("Input should be a non-empty string")
    return value


def _non_empty_list(value: list) -> list:
    if not value:
        raise ValueError("Input should be a non-empty list")
    return value


def _number_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


# Field types the row models share: a string with some text in it, a non-empty list of such strings, and
# a row id (a string; a number is taken as its text).
NonEmptyStr = Annotated[str, AfterValidator(_non_empty_string)]
NonEmptyStrList = Annotated[list[NonEmptyStr], AfterValidator(_non_empty_list)]
RowId = Annotated[str, BeforeValidator(_number_to_str)]


def _field_error(path: Path, line_no: int, err: ValidationError) -> JsonlError:
    errors = err.errors()
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    cause = (first.get("ctx") or {}).get("error")
    problem = str(cause) if first["type"] == "value_error" and cause else first["msg"]
    if first["type"] != "missing":
        problem += f", got {first['input']!r}"
    if len(errors) > 1:
        problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} on this line)"
    return JsonlError(path, line_no, problem, field)


def iter_jsonl(
    path: str | Path, *, model: Any = None, required: Iterable[str] = (), unique: str | None = None
) -> Iterator[tuple[int, Any]]:
    """(line number, row) of every non-blank line, read lazily.

    ``model``: a pydantic model (or any type pydantic validates) each line must be an object of; the row
    is the validated value. ``required``: keys each line's object must carry (the row stays a dict).
    ``unique``: a field no two rows may share a value of (rows where it is absent, null or "" are not compared).
    """
    path = Path(path)
    adapter = TypeAdapter(model) if model is not None else None
    required = tuple(required)
    seen: dict[Any, int] = {}
    for line_no, line in numbered_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlError(path, line_no, f"not valid JSON ({exc.msg})") from None
        if adapter is not None or required or unique:
            if not isinstance(row, dict):
                raise JsonlError(path, line_no, f"expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise JsonlError(path, line_no, "Field required", key)
        if adapter is not None:
            try:
                row = adapter.validate_python(row)
            except ValidationError as err:
                raise _field_error(path, line_no, err) from None
        if unique:
            value = row.get(unique) if isinstance(row, dict) else getattr(row, unique, None)
            if value not in (None, ""):
                if value in seen:
                    raise JsonlError(path, line_no, f"{value!r} is used twice (first on line {seen[value]})", unique)
                seen[value] = line_no
        yield line_no, row


def read_jsonl(
    path: str | Path, *, model: Any = None, required: Iterable[str] = (), unique: str | None = None
) -> list[Any]:
    """Every row of a JSON-lines file (``.jsonl`` or ``.jsonl.gz``); see ``iter_jsonl`` for the checks."""
    return [row for _, row in iter_jsonl(path, model=model, required=required, unique=unique)]


def write_jsonl(path: str | Path, rows: Iterable[Any], **dumps_kwargs: Any) -> int:
    """Write one JSON value a line (UTF-8, non-ASCII kept as is; ``.gz`` compressed), making the folder;
    returns the number of rows. ``dumps_kwargs`` go to ``json.dumps`` (e.g. ``default=str``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dumps_kwargs = {"ensure_ascii": False, **dumps_kwargs}
    lines = [json.dumps(row, **dumps_kwargs) + "\n" for row in rows]
    with _open(path, "w") as fh:
        fh.write("".join(lines))
    return len(lines)
