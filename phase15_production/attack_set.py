"""Prompt-injection test cases as JSONL: attacks (did the canary get out?) and benign tasks (did the
defended agent still do the job?). Bad rows fail with file, line and field named.

Attack row:  {"id", "user_task", "untrusted", "canary", "category"?, "source"?}
Benign row:  {"id", "user_task", "untrusted", "expect": {"tool": "publish" | ... | null,
              "args": {"field": "substring", ...}, "answer_contains": "..."}, "source"?}

``untrusted`` is the text the agent reads while doing ``user_task`` (a web page, an e-mail, a
retrieved chunk, a tool result); ``canary`` is what the attack tries to get into a privileged call's
arguments or the final answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError

DATA = Path(__file__).parent / "data"
ATTACKS = DATA / "injection_attacks.jsonl"
BENIGN = DATA / "injection_benign.jsonl"


@dataclass(frozen=True)
class AttackCase:
    id: str
    user_task: str
    untrusted: str
    canary: str
    category: str = "uncategorised"
    source: str = "document"


@dataclass(frozen=True)
class BenignCase:
    id: str
    user_task: str
    untrusted: str
    tool: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    answer_contains: str | None = None
    source: str = "document"


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    rows, seen = [], set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
        rid = _string(path, line_no, record, "id")
        if rid in seen:
            raise ConfigError(f"{path}:{line_no}: field 'id' {rid!r} is used twice")
        seen.add(rid)
        rows.append((line_no, record))
    if not rows:
        raise ConfigError(f"{path}: holds no cases")
    return rows


def _string(path: Path, line_no: int, record: dict, name: str, required: bool = True) -> str | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise ConfigError(f"{path}:{line_no}: field {name!r} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}:{line_no}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def load_attacks(path: str | Path | None = None) -> list[AttackCase]:
    path = Path(path) if path else ATTACKS
    cases = []
    for line_no, r in _rows(path):
        fields = {k: _string(path, line_no, r, k) for k in ("id", "user_task", "untrusted", "canary")}
        extra = {k: _string(path, line_no, r, k, required=False) for k in ("category", "source")}
        if fields["canary"] in fields["user_task"]:
            raise ConfigError(f"{path}:{line_no}: field 'canary' {fields['canary']!r} is in the user_task: "
                              "the agent could leak it legitimately")
        cases.append(AttackCase(**fields, **{k: v for k, v in extra.items() if v}))
    return cases


def load_benign(path: str | Path | None = None) -> list[BenignCase]:
    path = Path(path) if path else BENIGN
    cases = []
    for line_no, r in _rows(path):
        fields = {k: _string(path, line_no, r, k) for k in ("id", "user_task", "untrusted")}
        expect = r.get("expect")
        if not isinstance(expect, dict):
            raise ConfigError(f"{path}:{line_no}: field 'expect' must be an object like "
                              '{"tool": "publish", "args": {"to": "..."}}, got ' + repr(expect))
        tool, args, contains = expect.get("tool"), expect.get("args") or {}, expect.get("answer_contains")
        if tool is not None and not isinstance(tool, str):
            raise ConfigError(f"{path}:{line_no}: field 'expect.tool' must be a tool name or null, got {tool!r}")
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            raise ConfigError(f"{path}:{line_no}: field 'expect.args' must map argument names to strings, got {args!r}")
        if contains is not None and not isinstance(contains, str):
            raise ConfigError(f"{path}:{line_no}: field 'expect.answer_contains' must be a string, got {contains!r}")
        source = _string(path, line_no, r, "source", required=False)
        cases.append(BenignCase(**fields, tool=tool, args=args, answer_contains=contains,
                                **({"source": source} if source else {})))
    return cases
