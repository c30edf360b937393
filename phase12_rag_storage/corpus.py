"""The documents and the query set a RAG pipeline is evaluated on, loaded from plain files.

The default corpus is this phase's lesson notes (``notes/``, one markdown file per phase topic 8-12);
``include_readmes`` adds every ``phase*/README.md`` minus its generated results section, so the corpus
grows with the repo. Any folder of ``.md``/``.txt`` files works: ``--set corpus=DIR``.

Queries are JSON lines: ``query``, ``category``, ``gold_sources`` (paths relative to the corpus folder),
optional ``id``, ``gold_answer`` and ``evidence`` (phrases that must all sit in ONE retrieved chunk for
the answer to be answerable from it — what makes a chunk-boundary split visible without an LLM).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from lab.errors import ConfigError
from lab.jsonl import JsonlError, NonEmptyStr, NonEmptyStrList, RowId, iter_jsonl
from lab.paths import REPO_ROOT

PHASE_DIR = Path(__file__).resolve().parent
NOTES_DIR = PHASE_DIR / "notes"
QUERIES_FILE = PHASE_DIR / "data" / "queries.jsonl"
TEXT_SUFFIXES = (".md", ".markdown", ".txt")
RESULTS_BEGIN, RESULTS_END = "<!-- lab:results:begin", "<!-- lab:results:end -->"


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the corpus folder (what gold_sources name)
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    query: str
    category: str
    gold_sources: tuple[str, ...]
    gold_answer: str | None = None
    evidence: tuple[str, ...] = ()


def strip_generated(text: str) -> str:
    """Drop the `lab report` results section: generated numbers are not lesson text."""
    start = text.find(RESULTS_BEGIN)
    end = text.find(RESULTS_END)
    if start == -1 or end == -1 or end < start:
        return text
    return text[:start] + text[end + len(RESULTS_END) :]


def load_corpus(folder: str | Path | None = None, include_readmes: bool = False) -> list[Document]:
    """Every non-empty text/markdown file under ``folder`` (default: the lesson notes), sorted."""
    root = Path(folder).expanduser() if folder else NOTES_DIR
    if not root.is_dir():
        raise ConfigError(f"corpus folder {root} does not exist or is not a directory")
    docs = [
        Document(str(p.relative_to(root)), p.read_text(encoding="utf-8", errors="replace"))
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if include_readmes:
        docs += [
            Document(f"readme:{p.parent.name}", strip_generated(p.read_text(encoding="utf-8")))
            for p in sorted(REPO_ROOT.glob("phase*/README.md"))
        ]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ConfigError(f"corpus folder {root} holds no non-empty {'/'.join(TEXT_SUFFIXES)} files")
    return docs


def corpus_sha256(docs: list[Document]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.source.encode() + b"\0" + doc.text.encode() + b"\0")
    return digest.hexdigest()


class QueryRow(BaseModel):
    """One line of a queries file."""

    query: NonEmptyStr
    category: NonEmptyStr
    gold_sources: NonEmptyStrList
    id: RowId | None = None
    gold_answer: NonEmptyStr | None = None
    evidence: NonEmptyStrList | None = None


def load_queries(path: str | Path | None = None, sources: set[str] | None = None) -> list[Query]:
    """Parse and validate a queries JSONL; errors name the file, the line and the field.

    With ``sources`` (the corpus's document sources) every gold source must exist in the corpus.
    """
    path = Path(path).expanduser() if path else QUERIES_FILE
    queries = []
    for line_no, row in iter_jsonl(path, model=QueryRow, unique="id"):
        missing = [g for g in row.gold_sources if sources is not None and g not in sources]
        if missing:
            raise JsonlError(
                path,
                line_no,
                f"names {missing} not in the corpus (corpus sources: "
                f"{sorted(sources)[:8]}{' ...' if len(sources) > 8 else ''})",
                "gold_sources",
            )
        queries.append(
            Query(
                id=row.id or f"line{line_no}",
                query=row.query,
                category=row.category,
                gold_sources=tuple(row.gold_sources),
                gold_answer=row.gold_answer,
                evidence=tuple(row.evidence or ()),
            )
        )
    if not queries:
        raise ConfigError(f"queries file {path} holds no queries")
    return queries
