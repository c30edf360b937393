"""RAG + storage architecture."""

TITLE = "RAG + storage architecture"
EXERCISES: tuple[str, ...] = (
    "phase12_rag_storage.embeddings",
    "phase12_rag_storage.rag_from_scratch",
    "phase12_rag_storage.storage_bench",
    "phase12_rag_storage.hyde_rerank",
    "phase12_rag_storage.ragas_eval",
)
