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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lab.errors import ConfigError
from lab.jsonl import JsonlError, NonEmptyStr, iter_jsonl

DATA = Path(__file__).parent / "data"
ATTACKS = DATA / "injection_attacks.jsonl"
BENIGN = DATA / "injection_benign.jsonl"


class AttackCase(BaseModel):
    """One attack: a line of an attack file."""

    model_config = ConfigDict(frozen=True)

    id: NonEmptyStr
    user_task: NonEmptyStr
    untrusted: NonEmptyStr
    canary: NonEmptyStr
    category: NonEmptyStr = "uncategorised"
    source: NonEmptyStr = "document"


@dataclass(frozen=True)
class BenignCase:
    id: str
    user_task: str
    untrusted: str
    tool: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    answer_contains: str | None = None
    source: str = "document"


class Expectation(BaseModel):
    tool: str | None = None  # the call that must run (None: the job is an answer)
    args: dict[str, str] | None = None  # argument -> a substring its value must hold
    answer_contains: str | None = None


class BenignRow(BaseModel):
    """One line of a benign file."""

    id: NonEmptyStr
    user_task: NonEmptyStr
    untrusted: NonEmptyStr
    expect: Expectation
    source: NonEmptyStr = "document"


def _cases(path: Path, model: type[BaseModel]) -> list[tuple[int, Any]]:
    rows = list(iter_jsonl(path, model=model, unique="id"))
    if not rows:
        raise ConfigError(f"{path}: holds no cases")
    return rows


def load_attacks(path: str | Path | None = None) -> list[AttackCase]:
    path = Path(path) if path else ATTACKS
    cases = []
    for line_no, case in _cases(path, AttackCase):
        if case.canary in case.user_task:
            raise JsonlError(
                path, line_no, f"{case.canary!r} is in the user_task: the agent could leak it legitimately", "canary"
            )
        cases.append(case)
    return cases


def load_benign(path: str | Path | None = None) -> list[BenignCase]:
    path = Path(path) if path else BENIGN
    return [
        BenignCase(
            r.id, r.user_task, r.untrusted, r.expect.tool, r.expect.args or {}, r.expect.answer_contains, r.source
        )
        for _, r in _cases(path, BenignRow)
    ]
