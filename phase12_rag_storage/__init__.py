"""RAG + storage architecture."""

TITLE = "RAG + storage architecture"
EXERCISES: tuple[str, ...] = (
    "phase12_rag_storage.embeddings",
    "phase12_rag_storage.rag_from_scratch",
    "phase12_rag_storage.storage_bench",
    "phase12_rag_storage.hyde_rerank",
    "phase12_rag_storage.ragas_eval",
)
# the modules later phases may import, and why; the rest are its lessons and their helpers (lab/registry.py)
PUBLIC: dict[str, str] = {
    "phase12_rag_storage.retriever": "Embedder, Retriever: chunker + embedder + vector store, the Researcher's retrieval",
    "phase12_rag_storage.stores": "the vector-store contract (NumpyStore, PgVectorStore, CockroachStore, Hit)",
    "phase12_rag_storage.chunking": "make_chunker, structure_chunks: how documents are cut into citable chunks",
    "phase12_rag_storage.corpus": "load_corpus, corpus_sha256: the documents and queries retrieval is run and measured on",
    "phase12_rag_storage.rag_from_scratch": "build_retriever, answer: the RAG pipeline Phase 15 prices per run (also lesson 12.2)",
    "phase12_rag_storage.embeddings": "tokens: the tokenizer Phase 15's cost model counts embedding tokens with (also lesson 12.1)",
}
