"""Raw Q&A records -> a filtered, deduplicated, split and versioned training set.

The same stages a production team runs at 100,000 pairs, at 300: parse (repair or quarantine
malformed JSON), validate fields, filter (length, off-topic chatter, meta-references), deduplicate
(exact, then near), split, hash. Every rejected row goes to the quarantine with its reason, so the
dataset card's counts can be audited row by row. Pure python on purpose: each filter is a few lines
you can read; at scale swap the O(n²) near-duplicate scan for MinHash-LSH (e.g. datasketch).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lab.hashing import sha256_file
from lab.jsonl import numbered_lines, write_jsonl

PIPELINE_VERSION = "1"
FIELDS = ("id", "topic", "question", "answer")
MIN_ANSWER_WORDS = 75
NEAR_DUP_JACCARD = 0.4  # 3-word-shingle Jaccard of answers: light rewordings score ~0.55-0.75 here,
SHINGLE = 3  # distinct answers on the same topic stay below ~0.15 (the card records the max kept)
EVAL_FRACTION = 0.1

# Setup/logistics chatter that slips into extraction from working threads: about the session,
# the account or the local machine, not about the domain.
OFF_TOPIC = re.compile(
    r"\b(ssh key|billing|invoice|credit card|coupon|wi-?fi|password reset|dark mode|my laptop(?:'s)? fan"
    r"|lunch|timezone|calendar|zoom call|screen ?share|keyboard shortcut|font size|vs ?code theme"
    r"|pod (?:rental|price|pricing)|runpod (?:account|credits?|billing)|spending limit"
    r"|restart(?:ed)? (?:my|the) (?:browser|laptop|kernel)|jupyter (?:theme|extension))\b",
    re.IGNORECASE,
)
# Phrases that point outside the pair ("as we discussed above"): the answer is not self-contained.
META_REFERENCE = re.compile(
    r"\b(as (?:we|i|you) (?:discussed|mentioned|said|saw|covered|noted|established)"
    r"(?: (?:above|earlier|before|previously|in (?:the )?(?:previous|last|earlier) \w+))?"
    r"|(?:see|shown|mentioned|listed|defined) (?:above|earlier)"
    r"|the (?:code|table|plot|chart|output|snippet|example|diagram) above"
    r"|in (?:the|my|our) (?:previous|last|earlier) (?:answer|message|reply|section|phase|session)"
    r"|like i said|from our (?:earlier|previous) (?:conversation|chat|discussion))\b",
    re.IGNORECASE,
)


@dataclass
class BuildResult:
    train: list[dict]
    eval: list[dict]
    quarantine: list[dict]
    counts: dict[str, int]
    sha256: str
    raw_sha256: str
    raw_pairs: int
    repaired: list[str] = field(default_factory=list)
    max_kept_jaccard: float = 0.0

    @property
    def kept_pairs(self) -> int:
        return len(self.train) + len(self.eval)

    @property
    def filter_rate(self) -> float:
        return 1 - self.kept_pairs / self.raw_pairs if self.raw_pairs else 0.0


# --- stage 1: parse ----------------------------------------------------------------------------
_FIELD_START = re.compile(r'"({})"\s*:\s*"'.format("|".join(FIELDS)))


def repair_json_line(line: str) -> dict | None:
    """Re-escape stray double quotes inside string values (code such as print("hi") pasted raw).

    Works on flat records of known string fields: each value runs from its opening quote to the
    quote that precedes the next known key (or the closing brace). Returns None if that shape is
    not there (a truncated line, a missing brace): those rows are quarantined, not guessed at.
    """
    starts = list(_FIELD_START.finditer(line))
    if not starts or not line.rstrip().endswith("}"):
        return None
    record = {}
    for i, match in enumerate(starts):
        begin = match.end()
        if i + 1 < len(starts):
            end = line.rfind('"', begin, starts[i + 1].start())
            between = line[end + 1 : starts[i + 1].start()].strip()
            if between != ",":
                return None
        else:
            end = line.rstrip().rfind('"', begin, len(line.rstrip()) - 1)
            if line[end + 1 :].strip() != "}":
                return None
        raw_value = line[begin:end]
        escaped = re.sub(r'(?<!\\)"', r'\\"', raw_value)
        try:
            record[match.group(1)] = json.loads(f'"{escaped}"')
        except json.JSONDecodeError:
            return None
    return record


def parse_raw(path: Path) -> tuple[list[dict], list[dict], list[str], int]:
    """(records, quarantined, repaired ids, raw row count); every non-blank line is one raw row.

    Unlike the lab's strict reader (``lab.jsonl.read_jsonl``, which stops at the first bad line), a
    cleaning stage reads on past bad rows: each one is repaired or quarantined with its reason, and
    only the raw lines come from the shared reader."""
    records, quarantine, repaired = [], [], []
    n = 0
    for lineno, line in numbered_lines(path):
        n += 1
        where = f"{path.name}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            rec = repair_json_line(line)
            if rec is None:
                quarantine.append(
                    dict(
                        where=where,
                        id=None,
                        reason="malformed_json",
                        detail=f"unrepairable: {err.msg} at column {err.colno}",
                        raw=line[:300],
                    )
                )
                continue
            repaired.append(rec.get("id") or where)
        if not isinstance(rec, dict):
            quarantine.append(
                dict(where=where, id=None, reason="malformed_json", detail="not a JSON object", raw=line[:300])
            )
            continue
        missing = [f for f in FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if missing:
            quarantine.append(
                dict(
                    where=where,
                    id=rec.get("id"),
                    reason="missing_field",
                    detail=f"missing or empty: {', '.join(missing)}",
                    raw=line[:300],
                )
            )
            continue
        rec = {f: " ".join(rec[f].split()) if f != "answer" else rec[f].strip() for f in FIELDS}
        rec["where"] = where
        records.append(rec)
    return records, quarantine, repaired, n


# --- stage 2: filters --------------------------------------------------------------------------
def word_count(text: str) -> int:
    return len(text.split())


def check_row(rec: dict) -> tuple[str, str] | None:
    """(reason, detail) if the row fails a content filter, else None. Order = the card's order."""
    n = word_count(rec["answer"])
    if n < MIN_ANSWER_WORDS:
        return "too_short", f"answer has {n} words < {MIN_ANSWER_WORDS}"
    text = rec["question"] + "\n" + rec["answer"]
    if m := OFF_TOPIC.search(text):
        return "off_topic", f"setup/logistics chatter: {m.group(0)!r}"
    if m := META_REFERENCE.search(text):
        return "meta_reference", f"refers outside the pair: {m.group(0)!r}"
    return None


# --- stage 3: deduplication --------------------------------------------------------------------
def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def shingles(text: str, n: int = SHINGLE) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def deduplicate(records: list[dict]) -> tuple[list[dict], list[dict], float]:
    """Keep the first of each exact (normalized Q+A) or near (answer shingle Jaccard) duplicate.

    Also returns the highest Jaccard between any two kept answers: evidence that the kept set is
    not padded with rewordings just under the threshold."""
    kept, dropped, seen = [], [], {}
    max_kept = 0.0
    kept_shingles: list[tuple[dict, set]] = []
    for rec in records:
        key = hashlib.sha256(normalize(rec["question"] + " " + rec["answer"]).encode()).hexdigest()
        if key in seen:
            dropped.append(dict(rec, reason="exact_duplicate", detail=f"same text as {seen[key]}"))
            continue
        sh = shingles(rec["answer"])
        best = max(((jaccard(sh, s), other["id"]) for other, s in kept_shingles), default=(0.0, None))
        if best[0] >= NEAR_DUP_JACCARD:
            dropped.append(dict(rec, reason="near_duplicate", detail=f"answer Jaccard {best[0]:.2f} with {best[1]}"))
            continue
        seen[key] = rec["id"]
        max_kept = max(max_kept, best[0])
        kept.append(rec)
        kept_shingles.append((rec, sh))
    return kept, dropped, max_kept


# --- stage 4: split + version ------------------------------------------------------------------
def to_chat(rec: dict) -> dict:
    return {
        "id": rec["id"],
        "topic": rec["topic"],
        "messages": [
            {"role": "user", "content": rec["question"]},
            {"role": "assistant", "content": rec["answer"]},
        ],
    }


def split(records: list[dict], eval_fraction: float = EVAL_FRACTION) -> tuple[list[dict], list[dict]]:
    """Per topic, the rows whose id hashes lowest go to eval: stable when unrelated rows change."""
    train, evals = [], []
    by_topic: dict[str, list[dict]] = {}
    for rec in records:
        by_topic.setdefault(rec["topic"], []).append(rec)
    for topic in sorted(by_topic):
        rows = sorted(by_topic[topic], key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        n_eval = round(len(rows) * eval_fraction)
        evals += rows[:n_eval]
        train += rows[n_eval:]
    order = {r["id"]: i for i, r in enumerate(records)}
    return sorted(train, key=lambda r: order[r["id"]]), sorted(evals, key=lambda r: order[r["id"]])


def content_sha256(train: list[dict], evals: list[dict]) -> str:
    """The dataset version: a hash of the exact rows in each split (not of file names or dates)."""
    digest = hashlib.sha256()
    for name, rows in (("train", train), ("eval", evals)):
        digest.update(name.encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def build(raw_path: Path) -> BuildResult:
    records, quarantine, repaired, n_raw = parse_raw(raw_path)
    passed = []
    for rec in records:
        if (fail := check_row(rec)) is not None:
            quarantine.append(
                dict(where=rec["where"], id=rec["id"], reason=fail[0], detail=fail[1], question=rec["question"])
            )
        else:
            passed.append(rec)
    unique, dups, max_kept = deduplicate(passed)
    quarantine += [
        dict(where=d["where"], id=d["id"], reason=d["reason"], detail=d["detail"], question=d["question"]) for d in dups
    ]
    train_recs, eval_recs = split(unique)
    train, evals = [to_chat(r) for r in train_recs], [to_chat(r) for r in eval_recs]
    counts: dict[str, int] = {"raw_rows": n_raw, "repaired_json": len(repaired)}
    for reason in (
        "malformed_json",
        "missing_field",
        "too_short",
        "off_topic",
        "meta_reference",
        "exact_duplicate",
        "near_duplicate",
    ):
        counts[reason] = sum(q["reason"] == reason for q in quarantine)
    counts.update(kept=len(unique), train=len(train), eval=len(evals))
    return BuildResult(
        train=train,
        eval=evals,
        quarantine=quarantine,
        counts=counts,
        sha256=content_sha256(train, evals),
        raw_sha256=sha256_file(raw_path),
        raw_pairs=n_raw,
        repaired=repaired,
        max_kept_jaccard=round(max_kept, 4),
    )


def write(result: BuildResult, out_dir: Path) -> Path:
    """Write train/eval/quarantine JSONL and the dataset card; returns out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", result.train), ("eval", result.eval), ("quarantine", result.quarantine)):
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    (out_dir / "card.json").write_text(json.dumps(card(result), indent=2) + "\n")
    (out_dir / "card.md").write_text(card_markdown(result))
    return out_dir


def card(result: BuildResult) -> dict:
    topics: dict[str, int] = {}
    for row in result.train + result.eval:
        topics[row["topic"]] = topics.get(row["topic"], 0) + 1
    return dict(
        name="phase09-ai-infra-qa",
        pipeline_version=PIPELINE_VERSION,
        sha256=result.sha256,
        raw_sha256=result.raw_sha256,
        raw_pairs=result.raw_pairs,
        kept_pairs=result.kept_pairs,
        filter_rate=round(result.filter_rate, 4),
        counts=result.counts,
        topics=topics,
        min_answer_words=MIN_ANSWER_WORDS,
        near_dup_jaccard=NEAR_DUP_JACCARD,
        max_kept_jaccard=result.max_kept_jaccard,
        shingle_words=SHINGLE,
        eval_fraction=EVAL_FRACTION,
        repaired_ids=result.repaired,
    )


def card_markdown(result: BuildResult) -> str:
    c = card(result)
    lines = [
        f"# Dataset card: {c['name']}",
        "",
        f"- version (content sha256): `{c['sha256']}`",
        f"- raw input sha256: `{c['raw_sha256']}`  (pipeline v{PIPELINE_VERSION})",
        f"- raw rows {c['raw_pairs']} -> kept {c['kept_pairs']} "
        f"(train {len(result.train)}, eval {len(result.eval)}), filter rate {c['filter_rate']:.1%}",
        "",
        "| stage | rows |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in c["counts"].items()]
    lines += ["", "| topic | kept pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(c["topics"].items())]
    lines += ["", "Every rejected row is listed with its reason in `quarantine.jsonl`.", ""]
    return "\n".join(lines)
