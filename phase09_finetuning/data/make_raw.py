"""Compose the raw extraction file from the per-topic fact sheets (run once; the output is committed).

    python -m phase09_finetuning.data.make_raw

The sheets (``sheets/<topic>.md``: ``## Q: question`` then the answer paragraph) are this repo's own
Q&A pairs. Real extraction from working threads is messy, so the raw file also carries what such a
pass produces: the literal lines of ``sheets/extraction_noise.txt`` (malformed JSON, chatter,
meta-references, short and near-duplicate answers) and a few records extracted twice from
overlapping chunks (exact duplicates). The build pipeline (``pipeline.py``) must clean all of it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHEETS = HERE / "sheets"
RAW = HERE / "raw" / "qa_raw.jsonl"
# Records that an overlapping-chunk extraction emitted twice, verbatim.
EXTRACTED_TWICE = ("kv_cache-02", "finetuning-06", "serving-04", "alignment-04")


def read_sheet(path: Path) -> list[dict]:
    """``## Q:`` headings with the paragraph under each; raises with file:line on a malformed sheet."""
    topic = path.stem
    records: list[dict] = []
    question, answer_lines, qline = None, [], 0
    lines = path.read_text(encoding="utf-8").splitlines() + ["## Q: <end>"]
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("## Q: "):
            if question is not None:
                answer = " ".join(answer_lines).strip()
                if not answer:
                    raise ValueError(f"{path.name}:{qline}: question without an answer")
                records.append(
                    dict(id=f"{topic}-{len(records) + 1:02d}", topic=topic, question=question, answer=answer)
                )
            question, answer_lines, qline = line[len("## Q: ") :].strip(), [], lineno
        elif question is not None and line.strip():
            answer_lines.append(line.strip())
    return records


def compose(seed: int = 9) -> list[str]:
    lines = []
    for sheet in sorted(SHEETS.glob("*.md")):
        lines += [json.dumps(rec, ensure_ascii=False) for rec in read_sheet(sheet)]
    by_id = {json.loads(line)["id"]: line for line in lines}
    extras = [by_id[i] for i in EXTRACTED_TWICE]
    extras += [
        line
        for line in (SHEETS / "extraction_noise.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    rng = random.Random(seed)
    for extra in extras:  # scattered through the file, as they were in the threads
        lines.insert(rng.randrange(len(lines) + 1), extra)
    return lines


def main() -> None:
    lines = compose()
    RAW.parent.mkdir(parents=True, exist_ok=True)
    RAW.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} raw rows to {RAW}")


if __name__ == "__main__":
    main()
