"""Retrieval scoring shared by 12.1, 12.2 and 12.4: hit rate, top-1 and evidence completeness.

- hit: the share of a query's gold sources that appear among the top-k chunks (so a cross-document
  query with one of two sources found scores 0.5, as in the seed's fractional rates);
- top1: the first chunk comes from a gold source;
- evidence_complete: some top-k chunk holds ALL of the query's evidence phrases (None without
  evidence). A query can have hit=1 and evidence_complete=False: the right file, a broken chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import mean

from phase12_rag_storage.corpus import Query
from phase12_rag_storage.stores import Hit


def score(query: Query, hits: Sequence[Hit]) -> dict:
    sources = [h.metadata.get("source") for h in hits]
    gold = set(query.gold_sources)
    evidence = None
    if query.evidence:
        evidence = any(contains_all(h.text, query.evidence) for h in hits)
    return {
        "id": query.id,
        "category": query.category,
        "hit": len(gold & set(sources)) / len(gold),
        "top1": bool(sources) and sources[0] in gold,
        "evidence_complete": evidence,
        "top_sources": sources,
        "scores": [round(h.score, 4) for h in hits],
    }


def contains_all(text: str, phrases: Sequence[str]) -> bool:
    """Every phrase occurs in ``text`` (case- and line-wrap-insensitive)."""
    flat = " ".join(text.split()).lower()
    return all(" ".join(p.split()).lower() in flat for p in phrases)


def evaluate(queries: Sequence[Query], search: Callable[[Query], Sequence[Hit]]) -> list[dict]:
    return [score(q, search(q)) for q in queries]


def summarise(rows: Sequence[dict]) -> dict[str, dict]:
    """Per category and overall: n, hit rate, top-1, evidence-complete rate (over queries with evidence)."""
    cats = sorted({r["category"] for r in rows}, key=lambda c: CATEGORY_ORDER.get(c, 99))
    out = {}
    for cat in cats + ["overall"]:
        sel = [r for r in rows if cat == "overall" or r["category"] == cat]
        ev = [r["evidence_complete"] for r in sel if r["evidence_complete"] is not None]
        out[cat] = {
            "n": len(sel),
            "hit_rate": mean(r["hit"] for r in sel),
            "top1": mean(float(r["top1"]) for r in sel),
            "evidence_complete": mean(float(e) for e in ev) if ev else None,
        }
    return out


CATEGORY_ORDER = {"direct": 0, "paraphrase": 1, "cross-document": 2, "abstract": 3}
