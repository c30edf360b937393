"""The retrieval library the capstone imports: chunker + embedder + vector store (+ optional HyDE).

    from phase12_rag_storage.retriever import Retriever, Embedder
    from phase12_rag_storage.chunking import make_chunker
    from phase12_rag_storage.stores import NumpyStore

    emb = Embedder()                                    # the embedded embedder (MiniLM, 384-d), normalised
    r = Retriever(make_chunker("structure"), emb, NumpyStore(emb.dim), hyde_llm=None)
    r.add_documents(load_corpus())
    hits = r.retrieve("Why did DPO replace PPO?", k=5)  # list[stores.Hit], best first

Any ``VectorStore`` works (Chroma, pgvector, CockroachDB): ``where`` filters on chunk metadata
(``source``, ``chunk``) inside the store's query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lab import models
from lab.models import DEFAULT_EMBEDDER
from phase12_rag_storage.chunking import Chunk, Chunker
from phase12_rag_storage.corpus import Document
from phase12_rag_storage.stores import Hit, VectorStore

HYDE_SYSTEM = (
    "Write a short factual passage, like a paragraph from technical lecture notes, that answers the "
    "question. Do not say that you are unsure; two or three sentences."
)


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 vectors (cosine = dot)."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, batch_size: int = 32):

        self.id = model
        self._model = models.load_embedder(model)
        dim_of = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.batch_size = batch_size

    @property
    def model(self):
        """The underlying SentenceTransformer (e.g. for ragas' embeddings adapter)."""
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("Embedder.encode takes a list of strings, not one string")
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


class Retriever:
    """Chunk → embed → store on ingest; embed (the query or a HyDE hypothesis) → search on query."""

    def __init__(
        self, chunker: Chunker, embedder: Embedder, store: VectorStore, hyde_llm=None, hyde_max_tokens: int = 80
    ):
        if getattr(store, "dim", embedder.dim) != embedder.dim:
            raise ValueError(
                f"embedder {embedder.id} makes {embedder.dim}-d vectors but the store {type(store).__name__} "
                f"was created with dim {store.dim}"
            )
        self.chunker, self.embedder, self.store = chunker, embedder, store
        self.hyde_llm, self.hyde_max_tokens = hyde_llm, hyde_max_tokens
        self.chunks: list[Chunk] = []

    def add_documents(self, docs: Sequence[Document | str]) -> list[Chunk]:
        """Chunk, embed and insert documents (plain strings get sources ``doc0``, ``doc1``...)."""
        if not docs:
            raise ValueError("add_documents() got no documents")
        docs = [d if isinstance(d, Document) else Document(f"doc{i}", d) for i, d in enumerate(docs)]
        for doc in docs:
            if not doc.text.strip():
                raise ValueError(f"document {doc.source!r} is empty")
        chunks = [c for doc in docs for c in self.chunker(doc)]
        vectors = self.embedder.encode([c.text for c in chunks])
        self.store.insert(
            [c.id for c in chunks],
            vectors,
            [c.text for c in chunks],
            [{"source": c.source, "chunk": c.index} for c in chunks],
        )
        self.chunks.extend(chunks)
        return chunks

    def hypothesis(self, query: str) -> str:
        """HyDE: the LLM's guess at an answer, written in the vocabulary of the documents."""
        if self.hyde_llm is None:
            raise ValueError("HyDE needs an LLM: Retriever(..., hyde_llm=from_spec(...))")
        reply = self.hyde_llm.chat(
            [{"role": "user", "content": query}], system=HYDE_SYSTEM, max_tokens=self.hyde_max_tokens, temperature=0.0
        )
        return reply.text.strip() or query

    def retrieve(
        self, query: str, k: int = 5, where: dict | None = None, hyde: bool | None = None, hypothesis: str | None = None
    ) -> list[Hit]:
        """Top-k chunks. HyDE is used when an LLM was given (or ``hyde=True``); pass ``hypothesis``
        to reuse one already generated."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("retrieve() needs a non-empty query string")
        use_hyde = (self.hyde_llm is not None) if hyde is None else hyde
        text = (hypothesis or self.hypothesis(query)) if use_hyde else query
        return self.store.search(self.embedder.encode([text])[0], k=k, where=where)
