"""The Researcher: HyDE retrieval over a corpus, returning numbered evidence chunks with ids.

HyDE without a reranker is the seed's measured Phase 12 decision (the cross-encoder cannot be
loaded offline, and HyDE is one short LLM call). This stage imports the Phase 12 library —
``Retriever`` + ``Embedder`` + ``structure_chunks`` + ``PgVectorStore`` — and adds only the
engine's concern: **embed a corpus once**. The chunks live in a pgvector table named by the
corpus's content hash (``p16_chunks_<sha12>``) in the engine's own database, registered in
``p16_corpora`` once complete; a later job, another worker process or another machine sharing the
database finds the registration and searches the table without embedding a thing. A changed file
changes the hash, hence a new table. On CockroachDB (``LAB_CRDB_URL``) Phase 12's ``CockroachStore``
holds the chunks instead.

Every retrieved chunk passes through ``untrusted.admit`` before any later stage reads it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lab import paths
from lab.db import connect, crdb_url
from lab.migrations import Migration, Schema, migrate
from lab.models import DEFAULT_EMBEDDER
from phase12_rag_storage.chunking import make_chunker
from phase12_rag_storage.corpus import Document, corpus_sha256, load_corpus
from phase12_rag_storage.retriever import Embedder, Retriever
from phase12_rag_storage.stores import CockroachStore, PgVectorStore
from phase16_capstone.untrusted import EVIDENCE, admit

CHUNK_WORDS = 200  # short evidence: the Writer puts each chunk in a small model's prompt
PREFIX = "p16"  # chunk tables are content-addressed, so every engine namespace shares them
REGISTRY = f"{PREFIX}_corpora"


def registry_schema():
    """The corpus registry's migrations (``lab.migrations``; versions in ``p16_schema_migrations``, owner
    ``phase16.corpora``). One registry for every engine namespace, like the chunk tables it lists, hence
    its own list beside the job store's. Version 1 is the table as the code before migrations made it.
    (The chunk tables themselves are Phase 12's stores, made per corpus by ``PgVectorStore`` /
    ``CockroachStore``: data named by a content hash, not a schema of the engine.)"""

    return Schema(
        PREFIX,
        "phase16.corpora",
        tables=(REGISTRY,),
        migrations=(
            Migration(
                1,
                "the corpus registry",
                (
                    (
                        f"CREATE TABLE IF NOT EXISTS {REGISTRY} (sha256 TEXT PRIMARY KEY, tbl TEXT NOT NULL, "
                        f"n_docs INT NOT NULL, n_chunks INT NOT NULL, embedder TEXT NOT NULL, "
                        f"created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    ),
                ),
            ),
        ),
    )


@dataclass(frozen=True)
class Evidence:
    n: int  # the [n] the Writer cites
    chunk_id: str  # Phase 12 chunk id: "<source>#<index>"
    source: str
    text: str  # admitted (cleaned, capped) chunk text
    score: float

    def to_dict(self) -> dict:
        return {"n": self.n, "chunk_id": self.chunk_id, "source": self.source, "text": self.text, "score": self.score}


def default_corpus():
    """The repo's lesson notes, every phase README (generated results removed) and the committed
    results overview: what the engine knows about by default."""

    docs = load_corpus(None, include_readmes=True)
    overview = paths.REPO_ROOT / "results" / "README.md"
    if overview.is_file():
        docs.append(Document("results:README", overview.read_text(encoding="utf-8")))
    return docs


def load_documents(corpus: str | None):
    """``corpus``: a folder of .md/.txt files (a relative one not found here is taken from the repo
    root), or None for ``default_corpus()``."""

    if corpus is None:
        return default_corpus()
    folder = Path(corpus).expanduser()
    if not folder.is_absolute() and not folder.exists() and (paths.REPO_ROOT / folder).is_dir():
        folder = paths.REPO_ROOT / folder
    return load_corpus(folder)


class CorpusIndex:
    """One corpus, chunked and embedded once into the database; HyDE retrieval over it.

    Two workers meeting a new corpus at once would both run ``CREATE TABLE IF NOT EXISTS`` on its
    table, and PostgreSQL lets the slower one fail (a unique violation in its catalog) instead of
    waiting: the worker threads of one process set a corpus up one at a time (the first embeds it,
    the next find it registered), and a process that loses that race to another process tries again
    once the winner's table is there."""

    _embedders: dict = {}
    _lock = threading.Lock()
    _setup = threading.Lock()
    SETUP_TRIES = 3

    def __init__(self, url: str, corpus: str | None, embedder: str = DEFAULT_EMBEDDER):

        from psycopg import errors  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        self.docs = load_documents(corpus)
        self.sha256 = corpus_sha256(self.docs)
        self.table = f"{PREFIX}_chunks_{self.sha256[:12]}"
        self.embedder = self._embedder(embedder)
        for attempt in range(1, self.SETUP_TRIES + 1):
            try:
                with self._setup:
                    self._set_up(url, embedder)
                return
            except (errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject):
                if attempt == self.SETUP_TRIES:
                    raise
                time.sleep(0.2 * attempt)  # another process is creating the same objects: they exist next time

    def _set_up(self, url: str, embedder: str) -> None:
        """Open the chunk table (creating it if needed) and embed the corpus unless it is registered."""

        self.store = self._open_store(url)
        registry = REGISTRY
        migrate(url, registry_schema())
        with connect(url, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT n_chunks FROM {registry} WHERE sha256 = %s AND embedder = %s", (self.sha256, embedder)
            ).fetchone()
            self.embedded_now = row is None
            if row is None:  # first job on this corpus anywhere: embed it; a racing worker's upsert is harmless
                self.n_chunks = self._ingest()
                conn.execute(
                    f"INSERT INTO {registry} (sha256, tbl, n_docs, n_chunks, embedder) VALUES (%s, %s, %s, %s, %s) "
                    f"ON CONFLICT (sha256) DO NOTHING",
                    (self.sha256, self.table, len(self.docs), self.n_chunks, embedder),
                )
            else:
                self.n_chunks = int(row[0])

    @classmethod
    def _embedder(cls, name: str):

        with cls._lock:  # one MiniLM per process, shared by every job and thread
            if name not in cls._embedders:
                cls._embedders[name] = Embedder(name)
            return cls._embedders[name]

    def _open_store(self, url: str):

        if crdb_url() and url == crdb_url():
            return CockroachStore(url, table=self.table, dim=self.embedder.dim, prefix_key=None)
        return PgVectorStore(url, table=self.table, dim=self.embedder.dim)

    def _ingest(self) -> int:

        retriever = Retriever(make_chunker("structure", CHUNK_WORDS), self.embedder, self.store)
        chunks = retriever.add_documents(self.docs)
        self.store.optimize()
        return len(chunks)

    def research(self, topic: str, llm, *, k: int, hyde_max_tokens: int) -> tuple[list[Evidence], str]:
        """HyDE: the LLM's hypothetical passage is embedded and searched; returns (evidence, hypothesis).
        ``k`` and ``hyde_max_tokens``: the engine's settings (``EngineSettings``)."""

        retriever = Retriever(
            make_chunker("structure", CHUNK_WORDS),
            self.embedder,
            self.store,
            hyde_llm=llm,
            hyde_max_tokens=hyde_max_tokens,
        )
        hypothesis = retriever.hypothesis(topic)
        hits = retriever.retrieve(topic, k=k, hypothesis=hypothesis)
        evidence = [
            Evidence(
                n,
                hit.id,
                str(hit.metadata.get("source", hit.id.rsplit("#", 1)[0])),
                admit(hit.text, EVIDENCE, f"corpus:{hit.id}"),
                round(float(hit.score), 4),
            )
            for n, hit in enumerate(hits, start=1)
        ]
        return evidence, hypothesis

    def close(self) -> None:
        self.store.close()
