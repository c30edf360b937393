"""The Phase 12 vector-store contract, the same tests for every backend.

NumpyStore runs everywhere; ChromaStore in-process; PgVectorStore against the embedded PostgreSQL
(pgserver, via lab.db); CockroachStore only when LAB_CRDB_URL points at a server.
"""

import os
import uuid

import numpy as np
import pytest

from lab.errors import MissingResource
from phase12_rag_storage.stores import ChromaStore, CockroachStore, Hit, NumpyStore, PgVectorStore

DIM = 8


def _open(kind: str):
    name = f"t_{uuid.uuid4().hex[:12]}"
    if kind == "numpy":
        return NumpyStore(DIM)
    if kind == "chroma":
        return ChromaStore(name.replace("_", "-"), DIM, recreate=True)
    if kind == "pgvector":
        return PgVectorStore(table=name, dim=DIM, recreate=True)
    return CockroachStore(table=name, dim=DIM, recreate=True)


BACKENDS = [
    "numpy",
    "chroma",
    pytest.param("pgvector", marks=pytest.mark.db),
    pytest.param(
        "cockroachdb",
        marks=[
            pytest.mark.db,
            pytest.mark.skipif(
                not os.environ.get("LAB_CRDB_URL"), reason="LAB_CRDB_URL not set: no CockroachDB server"
            ),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def store(request):
    s = _open(request.param)
    yield s
    if hasattr(s, "drop"):
        s.drop()
    s.close()


def _unit(rows):
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def rows():
    """Five docs: axis-aligned vectors (distinct, easy to order) and two metadata keys."""
    vectors = _unit(np.eye(DIM)[:5] + 0.1)
    ids = [f"d{i}" for i in range(5)]
    texts = [f"text {i}" for i in range(5)]
    metas = [{"color": "red" if i % 2 == 0 else "blue", "n": i} for i in range(5)]
    return ids, vectors, texts, metas


def test_insert_count_and_search_order(store, rows):
    ids, vectors, texts, metas = rows
    store.insert(ids, vectors, texts, metas)
    assert store.count() == 5
    query = _unit([np.eye(DIM)[2] + 0.3 * np.eye(DIM)[3]])[0]  # nearest d2, then d3
    hits = store.search(query, k=3)
    assert [h.id for h in hits[:2]] == ["d2", "d3"]
    assert all(isinstance(h, Hit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].text == "text 2" and hits[0].metadata == {"color": "red", "n": 2}
    exact = store.search(vectors[4], k=1)[0]
    assert exact.id == "d4" and exact.score == pytest.approx(1.0, abs=1e-3)  # cosine similarity


def test_where_filter_runs_inside_the_search(store, rows):
    ids, vectors, texts, metas = rows
    store.insert(ids, vectors, texts, metas)
    hits = store.search(vectors[1], k=5, where={"color": "red"})
    assert {h.id for h in hits} == {"d0", "d2", "d4"}
    assert store.search(vectors[1], k=5, where={"color": "red", "n": 2})[0].id == "d2"
    assert store.search(vectors[1], k=5, where={"color": "green"}) == []


def test_insert_is_an_upsert_and_k_caps_at_count(store, rows):
    ids, vectors, texts, metas = rows
    store.insert(ids, vectors, texts, metas)
    store.insert(["d1"], vectors[1:2], ["replaced"], [{"color": "blue", "n": 1}])
    assert store.count() == 5
    assert store.search(vectors[1], k=1)[0].text == "replaced"
    assert len(store.search(vectors[0], k=50)) == 5


def test_dimension_mismatch_names_both_dims(store, rows):
    ids, vectors, texts, metas = rows
    with pytest.raises(ValueError, match=r"dimension 3 .*dim 8"):
        store.insert(["x"], np.ones((1, 3)), ["t"], [{}])
    store.insert(ids, vectors, texts, metas)
    with pytest.raises(ValueError, match=r"query vector dimension 5 .*dim 8"):
        store.search(np.ones(5), k=1)


def test_empty_and_malformed_input_is_rejected_before_writing(store, rows):
    ids, vectors, texts, metas = rows
    with pytest.raises(ValueError, match="no documents"):
        store.insert([], np.zeros((0, DIM)), [], [])
    with pytest.raises(ValueError, match=r"document 1 \(id 'd1'\) has empty text"):
        store.insert(ids, vectors, ["ok", "  ", "ok", "ok", "ok"], metas)
    with pytest.raises(ValueError, match="lengths differ"):
        store.insert(ids, vectors[:4], texts, metas)
    with pytest.raises(ValueError, match="k must be >= 1"):
        store.search(vectors[0], k=0)
    assert store.count() == 0


def test_numpy_store_batch_ground_truth_matches_single_search(rows):
    ids, vectors, texts, metas = rows
    store = NumpyStore(DIM)
    store.insert(ids, vectors, texts, metas)
    batch = store.search_ids(vectors[:3], k=2)
    assert batch == [[h.id for h in store.search(v, k=2)] for v in vectors[:3]]


def test_numpy_store_filter_sees_rows_upserted_after_an_earlier_filtered_search(rows):
    """The filter's row mask is reused between searches, never across an insert."""
    ids, vectors, texts, metas = rows
    store = NumpyStore(DIM)
    store.insert(ids, vectors, texts, metas)
    assert {h.id for h in store.search(vectors[1], k=5, where={"color": "blue"})} == {"d1", "d3"}
    store.insert(["d5"], vectors[1:2], ["new"], [{"color": "blue", "n": 5}])  # a new row
    store.insert(["d3"], vectors[3:4], ["moved"], [{"color": "red", "n": 3}])  # an upsert changing the filter
    assert {h.id for h in store.search(vectors[1], k=5, where={"color": "blue"})} == {"d1", "d5"}
    assert {h.id for h in store.search(vectors[1], k=5, where={"color": "blue", "n": 5})} == {"d5"}


@pytest.mark.db
@pytest.mark.parametrize("ingest", ["per_row", "executemany", "copy"])
def test_pgvector_write_paths_store_the_same_rows(ingest, rows):
    ids, vectors, texts, metas = rows
    with PgVectorStore(table=f"t_{uuid.uuid4().hex[:12]}", dim=DIM, ingest=ingest, recreate=True) as store:
        store.insert(ids, vectors, texts, metas)
        store.insert(ids[:2], vectors[:2], ["new 0", "new 1"], metas[:2])  # existing ids: COPY must upsert
        assert store.count() == 5
        assert store.search(vectors[0], k=1)[0].text == "new 0"
        store.optimize()  # HNSW on a tiny table still answers
        assert store.search(vectors[3], k=1)[0].id == "d3"
        store.drop()


@pytest.mark.db
def test_pgvector_existing_table_with_other_dim_is_a_clear_error():
    table = f"t_{uuid.uuid4().hex[:12]}"
    with PgVectorStore(table=table, dim=DIM, recreate=True) as store:
        with pytest.raises(ValueError, match=r"dimension 8, but this store was opened with dim 16"):
            PgVectorStore(table=table, dim=16)
        store.drop()


def test_unreachable_database_url_is_missing_resource_with_password_redacted():
    url = "postgresql://lab:s3cret-pw@127.0.0.1:1/nowhere"
    for open_store in (lambda: PgVectorStore(url=url, dim=DIM), lambda: CockroachStore(url=url, dim=DIM)):
        with pytest.raises(MissingResource, match="cannot connect") as err:
            open_store()
        assert "s3cret-pw" not in str(err.value)


def test_cockroach_without_url_says_what_to_set(monkeypatch):
    monkeypatch.delenv("LAB_CRDB_URL", raising=False)
    with pytest.raises(MissingResource, match="LAB_CRDB_URL"):
        CockroachStore(dim=DIM)


def test_bad_table_name_is_rejected():
    with pytest.raises(ValueError, match="table name"):
        PgVectorStore(url="postgresql://unused@127.0.0.1:1/x", table="chunks; DROP TABLE x", dim=DIM)


def test_cockroach_filter_pins_the_vector_index_prefix_column():
    """No CockroachDB here: check the SQL shape that lets CREATE VECTOR INDEX (prefix_value, embedding) serve
    a hybrid query — the prefix key becomes an equality on its own column, the rest a JSONB containment."""
    store = CockroachStore.__new__(CockroachStore)
    store.prefix_key = "bucket"
    assert store._where_sql({"bucket": 3, "source": "a.md"}) == (
        "WHERE prefix_value = %s AND metadata @> %s::JSONB",
        ["3", '{"source": "a.md"}'],
    )
    assert store._where_sql({}) == ("", [])
    assert store._prefix({"bucket": 3}) == "3" and store._prefix({}) is None
    assert store._vector_param(np.array([0.5, -1.0], dtype=np.float32)) == "[0.5,-1.0]"


@pytest.mark.db
def test_pgvector_partial_index_per_filter_value_serves_the_hybrid_query():
    """pgvector's fix for a selective filter on few values: one partial HNSW index per value."""
    rng = np.random.default_rng(0)
    n, buckets = 400, 4
    vectors = _unit(rng.standard_normal((n, DIM)))
    ids, metas = [f"d{i}" for i in range(n)], [{"bucket": i % buckets, "name": f"n{i}"} for i in range(n)]
    exact = NumpyStore(DIM)
    exact.insert(ids, vectors, ids, metas)
    with PgVectorStore(table=f"t_{uuid.uuid4().hex[:12]}", dim=DIM, partial_index_key="bucket", recreate=True) as store:
        store.insert(ids, vectors, ids, metas)
        store.optimize()
        assert len(store.partial_indexes()) == buckets
        where_sql, params = store._where_sql({"bucket": 2})
        assert "(metadata->>'bucket') = '2'" in where_sql
        with store._conn.transaction():
            store._conn.execute("SET LOCAL enable_seqscan = off")
            plan = " ".join(
                r[0]
                for r in store._conn.execute(
                    f"EXPLAIN SELECT id FROM {store.table} {where_sql} ORDER BY embedding <=> %s LIMIT 5",
                    [*params, vectors[0]],
                )
            )
        assert "_hnsw_p_" in plan  # the planner matched the value's own index
        for q in vectors[:10]:
            got = [h.id for h in store.search(q, k=5, where={"bucket": 2})]
            assert got == [h.id for h in exact.search(q, k=5, where={"bucket": 2})]
        assert [h.id for h in store.search(vectors[0], k=3, where={"name": "n7"})] == ["d7"]  # other keys: unchanged
        store.drop_indexes()
        assert store.partial_indexes() == []
        store.drop()
