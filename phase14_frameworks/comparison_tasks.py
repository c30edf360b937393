"""More tasks for ``phase14.comparison``: tool questions whose answers come from formulas, not results.

Phase 13's research set (``phase13_react/data/research_tasks.jsonl``) asks about committed results;
it holds fewer tasks than a rate with a useful interval needs. This set adds questions a tool answers
exactly — the Phase 8 KV-cache calculator over a grid of models, contexts and batches, and the
calculator over fixed expressions — derived with Phase 13's own ``derive`` (so the same task file
format and checker apply), and independent of any result a later run regenerates.

``data/comparison_tasks.jsonl`` is written by ``python -m phase14_frameworks.comparison_tasks --write``;
a test checks the file is what this module writes. Tolerance: 1% of the answer (replies round).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lab.jsonl import write_jsonl
from phase13_react.tasks import derive

TASKS_FILE = Path(__file__).resolve().parent / "data" / "comparison_tasks.jsonl"
KV_GRID = [  # (model, context, batch)
    ("llama-3.1-8b", 4096, 1),
    ("llama-3.1-8b", 8192, 2),
    ("llama-3.1-8b", 32768, 4),
    ("llama-3.1-8b", 131072, 1),
    ("llama-3.1-70b", 8192, 1),
    ("llama-3.1-70b", 32768, 2),
    ("mixtral-8x7b", 16384, 1),
    ("mixtral-8x7b", 32768, 8),
    ("gpt2-124m", 1024, 16),
    ("gpt2-124m", 1024, 64),
]
EXPRESSIONS = [
    "17.5 * 48",
    "2 ** 20 / 512",
    "(131072 * 128) / 1e6",
    "sqrt(7 * 7 + 24 * 24)",
    "3600 * 24 * 7",
    "80 - 16.06",
]
RELATIVE_TOLERANCE = 0.01


def specs() -> list[dict[str, Any]]:
    kv = [
        {
            "id": f"kv_{m.replace('.', '').replace('-', '_')}_{c}_b{b}",
            "derivation": {"kv_cache_gb": {"context": c, "batch": b, "model": m}},
            "question": f"How many GB (decimal) of KV cache does {m} need for {b} sequence(s) of {c} tokens in bf16?",
        }
        for m, c, b in KV_GRID
    ]
    calc = [
        {"id": f"calc_{i}", "derivation": {"expression": e}, "question": f"What is {e}? Use the calculator."}
        for i, e in enumerate(EXPRESSIONS, 1)
    ]
    return kv + calc


def build_rows() -> list[dict[str, Any]]:

    rows = []
    for spec in specs():
        value = derive(spec["derivation"])
        rows.append(
            {
                "id": spec["id"],
                "question": spec["question"],
                "answer": value,
                "answer_type": "number",
                "tolerance": round(abs(value) * RELATIVE_TOLERANCE, 6),
                "derivation": spec["derivation"],
            }
        )
    return rows


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m phase14_frameworks.comparison_tasks --write   (rewrite data/comparison_tasks.jsonl)")
    print(f"wrote {write_jsonl(TASKS_FILE, build_rows())} tasks to {TASKS_FILE}")
