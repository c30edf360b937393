"""HH-RLHF preference pairs: read, validate, split a dialogue into (prompt, chosen, rejected).

Each HH-RLHF record is two full dialogues, ``"\\n\\nHuman: …\\n\\nAssistant: …"``, that share every
turn but the last Assistant one. The reward model reads the two dialogues as they are; DPO needs the
shared prompt as chat messages and the two final answers as completions (trl's conversational
preference format).

The cpu profiles read a committed 600-record slice of harmless-base/test (data/SOURCE.txt, MIT);
the a100 profiles load ``Anthropic/hh-rlhf`` from the hub like the seed did.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.jsonl import read_jsonl

LOCAL_FILE = Path(__file__).parent / "data" / "hh-rlhf-harmless-base-test-first600.jsonl.gz"
HUB_ID = "Anthropic/hh-rlhf"

_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    chosen_text: str  # the full dialogue the annotator preferred
    rejected_text: str
    prompt: tuple[dict[str, str], ...]  # shared turns as chat messages, ending with the user's
    chosen: str  # final assistant answer in each dialogue
    rejected: str

    def dpo_row(self) -> dict[str, Any]:
        """trl's conversational preference row."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


def parse_dialogue(text: str, where: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> chat messages; errors say where the text was."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"{where}: dialogue does not start with '\\n\\nHuman:' (starts {text[:40]!r})")
    messages = [{"role": _ROLES[role], "content": body.strip()} for role, body in zip(parts[1::2], parts[2::2])]
    if not messages:
        raise ValueError(f"{where}: no Human/Assistant turns found")
    return messages


def to_pair(row: Any, where: str) -> PreferencePair:
    """Validate one record and split it; raises ValueError naming the row and field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"{where}: field '{key}' is missing or not a non-empty string")
    chosen = parse_dialogue(row["chosen"], f"{where} field 'chosen'")
    rejected = parse_dialogue(row["rejected"], f"{where} field 'rejected'")
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise ValueError(f"{where}: field '{key}' does not end with an Assistant turn after a Human turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError(f"{where}: 'chosen' and 'rejected' differ before the final Assistant turn")
    return PreferencePair(
        row["chosen"], row["rejected"], tuple(chosen[:-1]), chosen[-1]["content"], rejected[-1]["content"]
    )


def load_records(source: str, split: str = "train") -> tuple[list[dict], dict[str, Any]]:
    """Raw records and their provenance (id, sha256) from ``local`` (committed slice) or ``hub``."""
    if source == "local":
        rows = read_jsonl(LOCAL_FILE)
        sha = hashlib.sha256(LOCAL_FILE.read_bytes()).hexdigest()
        return rows, {"id": f"hh-rlhf harmless-base/test (first 600): {LOCAL_FILE.name}", "sha256": sha}
    if source == "hub":
        from datasets import load_dataset  # noqa: PLC0415 (heavy: datasets loads on first use)

        ds = load_dataset(HUB_ID, split=split)
        return [dict(r) for r in ds], {"id": f"{HUB_ID} ({split})", "sha256": getattr(ds, "_fingerprint", None)}
    raise ValueError(f"data source {source!r}: expected 'local' or 'hub'")


def load_pairs(source: str, split: str, start: int, n: int) -> tuple[list[PreferencePair], dict[str, Any], int]:
    """Pairs ``start..start+n`` of the source; a record that fails validation is dropped and counted.

    Returns (pairs, provenance, n_dropped). Dropping is only for records whose prompt turns differ
    (a handful in HH-RLHF); a missing field is an error, not noise.
    """
    rows, prov = load_records(source, split)
    if start + n > len(rows):
        raise ValueError(f"{prov['id']}: asked for records {start}..{start + n}, it has {len(rows)}")
    pairs, dropped = [], 0
    for i in range(start, start + n):
        try:
            pairs.append(to_pair(rows[i], f"{prov['id']} record {i}"))
        except ValueError as err:
            if "differ before" not in str(err):
                raise
            dropped += 1
    return pairs, prov, dropped
