"""RAG + storage architecture."""

TITLE = "RAG + storage architecture"
EXERCISES: tuple[str, ...] = ()
