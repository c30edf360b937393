"""The small vector-store contract Phase 12 (and the capstone) build on.

One interface — insert with metadata, search(k, where), optimize, count, close — with four backends:

* ``NumpyStore``: exact dot-product search written from scratch (the 12.2 lesson, and the ground
  truth that recall@10 is measured against in 12.3);
* ``ChromaStore``: chromadb in-process (embeddings always passed in; chroma never embeds);
* ``PgVectorStore``: PostgreSQL + pgvector through psycopg (``lab.db``);
* ``CockroachStore``: CockroachDB's own ``VECTOR`` type and ``CREATE VECTOR INDEX`` (LAB_CRDB_URL).

Vectors are L2-normalised by the caller (MiniLM with ``normalize_embeddings=True``), so cosine
similarity = dot product; every backend returns ``Hit.score`` as cosine similarity, higher = closer.
``where`` is an equality filter on metadata keys, applied *inside* the query (an SQL predicate for
the databases) so that a hybrid query is one statement.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from lab.db import connect, crdb_url, database_url
from lab.errors import MissingResource


@dataclass
class Hit:
    id: str
    score: float  # cosine similarity, higher = closer
    text: str
    metadata: dict = field(default_factory=dict)


class VectorStore(ABC):
    """Backend-independent contract; subclasses implement the ``_insert``/``_search`` halves."""

    name: str = "store"
    dim: int

    def insert(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict] | None = None
    ) -> None:
        """Store rows; validates the whole batch before anything is written."""
        ids, vectors, texts, metadatas = self._check_batch(ids, vectors, texts, metadatas)
        self._insert(ids, vectors, texts, metadatas)

    def search(self, vector: np.ndarray, k: int = 5, where: dict | None = None) -> list[Hit]:
        """The k closest rows (highest cosine first) among those whose metadata matches ``where``."""
        if k < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        return self._search(self._check_query(vector), k, dict(where or {}))

    def optimize(self) -> None:  # noqa: B027 (a hook: stores without an index keep the no-op)
        """Build the ANN index (HNSW / IVFFlat / vector index); a no-op where there is none."""

    @abstractmethod
    def count(self) -> int: ...

    def close(self) -> None:  # noqa: B027 (a hook: stores without connections keep the no-op)
        """Release connections/clients; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def _insert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None: ...

    @abstractmethod
    def _search(self, vector: np.ndarray, k: int, where: dict) -> list[Hit]: ...

    # -- validation shared by every backend: bad input fails here with the field named ------------
    def _check_batch(self, ids, vectors, texts, metadatas):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        ids, texts = [str(i) for i in ids], list(texts)
        metadatas = [dict(m or {}) for m in metadatas] if metadatas is not None else [{} for _ in ids]
        if not ids:
            raise ValueError(f"{self.name}: insert() got no documents (empty ids)")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(
                f"{self.name}: vector dimension {vectors.shape[-1]} does not match the store's dim {self.dim}"
            )
        lengths = {"ids": len(ids), "vectors": len(vectors), "texts": len(texts), "metadatas": len(metadatas)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{self.name}: insert() batch lengths differ: {lengths}")
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{self.name}: document {row} (id {ids[row]!r}) has empty text")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: insert() got duplicate ids in one batch")
        if not np.isfinite(vectors).all():
            bad = int(np.where(~np.isfinite(vectors).all(axis=1))[0][0])
            raise ValueError(f"{self.name}: vector {bad} (id {ids[bad]!r}) has NaN/inf values")
        return ids, vectors, texts, metadatas

    def _check_query(self, vector) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(
                f"{self.name}: query vector dimension {vector.shape[0]} does not match the store's dim {self.dim}"
            )
        return vector


class NumpyStore(VectorStore):
    """Exact search from scratch: one matrix of rows, a dot product, a partial sort.

    This is what every ANN index approximates; 12.3 uses it as the recall@10 ground truth.
    """

    name = "numpy"

    def __init__(self, dim: int = 384):
        self.dim = dim
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._metadatas: list[dict] = []
        self._row_of: dict[str, int] = {}
        self._masks: dict[tuple, np.ndarray] = {}  # filter -> rows passing it, until the next insert

    def _insert(self, ids, vectors, texts, metadatas) -> None:
        # upsert semantics, like the databases' ON CONFLICT / chroma upsert
        self._masks.clear()
        new_rows = []
        for i, id_ in enumerate(ids):
            row = self._row_of.get(id_)
            if row is None:
                new_rows.append(i)
            else:
                self._vectors[row], self._texts[row], self._metadatas[row] = vectors[i], texts[i], metadatas[i]
        if new_rows:
            start = len(self._ids)
            self._vectors = np.concatenate([self._vectors, vectors[new_rows]])
            for offset, i in enumerate(new_rows):
                self._row_of[ids[i]] = start + offset
                self._ids.append(ids[i])
                self._texts.append(texts[i])
                self._metadatas.append(metadatas[i])

    def _search(self, vector, k, where) -> list[Hit]:
        scores = self._vectors @ vector
        if where:
            scores = np.where(self._mask(where), scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(self._ids[i], float(scores[i]), self._texts[i], self._metadatas[i]) for i in top]

    def _mask(self, where: dict) -> np.ndarray:
        """Rows whose metadata matches ``where``, computed once per filter (a Python pass over every
        row's metadata costs more than the dot product at 100,000 rows)."""
        key = tuple(sorted((k, repr(v)) for k, v in where.items()))
        if key not in self._masks:
            self._masks[key] = np.array(
                [all(m.get(k) == v for k, v in where.items()) for m in self._metadatas], dtype=bool
            )
        return self._masks[key]

    def search_ids(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """Exact top-k ids for a batch of queries in one matrix product (the recall ground truth)."""
        scores = np.asarray(queries, dtype=np.float32) @ self._vectors.T
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        return [[self._ids[i] for i in row] for row in top]

    def count(self) -> int:
        return len(self._ids)


class ChromaStore(VectorStore):
    """chromadb in-process. Embeddings are always passed in, so chroma never loads its own model.

    Chroma's ``where`` runs inside its engine (metadata index + HNSW), but it is not SQL: no joins,
    no transactions across other tables — the capstone's reason to prefer a SQL store.
    """

    name = "chroma"

    def __init__(
        self, collection: str = "phase12-chunks", dim: int = 384, path: str | None = None, recreate: bool = False
    ):

        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        import chromadb  # noqa: PLC0415 (heavy: chromadb loads on first use)

        settings = chromadb.Settings(anonymized_telemetry=False)
        self.dim = dim
        self._client = (
            chromadb.PersistentClient(path=path, settings=settings)
            if path
            else chromadb.EphemeralClient(settings=settings)
        )
        if recreate and collection in [c.name for c in self._client.list_collections()]:
            self._client.delete_collection(collection)
        self._collection = self._client.get_or_create_collection(
            collection, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        self._max_batch = self._client.get_max_batch_size()

    def _insert(self, ids, vectors, texts, metadatas) -> None:
        for start in range(0, len(ids), self._max_batch):
            end = start + self._max_batch
            self._collection.upsert(
                ids=ids[start:end],
                embeddings=vectors[start:end],
                documents=texts[start:end],
                metadatas=[m or None for m in metadatas[start:end]],  # chroma rejects {} but takes None
            )

    def _search(self, vector, k, where) -> list[Hit]:
        if len(where) > 1:
            where = {"$and": [{key: value} for key, value in where.items()]}
        result = self._collection.query(
            query_embeddings=vector[None, :],
            n_results=k,
            where=where or None,
            include=["documents", "metadatas", "distances"],
        )
        return [
            Hit(id_, 1.0 - float(dist), text, dict(meta or {}))  # cosine space: distance = 1 - cos
            for id_, dist, text, meta in zip(
                result["ids"][0], result["distances"][0], result["documents"][0], result["metadatas"][0]
            )
        ]

    def count(self) -> int:
        return self._collection.count()

    def drop(self) -> None:
        self._client.delete_collection(self._collection.name)


class _SqlStore(VectorStore):
    """PostgreSQL-wire plumbing shared by PgVectorStore and CockroachStore.

    One table per store: ``id`` primary key, ``text``, ``metadata`` JSONB, ``embedding`` vector.
    The connection is in autocommit mode and every write runs in an explicit transaction that is
    retried on SQLSTATE 40001 (serialization failure), which CockroachDB raises under contention
    and PostgreSQL raises at SERIALIZABLE.
    """

    def __init__(self, url: str, table: str, dim: int, recreate: bool, max_retries: int = 30):

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
            raise ValueError(f"{self.name}: table name {table!r} must match [a-z_][a-z0-9_]*")
        self.url, self.table, self.dim, self.max_retries = url, table, dim, max_retries
        self.retries = 0  # serialization failures retried so far (reported by 12.3)
        self._conn = connect(url, autocommit=True)
        self._prepare_connection()
        if recreate:
            self._conn.execute(f"DROP TABLE IF EXISTS {table}")
        self._create_table()
        existing = self._existing_dim()
        if existing is not None and existing != dim:
            raise ValueError(
                f"{self.name}: table {table!r} stores vectors of dimension {existing}, "
                f"but this store was opened with dim {dim} (pass recreate=True to rebuild it)"
            )

    # -- hooks ---------------------------------------------------------------------------
    def _prepare_connection(self) -> None: ...

    def _create_table(self) -> None: ...

    def _vector_param(self, vector: np.ndarray):
        return vector

    # -- shared ----------------------------------------------------------------------------
    def _existing_dim(self) -> int | None:

        import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        try:
            row = self._conn.execute(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attname = 'embedding'",
                (self.table,),
            ).fetchone()
        except psycopg.Error:  # catalog differences (CockroachDB): inserts still check the dimension
            return None
        match = re.search(r"\((\d+)\)", row[0]) if row else None
        return int(match.group(1)) if match else None

    def _transaction(self, work):
        """Run ``work(conn)`` in one transaction, retrying on SQLSTATE 40001 with jittered backoff."""

        import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        for attempt in range(self.max_retries + 1):
            try:
                with self._conn.transaction():
                    return work(self._conn)
            except psycopg.errors.SerializationFailure:
                if attempt == self.max_retries:
                    raise
                self.retries += 1
                time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())

    def _where_sql(self, where: dict) -> tuple[str, list]:
        """``metadata @> '{"key": value}'``: one JSONB containment predicate for an equality filter."""

        if not where:
            return "", []
        return "WHERE metadata @> %s::jsonb", [json.dumps(where)]

    def count(self) -> int:
        return self._conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def drop(self) -> None:
        self._conn.execute(f"DROP TABLE IF EXISTS {self.table}")

    def close(self) -> None:  # noqa: B027 (a hook: stores without connections keep the no-op)
        if not self._conn.closed:
            self._conn.close()

    @staticmethod
    def _rows(ids, vectors, texts, metadatas, vector_param):
        from psycopg.types.json import Jsonb  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        return [(i, t, Jsonb(m), vector_param(v)) for i, t, m, v in zip(ids, texts, metadatas, vectors)]


class PgVectorStore(_SqlStore):
    """PostgreSQL + pgvector. ``ingest`` picks the write path that 12.3 compares:

    * ``"per_row"``: one INSERT per document, each its own autocommitted transaction (the naive path);
    * ``"executemany"``: one transaction, psycopg's pipelined executemany;
    * ``"copy"``: one transaction, binary COPY straight into the table; if an id already exists
      (COPY cannot upsert) the batch is re-sent through a temp staging table and one
      ``INSERT ... SELECT ... ON CONFLICT``.

    pgvector 0.6 applies a WHERE clause *after* the HNSW scan, which only yields ``hnsw.ef_search``
    candidates (default 40): a selective hybrid query can return fewer than k rows. ``ef_search``
    (every query) and ``hybrid_ef_search`` (filtered queries only, default 200) raise it for one
    transaction (``SET LOCAL``); ``exact_fallback`` re-runs a hybrid query that is still short as an exact
    scan. 12.3 measures both against the default.

    ``partial_index_key`` is pgvector's documented fix for filtering on a key with few distinct
    values: ``optimize()`` also builds one partial HNSW index per value of that metadata key
    (``WHERE (metadata->>'key') = 'value'``, at most ``PARTIAL_MAX_VALUES``), and a query filtering
    on the key carries that predicate with the value inlined, so the planner can pick the index
    whose every candidate already passes the filter — searched at ``ef_search`` (no post-filter
    loss to make up for), still with the exact re-run when short. Only str and int values are
    inlined (their ``->>`` text is canonical); the JSONB containment predicate stays, so the rows
    returned always match the filter.
    """

    name = "pgvector"
    INGEST_MODES = ("per_row", "executemany", "copy")
    INDEX_KINDS = (None, "hnsw", "ivfflat")
    PARTIAL_MAX_VALUES = 64

    def __init__(
        self,
        url: str | None = None,
        table: str = "phase12_chunks",
        dim: int = 384,
        index: str | None = "hnsw",
        ingest: str = "copy",
        ef_search: int | None = None,
        hybrid_ef_search: int | None = 200,
        ivfflat_probes: int | None = None,
        exact_fallback: bool = True,
        partial_index_key: str | None = None,
        recreate: bool = False,
    ):

        if ingest not in self.INGEST_MODES:
            raise ValueError(f"pgvector: ingest must be one of {self.INGEST_MODES}, got {ingest!r}")
        if index not in self.INDEX_KINDS:
            raise ValueError(f"pgvector: index must be one of {self.INDEX_KINDS}, got {index!r}")
        self.index, self.ingest, self.ef_search, self.hybrid_ef_search = index, ingest, ef_search, hybrid_ef_search
        self.ivfflat_probes, self.exact_fallback = ivfflat_probes, exact_fallback
        self.partial_index_key = partial_index_key
        self.fallbacks = 0  # hybrid queries that came back short and were re-run exactly
        super().__init__(url or database_url(), table, dim, recreate)

    def _prepare_connection(self) -> None:
        from pgvector.psycopg import register_vector  # noqa: PLC0415 (pgvector loads only on the path that uses it)

        if self._conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(self._conn)

    def _create_table(self) -> None:
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (id text PRIMARY KEY, text text NOT NULL, "
            f"metadata jsonb NOT NULL DEFAULT '{{}}', embedding vector({self.dim}) NOT NULL)"
        )

    # -- writes ----------------------------------------------------------------------------
    def _upsert_sql(self, source: str = "VALUES (%s, %s, %s, %s)") -> str:
        return (
            f"INSERT INTO {self.table} (id, text, metadata, embedding) {source} "
            "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, "
            "embedding = EXCLUDED.embedding"
        )

    def _insert(self, ids, vectors, texts, metadatas) -> None:
        rows = self._rows(ids, vectors, texts, metadatas, self._vector_param)
        if self.ingest == "per_row":
            for row in rows:  # autocommit: every statement is its own transaction (and fsync)
                self._conn.execute(self._upsert_sql(), row)
        elif self.ingest == "executemany":
            self._transaction(lambda conn: conn.cursor().executemany(self._upsert_sql(), rows))
        else:
            import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

            try:  # new ids (a bulk load): COPY straight into the table
                self._transaction(lambda conn: self._copy(conn, rows, self.table))
            except psycopg.errors.UniqueViolation:  # some ids exist: COPY to a stage, then upsert
                self._transaction(lambda conn: self._copy_upsert(conn, rows))

    @staticmethod
    def _copy(conn, rows, table: str) -> None:
        with conn.cursor().copy(f"COPY {table} (id, text, metadata, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "jsonb", "vector"])
            for row in rows:
                copy.write_row(row)

    def _copy_upsert(self, conn, rows) -> None:
        stage = f"{self.table}_stage"
        conn.execute(f"CREATE TEMP TABLE {stage} (LIKE {self.table}) ON COMMIT DROP")
        self._copy(conn, rows, stage)
        conn.execute(self._upsert_sql(f"SELECT id, text, metadata, embedding FROM {stage}"))

    # -- reads -----------------------------------------------------------------------------
    def _search(self, vector, k, where) -> list[Hit]:
        hits = self._query(vector, k, where, exact=False)
        if where and len(hits) < k and self.exact_fallback and self.index is not None:
            exact = self._query(vector, k, where, exact=True)
            if len(exact) > len(hits):
                self.fallbacks += 1
                hits = exact
        return hits

    def _partial_value(self, where: dict) -> str | None:
        """The filter value as the partial indexes' predicate spells it (None: no partial index applies)."""
        value = where.get(self.partial_index_key) if self.partial_index_key else None
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return str(value)
        return None

    def _where_sql(self, where: dict) -> tuple[str, list]:
        """The JSONB containment predicate, plus the partial indexes' own predicate with its value inlined."""
        from psycopg import sql  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        where_sql, params = super()._where_sql(where)
        value = self._partial_value(where)
        if value is not None:
            implied = sql.SQL(" AND (metadata->>{}) = {}").format(
                sql.Literal(self.partial_index_key), sql.Literal(value)
            )
            where_sql += implied.as_string(self._conn)
        return where_sql, params

    def _query(self, vector, k, where, exact: bool) -> list[Hit]:
        where_sql, params = self._where_sql(where)
        # exact: "+ 0" makes the sort key an expression no index can serve, so PostgreSQL scans and
        # sorts every matching row. (SET enable_indexscan=off is not enough: psycopg prepares
        # repeated statements and a cached plan keeps using the index.)
        order = "(embedding <=> %s) + 0" if exact else "embedding <=> %s"
        sql = (
            f"SELECT id, text, metadata, 1 - (embedding <=> %s) AS score FROM {self.table} "
            f"{where_sql} ORDER BY {order} LIMIT %s"
        )
        args = [vector, *params, vector, k]

        # a filter served by its own partial index loses no candidates to the WHERE: no wider beam needed
        post_filtered = bool(where) and self._partial_value(where) is None
        ef_search = (
            ((self.hybrid_ef_search or self.ef_search) if post_filtered else self.ef_search)
            if self.index == "hnsw"
            else None
        )
        probes = self.ivfflat_probes if self.index == "ivfflat" else None

        def work(conn):  # SET LOCAL lasts until the end of this transaction only
            if ef_search:
                conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            if probes:
                conn.execute(f"SET LOCAL ivfflat.probes = {int(probes)}")
            return conn.execute(sql, args).fetchall()

        needs_tx = not exact and (ef_search or probes)
        rows = self._transaction(work) if needs_tx else self._conn.execute(sql, args).fetchall()
        return [Hit(id_, float(score), text, meta) for id_, text, meta, score in rows]

    # -- index -----------------------------------------------------------------------------
    def optimize(self) -> None:  # noqa: B027 (a hook: stores without an index keep the no-op)
        """Build the configured ANN index (cosine ops) and refresh planner statistics."""
        if self.index == "hnsw":
            self._conn.execute("SET maintenance_work_mem = '256MB'")
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw (embedding vector_cosine_ops)"
            )
            if self.partial_index_key:
                self._build_partial_indexes()
        elif self.index == "ivfflat":
            # pgvector's guidance: lists = rows / 1000 (up to 1M rows), probes = sqrt(lists)
            lists = max(1, self.count() // 1000)
            self.ivfflat_probes = self.ivfflat_probes or max(1, round(lists**0.5))
            self._conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_ivfflat ON {self.table} "
                f"USING ivfflat (embedding vector_cosine_ops) WITH (lists = {lists})"
            )
        self._conn.execute(f"ANALYZE {self.table}")

    def _build_partial_indexes(self) -> None:
        """One HNSW index per distinct value of ``partial_index_key`` (see the class doc)."""

        from psycopg import sql  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        key = sql.Literal(self.partial_index_key)
        values = [
            v
            for (v,) in self._conn.execute(
                sql.SQL("SELECT DISTINCT metadata->>{} FROM {}").format(key, sql.Identifier(self.table))
            )
            if v is not None
        ]
        if len(values) > self.PARTIAL_MAX_VALUES:
            raise ValueError(
                f"pgvector: partial_index_key {self.partial_index_key!r} has {len(values)} distinct values "
                f"(> {self.PARTIAL_MAX_VALUES}): partition the table instead of one index per value"
            )
        for value in values:
            name = f"{self.table}_hnsw_p_{hashlib.sha1(value.encode()).hexdigest()[:10]}"
            self._conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops) WHERE (metadata->>{}) = {}"
                ).format(sql.Identifier(name), sql.Identifier(self.table), key, sql.Literal(value))
            )

    def partial_indexes(self) -> list[str]:
        """Names of this table's per-value partial HNSW indexes."""
        return [
            name
            for (name,) in self._conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexname LIKE %s ORDER BY indexname",
                (self.table, f"{self.table}_hnsw_p_%"),
            )
        ]

    def drop_indexes(self) -> None:
        for kind in ("hnsw", "ivfflat"):
            self._conn.execute(f"DROP INDEX IF EXISTS {self.table}_{kind}")
        for name in self.partial_indexes():
            self._conn.execute(f"DROP INDEX IF EXISTS {name}")


class CockroachStore(_SqlStore):
    """CockroachDB (25.2+) with its own ``VECTOR(n)`` type and ``CREATE VECTOR INDEX``.

    Where it differs from pgvector: the vector index is a k-means partition tree (C-SPANN), tuned
    per session with ``vector_search_beam_size``; a filter is accelerated only when it constrains
    the index's *prefix column*, so ``prefix_key`` names the metadata key copied into its own
    column and indexed as ``(prefix_value, embedding)``. A second index on ``(embedding)`` alone serves
    unfiltered queries (a prefixed index is used only when every prefix column is pinned).
    The index uses the default ``vector_l2_ops`` (the only opclass in 25.2); vectors are unit
    length, so L2 order = cosine order and cosine = 1 - d²/2. Writes are batched multi-row
    ``UPSERT`` statements in SERIALIZABLE transactions, retried on 40001.
    """

    name = "cockroachdb"
    INGEST_MODES = ("per_row", "batch")

    def __init__(
        self,
        url: str | None = None,
        table: str = "phase12_chunks",
        dim: int = 384,
        prefix_key: str | None = "bucket",
        beam_size: int | None = None,
        ingest: str = "batch",
        rows_per_statement: int = 100,
        recreate: bool = False,
    ):

        url = url or crdb_url()
        if not url:
            raise MissingResource("CockroachDB is not configured: set LAB_CRDB_URL=postgresql://root@host:26257/db")
        if ingest not in self.INGEST_MODES:
            raise ValueError(f"cockroachdb: ingest must be one of {self.INGEST_MODES}, got {ingest!r}")
        self.prefix_key, self.beam_size, self.ingest = prefix_key, beam_size, ingest
        self.rows_per_statement = rows_per_statement
        super().__init__(url, table, dim, recreate)

    def _prepare_connection(self) -> None:
        if self.beam_size:
            self._conn.execute(f"SET vector_search_beam_size = {int(self.beam_size)}")

    def _create_table(self) -> None:
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (id STRING PRIMARY KEY, text STRING NOT NULL, "
            f"metadata JSONB NOT NULL DEFAULT '{{}}', prefix_value STRING, embedding VECTOR({self.dim}) NOT NULL)"
        )

    def _vector_param(self, vector: np.ndarray) -> str:
        return "[" + ",".join(map(str, vector.tolist())) + "]"  # VECTOR's text form, cast in SQL

    def _prefix(self, metadata: dict) -> str | None:
        value = metadata.get(self.prefix_key) if self.prefix_key else None
        return None if value is None else str(value)

    def _insert(self, ids, vectors, texts, metadatas) -> None:
        rows = [
            (*row, self._prefix(m))
            for row, m in zip(self._rows(ids, vectors, texts, metadatas, self._vector_param), metadatas)
        ]
        one = "(%s, %s, %s, %s::VECTOR, %s)"
        head = f"UPSERT INTO {self.table} (id, text, metadata, embedding, prefix_value) VALUES "
        if self.ingest == "per_row":
            for row in rows:
                self._transaction(lambda conn, row=row: conn.execute(head + one, row))
            return
        for start in range(0, len(rows), self.rows_per_statement):
            chunk = rows[start : start + self.rows_per_statement]
            sql = head + ", ".join([one] * len(chunk))
            params = [value for row in chunk for value in row]
            self._transaction(lambda conn, sql=sql, params=params: conn.execute(sql, params))

    def _where_sql(self, where: dict) -> tuple[str, list]:

        clauses, params = [], []
        rest = dict(where)
        if self.prefix_key and self.prefix_key in rest:
            clauses.append("prefix_value = %s")  # pins the vector index's prefix column
            params.append(str(rest.pop(self.prefix_key)))
        if rest:
            clauses.append("metadata @> %s::JSONB")
            params.append(json.dumps(rest))
        return ("WHERE " + " AND ".join(clauses), params) if clauses else ("", [])

    def _search(self, vector, k, where) -> list[Hit]:
        where_sql, params = self._where_sql(where)
        literal = self._vector_param(vector)
        # ORDER BY spells out `column <-> constant` (the shape the optimizer matches to a vector index)
        rows = self._conn.execute(
            f"SELECT id, text, metadata, embedding <-> %s::VECTOR AS dist FROM {self.table} "
            f"{where_sql} ORDER BY embedding <-> %s::VECTOR LIMIT %s",
            [literal, *params, literal, k],
        ).fetchall()
        return [Hit(id_, 1.0 - float(dist) ** 2 / 2.0, text, meta) for id_, text, meta, dist in rows]

    def optimize(self) -> None:  # noqa: B027 (a hook: stores without an index keep the no-op)
        """Enable and build CockroachDB vector indexes (blocks writes to the table while backfilling)."""
        import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

        try:  # needs admin; absent or already on in some versions: CREATE VECTOR INDEX says if it is off
            self._conn.execute("SET CLUSTER SETTING feature.vector_index.enabled = true")
        except psycopg.Error:
            pass
        self._conn.execute("SET sql_safe_updates = false")  # allows backfilling a non-empty table
        self._conn.execute(f"CREATE VECTOR INDEX IF NOT EXISTS {self.table}_vec ON {self.table} (embedding)")
        if self.prefix_key:
            self._conn.execute(
                f"CREATE VECTOR INDEX IF NOT EXISTS {self.table}_vec_prefix ON {self.table} (prefix_value, embedding)"
            )

    def drop_indexes(self) -> None:
        for name in ("vec", "vec_prefix"):
            self._conn.execute(f"DROP INDEX IF EXISTS {self.table}@{self.table}_{name}")
