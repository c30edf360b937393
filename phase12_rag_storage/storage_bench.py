"""12.3 — Storage benchmark: Chroma vs pgvector/PostgreSQL vs pgvector/CockroachDB on the same vectors.

What the lesson measures, per backend and per collection size N:

1. ingest throughput with one writer and with ``writers`` concurrent writers (doc/s), each row
   labelled with its write path and the index present during the load: for pgvector binary COPY
   into an index-less table (the bulk-load path; the index is built afterwards, see "build s"),
   COPY with the HNSW index maintained on every insert (what Chroma always does), and the seed's
   per-row INSERT with the index present. A pgvector load that maintains the index at N larger than
   ``maintained_sample`` is timed on its last ``maintained_sample`` rows only: the first rows are
   COPY-loaded and the index built untimed, then the rest go through the write path under test
   (the "rows timed" column says so). The rate is still doc/s with the index maintained, taken at the
   top of the size range (an HNSW insert gets slower as the graph grows) instead of averaged from an
   empty table: at 20,000 rows and ~100 doc/s, a full per-row load costs ~3 minutes per writer count
   and teaches nothing the last 2,000 rows do not. A load that takes under ``repeat_below_s`` is run
   3 times and the median kept (the "runs" column);
2. similarity latency p50/p99 and recall@10 against exact search (``NumpyStore``);
3. hybrid latency — vector similarity AND a metadata predicate in ONE query — p50/p99, recall@10
   against the exact *filtered* top-10, and how many of the k rows actually came back;
4. all of it with no ANN index and with each index (HNSW, IVFFlat, CockroachDB's vector index);
5. the write path: per-row autocommit INSERT vs batched executemany vs binary COPY;
6. pgvector's post-filter shortfall (the WHERE runs after the HNSW scan, which yields only
   ``hnsw.ef_search`` = 40 candidates) and two fixes: raising ef_search, or an exact re-run.

Vectors: the smallest N is the real corpus (MiniLM embeddings of the phase-12 notes and the phase
READMEs, chunked); larger N are synthetic unit vectors — seeded, 384-d, drawn around ``clusters``
random centres so near neighbours exist and ANN recall means something. Tables label which is which.
``pgvector_only_sizes`` (cpu: 100,000) runs pgvector alone, COPY then HNSW build, and checks the
hybrid query at the store's default against a target (``hybrid_target_p99_ms``, ``hybrid_target_recall``).
Every metadata row carries ``bucket = i % buckets``: the hybrid filter ``bucket = b`` keeps 1/buckets
of the rows, the same selectivity at every N.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from pydantic import field_validator

from lab import Exercise, ExerciseConfig, Reference, RunContext, models
from lab.db import connect, crdb_url, server_version
from lab.errors import MissingResource
from lab.models import DEFAULT_EMBEDDER, EMBEDDED_EMBEDDER, load_embedder, weights_sha256
from phase12_rag_storage.chunking import make_chunker
from phase12_rag_storage.corpus import corpus_sha256, load_corpus, load_queries
from phase12_rag_storage.stores import ChromaStore, CockroachStore, NumpyStore, PgVectorStore

BACKENDS = ("chroma", "pgvector", "cockroachdb")
# The index each seed row was measured with: Chroma's built-in HNSW, pgvector IVFFlat, CRDB none.
SEED_INDEX = {"chroma": "hnsw", "pgvector": "ivfflat", "cockroachdb": "none"}
SEED_ROWS = {  # seed 12.3 table (M1 Pro 16 GB, 106 chunks): doc/s, doc/s, then ms
    "chroma": (1258, 1155, 0.5, 0.7, 0.6, 0.8),
    "pgvector": (717, 666, 3.7, 7.7, 7.5, 12.0),
    "cockroachdb": (383, 640, 3.7, 4.3, 3.5, 4.4),
}
SEED_SETUP = {"hardware": "M1 Pro 16 GB", "chunks": 106, "pgvector": "0.8.2"}  # the seed's 12.3 conditions
PGVECTOR_DEFAULT_EF_SEARCH = 40  # hnsw.ef_search when nothing sets it
COPY_TARGET_X = 10  # the fast write path should beat per-row autocommit INSERT by at least this factor
SEED_METRICS = (
    "single_writer_docs_per_s",
    "4_writers_docs_per_s",
    "sim_p50_ms",
    "sim_p99_ms",
    "hybrid_p50_ms",
    "hybrid_p99_ms",
)


class Config(ExerciseConfig):
    corpus: str | None = None  # folder of .md/.txt; default: phase12 notes (+ READMEs below)
    include_readmes: bool = True
    chunk_words: int = 60  # structure chunking, at most this many words per chunk
    sizes: list[int] = [0, 2000, 20000]  # 0 = the corpus itself (real MiniLM vectors)
    pgvector_only_sizes: list[int] = []  # larger N: pgvector fast-path ingest + HNSW only
    backends: list[str] = list(BACKENDS)
    pg_indexes: list[str] = ["hnsw", "ivfflat"]
    queries: int = 100  # timed queries per measurement (the real query set is cycled)
    k: int = 10
    buckets: int = 10  # hybrid filter selectivity = 1 / buckets
    batch_size: int = 500
    writers: int = 4
    ingest_paths_n: int = 1000  # docs for the per-row vs executemany vs COPY comparison
    maintained_sample: int = 2000  # pgvector loads maintaining the index at larger N: time only the last this many rows
    repeat_below_s: float = 5.0  # a load faster than this is repeated 3 times (median kept): tiny loads are noisy
    ef_search_raised: int = 200  # hnsw.ef_search for hybrid queries (PgVectorStore's default)
    hybrid_target_p99_ms: float = 10.0  # pgvector HNSW hybrid at the largest N, store default: p99 at most this
    hybrid_target_recall: float = 0.95  # ... and recall@k at least this
    clusters: int = 100
    cluster_spread: float = 2.5  # noise norm vs the unit centre: HNSW recall ~0.94 at 20k, not a trivial 1.0
    dim: int = EMBEDDED_EMBEDDER.dim  # the embedded embedder's width (384)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
        return value

    @field_validator("pg_indexes")
    @classmethod
    def _known_indexes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {"hnsw", "ivfflat"})
        if unknown:
            raise ValueError(f"unknown pgvector index kind(s) {unknown}; choose from ['hnsw', 'ivfflat']")
        return value

    @field_validator("sizes", "pgvector_only_sizes")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if any(n < 0 for n in value):
            raise ValueError(f"sizes must be >= 0 (0 = the corpus), got {value}")
        return value


# --- the vectors ---------------------------------------------------------------------------
@dataclass
class Dataset:
    kind: str  # "real MiniLM" or "synthetic clustered"
    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadatas: list[dict]
    queries: np.ndarray
    query_buckets: list[int]

    @property
    def n(self) -> int:
        return len(self.ids)


def corpus_dataset(cfg: Config, ctx: RunContext) -> Dataset:
    """Chunks of the phase corpus embedded with MiniLM; queries = the phase's real query set."""

    docs = load_corpus(cfg.corpus, include_readmes=cfg.include_readmes)
    chunker = make_chunker("structure", cfg.chunk_words)
    chunks = [chunk for doc in docs for chunk in chunker(doc)]
    query_texts = [q.query for q in load_queries()]
    embedder = load_embedder()
    ctx.model(
        DEFAULT_EMBEDDER,
        dtype="float32",
        sha256=weights_sha256(models.resolve(DEFAULT_EMBEDDER)),
        n_params=sum(p.numel() for p in embedder.parameters()),
    )
    ctx.dataset(
        "phase12 corpus chunks",
        n=len(chunks),
        sha256=corpus_sha256(docs),
        documents=len(docs),
        chunking=f"structure, <= {cfg.chunk_words} words",
    )
    vectors = embedder.encode([c.text for c in chunks], batch_size=32, normalize_embeddings=True)
    queries = embedder.encode(query_texts, batch_size=32, normalize_embeddings=True)
    reps = -(-cfg.queries // len(queries))
    rng = np.random.default_rng(cfg.seed)
    return Dataset(
        kind=f"real {EMBEDDED_EMBEDDER.family}",
        ids=[c.id for c in chunks],
        vectors=np.asarray(vectors, dtype=np.float32),
        texts=[c.text for c in chunks],
        metadatas=[{"source": c.source, "bucket": i % cfg.buckets} for i, c in enumerate(chunks)],
        queries=np.tile(queries, (reps, 1))[: cfg.queries].astype(np.float32),
        query_buckets=rng.integers(0, cfg.buckets, cfg.queries).tolist(),
    )


def _clustered(n: int, centres: np.ndarray, spread: float, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, centres.shape[1])) * (spread / np.sqrt(centres.shape[1]))
    vectors = centres[labels] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def synthetic_dataset(n: int, cfg: Config) -> Dataset:
    """Seeded unit vectors around random centres: clustered like embeddings, with a known generator."""
    rng = np.random.default_rng([cfg.seed, n])
    centres = rng.standard_normal((cfg.clusters, cfg.dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors, labels = _clustered(n, centres, cfg.cluster_spread, rng)
    queries, _ = _clustered(cfg.queries, centres, cfg.cluster_spread, rng)
    return Dataset(
        kind="synthetic clustered",
        ids=[f"v{i}" for i in range(n)],
        vectors=vectors,
        texts=[f"synthetic vector {i} of cluster {c}" for i, c in enumerate(labels)],
        metadatas=[{"cluster": int(c), "bucket": i % cfg.buckets} for i, c in enumerate(labels)],
        queries=queries,
        query_buckets=rng.integers(0, cfg.buckets, cfg.queries).tolist(),
    )


def record_synthetic(ctx: RunContext, data: Dataset, cfg: Config) -> None:

    ctx.dataset(
        f"synthetic clustered unit vectors N={data.n}",
        n=data.n,
        sha256=hashlib.sha256(data.vectors.tobytes()).hexdigest(),
        generator=f"seed {cfg.seed}, {cfg.clusters} centres, spread {cfg.cluster_spread}, dim {cfg.dim}",
    )


@dataclass
class Truth:
    similar: list[list[str]]  # exact top-k per query
    hybrid: list[list[str]]  # exact top-k per query among rows with bucket = query_buckets[i]


def exact_truth(data: Dataset, k: int) -> Truth:
    """Ground truth from NumpyStore: the exhaustive dot product every ANN index approximates."""

    exact = NumpyStore(data.vectors.shape[1])
    exact.insert(data.ids, data.vectors, data.texts, data.metadatas)
    hybrid = [[h.id for h in exact.search(q, k, {"bucket": b})] for q, b in zip(data.queries, data.query_buckets)]
    return Truth(exact.search_ids(data.queries, k), hybrid)


# --- the backends ----------------------------------------------------------------------------
def open_store(backend: str, table: str, cfg: Config, recreate: bool = False, **options):

    if backend == "chroma":  # stores opened with one name share one in-process collection
        return ChromaStore(table.replace("_", "-"), cfg.dim, recreate=recreate)
    if backend == "pgvector":
        return PgVectorStore(table=table, dim=cfg.dim, recreate=recreate, **options)
    return CockroachStore(table=table, dim=cfg.dim, recreate=recreate, **options)


def crdb_unavailable(cfg: Config) -> str | None:
    """Why CockroachDB rows are skipped (None when LAB_CRDB_URL reaches a server)."""

    if "cockroachdb" not in cfg.backends:
        return None
    if not crdb_url():
        return "LAB_CRDB_URL is not set (no CockroachDB server on this machine)"
    try:
        open_store("cockroachdb", f"p12b_probe_{os.getpid()}", cfg).close()
    except MissingResource as exc:
        return str(exc)
    return None


def batch_size(n: int, cfg: Config) -> int:
    """``cfg.batch_size``, shrunk for small N so each of the writers still gets several batches."""
    return max(1, min(cfg.batch_size, n // (cfg.writers * 4)))


def ingest(
    backend: str,
    table: str,
    data: Dataset,
    cfg: Config,
    writers: int,
    index_first: bool = False,
    timed_rows: int | None = None,
    **options,
) -> tuple[float, int]:
    """Load ``data`` into a fresh table with ``writers`` threads, each with its own connection.

    ``index_first``: build the store's ANN index on the empty table first, so every insert maintains
    it (Chroma always does). ``timed_rows``: time only the last this many rows; the ones before are
    COPY-loaded (and the index built, if ``index_first``) untimed, so the timed rows meet the table
    and index of a full load at this N. Returns (doc/s over the wall-clock time of the timed rows,
    serialization retries). Batches (``batch_size`` at the full N) are dealt round-robin.
    """

    timed_rows = data.n if timed_rows is None else min(timed_rows, data.n)
    first = data.n - timed_rows
    with open_store(
        backend, table, cfg, recreate=True, **{**options, **({"ingest": "copy"} if first else {})}
    ) as fresh:
        if first:  # the untimed part: bulk COPY (pgvector only), batches of the full-N size
            size = batch_size(data.n, cfg)
            for i in range(0, first, size):
                b = slice(i, min(i + size, first))
                fresh.insert(data.ids[b], data.vectors[b], data.texts[b], data.metadatas[b])
        if index_first:
            fresh.optimize()
    stores = [open_store(backend, table, cfg, **options) for _ in range(writers)]
    size = batch_size(data.n, cfg)
    batches = [slice(i, min(i + size, data.n)) for i in range(first, data.n, size)]

    def write(w: int) -> None:
        for b in batches[w::writers]:
            stores[w].insert(data.ids[b], data.vectors[b], data.texts[b], data.metadatas[b])

    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    elapsed = time.perf_counter() - start
    retries = sum(getattr(s, "retries", 0) for s in stores)
    for s in stores:
        s.close()
    return timed_rows / elapsed, retries


def timed_rows(backend: str, index: str, n: int, cfg: Config) -> int:
    """Rows a load times: all, except a pgvector load maintaining its index at N > ``maintained_sample``."""
    sampled = backend == "pgvector" and index.startswith("hnsw") and cfg.maintained_sample > 0
    return min(n, cfg.maintained_sample) if sampled else n


def repeated_ingest(cfg: Config, load) -> tuple[float, int, int]:
    """(median doc/s, retries, runs): one run, or 3 when the first took under ``repeat_below_s``."""
    start = time.perf_counter()
    runs = [load()]
    if time.perf_counter() - start < cfg.repeat_below_s:
        runs += [load(), load()]
    return float(np.median([r[0] for r in runs])), sum(r[1] for r in runs), len(runs)


def measure(store, data: Dataset, truth: Truth, k: int) -> dict:
    """Time every query; recall@k vs exact; rows returned / expected for the hybrid query."""
    for q in data.queries[:5]:  # warm caches and plans: the first query of a connection is not typical
        store.search(q, k)
    sim_ms, sim_recall, hyb_ms, hyb_recall, fill = [], [], [], [], []
    for i, q in enumerate(data.queries):
        start = time.perf_counter()
        hits = store.search(q, k)
        sim_ms.append((time.perf_counter() - start) * 1e3)
        sim_recall.append(len({h.id for h in hits} & set(truth.similar[i])) / len(truth.similar[i]))
        start = time.perf_counter()
        hits = store.search(q, k, where={"bucket": data.query_buckets[i]})
        hyb_ms.append((time.perf_counter() - start) * 1e3)
        expected = truth.hybrid[i]
        hyb_recall.append(len({h.id for h in hits} & set(expected)) / len(expected))
        fill.append(len(hits) / len(expected))
    return {
        "sim_p50": float(np.percentile(sim_ms, 50)),
        "sim_p99": float(np.percentile(sim_ms, 99)),
        "sim_recall": float(np.mean(sim_recall)),
        "hyb_p50": float(np.percentile(hyb_ms, 50)),
        "hyb_p99": float(np.percentile(hyb_ms, 99)),
        "hyb_recall": float(np.mean(hyb_recall)),
        "fill_mean": float(np.mean(fill)),
        "fill_min": float(np.min(fill)),
    }


# How each backend is loaded: (write path, index present during the load). pgvector's last variant
# leaves the table index-less for query_rows, which builds each index on it in turn.
CHROMA_LOAD = ("upsert batches", "hnsw (maintained per insert)")
PG_LOADS = (
    ("per_row", "hnsw (maintained per insert)"),
    ("copy", "hnsw (maintained per insert)"),
    ("copy", "none (built after the load)"),
)
SEED_LOAD = {"chroma": CHROMA_LOAD, "pgvector": PG_LOADS[0], "cockroachdb": ("batch", "none (built after the load)")}


def load_variants(backend: str, pg_only: bool) -> list[tuple[str, str]]:
    if backend == "chroma":
        return [CHROMA_LOAD]
    if backend == "pgvector":
        return [PG_LOADS[-1]] if pg_only else list(PG_LOADS)  # the largest N: bulk load only
    return [SEED_LOAD["cockroachdb"]]


def index_variants(backend: str, cfg: Config) -> list[str]:
    if backend == "chroma":
        return ["hnsw"]  # chroma always indexes on insert; there is no unindexed mode
    if backend == "pgvector":  # HNSW last: the post-filter measurement reuses its index
        return ["none", *sorted(cfg.pg_indexes, key=lambda kind: kind == "hnsw")]
    return ["none", "vector index"]


def query_rows(backend: str, table: str, data: Dataset, truth: Truth, cfg: Config, only: list[str] | None = None):
    """Query latency/recall without an index, then with each index (built on the loaded table)."""
    rows = []
    store = open_store(backend, table, cfg)
    try:
        for variant in only or index_variants(backend, cfg):
            build_s = None
            if backend != "chroma" and variant != "none":
                store.drop_indexes()
                if backend == "pgvector":
                    store.index, store.ivfflat_probes = variant, None
                start = time.perf_counter()
                store.optimize()
                build_s = time.perf_counter() - start
            elif backend == "pgvector":
                store.index = None  # exact scan: no SET LOCAL round trips, no re-runs
            m = measure(store, data, truth, cfg.k)
            rows.append(dict(N=data.n, backend=backend, index=variant, build_s=build_s, **m))
    finally:
        store.close()
    return rows


def postfilter_rows(table: str, data: Dataset, truth: Truth, cfg: Config) -> list[dict]:
    """pgvector 0.6 HNSW + a selective WHERE: default ef_search, raised ef_search, exact re-run, then
    the store default on top of one partial HNSW index per bucket (pgvector's documented approach).

    Runs on the loaded table right after the HNSW variant of ``query_rows`` (the index exists).
    """

    raised = cfg.ef_search_raised
    settings = [
        (
            f"ef_search={PGVECTOR_DEFAULT_EF_SEARCH} (pgvector default), no fallback",
            dict(hybrid_ef_search=None, exact_fallback=False),
        ),
        (f"SET LOCAL hnsw.ef_search={raised}", dict(hybrid_ef_search=raised, exact_fallback=False)),
        (
            f"ef_search={PGVECTOR_DEFAULT_EF_SEARCH} + exact re-run when short",
            dict(hybrid_ef_search=None, exact_fallback=True),
        ),
        (f"ef_search={raised} + exact re-run (store default)", dict(hybrid_ef_search=raised, exact_fallback=True)),
        (PARTIAL_SETTING, dict(hybrid_ef_search=raised, exact_fallback=True, partial_index_key="bucket")),
    ]
    rows = []
    for label, options in settings:
        with PgVectorStore(table=table, dim=cfg.dim, index="hnsw", **options) as store:
            start = time.perf_counter()
            store.optimize()  # CREATE INDEX IF NOT EXISTS: reuses the HNSW index already built
            build_s = time.perf_counter() - start if store.partial_index_key else None
            m = measure(store, data, truth, cfg.k)
            rows.append(dict(N=data.n, setting=label, fallbacks=store.fallbacks, build_s=build_s, **m))
    return rows


PARTIAL_SETTING = (
    f"one partial HNSW index per bucket (searched at ef_search={PGVECTOR_DEFAULT_EF_SEARCH}) + exact re-run when short"
)


def ingest_path_rows(backend: str, cfg: Config) -> list[dict]:
    """The same docs through each write path, one writer: the naive path is per-row autocommit."""
    data = synthetic_dataset(cfg.ingest_paths_n, cfg)
    paths = ("per_row", "executemany", "copy") if backend == "pgvector" else ("per_row", "batch")
    table = f"p12b_{os.getpid()}_{backend}_paths"
    rows = []
    for path in paths:
        docs_s, retries = ingest(backend, table, data, cfg, writers=1, ingest=path)
        rows.append(dict(backend=backend, path=path, n=data.n, docs_s=docs_s, retries=retries))
    open_store(backend, table, cfg).drop()
    naive = rows[0]["docs_s"]
    for row in rows:
        row["ratio"] = row["docs_s"] / naive
    return rows


# --- the run -------------------------------------------------------------------------------
def bench_size(
    data: Dataset, cfg: Config, ctx: RunContext, backends: list[str], skipped: dict[str, str], pg_only: bool
) -> tuple[list, list, list]:
    truth = exact_truth(data, cfg.k)
    ingest_rows, q_rows, pf_rows = [], [], []
    for backend in backends:
        if backend in skipped:
            ingest_rows.append(
                dict(
                    N=data.n,
                    kind=data.kind,
                    backend=backend,
                    path="-",
                    index="-",
                    status=f"skipped: {skipped[backend]}",
                )
            )
            q_rows.append(dict(N=data.n, backend=backend, index="-", status=f"skipped: {skipped[backend]}"))
            continue
        table = f"p12b_{os.getpid()}_{backend}_{data.n}"
        for path, index in load_variants(backend, pg_only):  # the last one leaves `table` loaded, index-less
            ctx.log(f"N={data.n}: {backend} ingest, {path}, index {index}")
            options = {} if backend == "chroma" else {"ingest": path}
            first = index.startswith("hnsw") and backend != "chroma"
            timed = timed_rows(backend, index, data.n, cfg)
            one, retries, runs = repeated_ingest(
                cfg, partial(ingest, backend, table, data, cfg, 1, first, timed_rows=timed, **options)
            )
            many, runs_many = None, None
            if not pg_only:
                many, more, runs_many = repeated_ingest(
                    cfg,
                    partial(ingest, backend, table + "_w", data, cfg, cfg.writers, first, timed_rows=timed, **options),
                )
                retries += more
                open_store(backend, table + "_w", cfg).drop()
            ingest_rows.append(
                dict(
                    N=data.n,
                    kind=data.kind,
                    backend=backend,
                    path=path,
                    index=index,
                    status="ok",
                    one=one,
                    many=many,
                    retries=retries,
                    timed=timed,
                    runs=runs,
                    runs_many=runs_many,
                )
            )
        ctx.log(f"N={data.n}: {backend} queries")
        q_rows += query_rows(backend, table, data, truth, cfg, only=["none", "hnsw"] if pg_only else None)
        if backend == "pgvector" and "hnsw" in cfg.pg_indexes:
            pf_rows += postfilter_rows(table, data, truth, cfg)
        open_store(backend, table, cfg).drop()
    return ingest_rows, q_rows, pf_rows


def run(cfg: Config, ctx: RunContext) -> None:
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    load_before = os.getloadavg()[0]
    skipped = {}
    reason = crdb_unavailable(cfg)
    if reason:
        skipped["cockroachdb"] = reason
    pg_version = conditions(cfg, ctx, skipped)

    ingest_rows, q_rows, pf_rows, path_rows = [], [], [], []
    corpus_n = None
    for size in cfg.sizes:
        data = corpus_dataset(cfg, ctx) if size == 0 else synthetic_dataset(size, cfg)
        if size:
            record_synthetic(ctx, data, cfg)
        corpus_n = data.n if size == 0 else corpus_n
        rows = bench_size(data, cfg, ctx, cfg.backends, skipped, pg_only=False)
        ingest_rows += rows[0]
        q_rows += rows[1]
        pf_rows += rows[2]
    if "pgvector" in cfg.backends:
        for size in cfg.pgvector_only_sizes:
            data = synthetic_dataset(size, cfg)
            record_synthetic(ctx, data, cfg)
            rows = bench_size(data, cfg, ctx, ["pgvector"], skipped, pg_only=True)
            ingest_rows += rows[0]
            q_rows += rows[1]
            pf_rows += rows[2]
    for backend in ("pgvector", "cockroachdb"):
        if backend in cfg.backends and backend not in skipped:
            path_rows += ingest_path_rows(backend, cfg)
    load_after = os.getloadavg()[0]

    report(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n, skipped, (load_before, load_after), pg_version)


def conditions(cfg: Config, ctx: RunContext, skipped: dict[str, str]) -> str | None:
    """Server versions and index parameters: a benchmark number means nothing without them.
    Returns the pgvector version (None when pgvector is not benchmarked)."""
    import chromadb  # noqa: PLC0415 (heavy: chromadb loads on first use)

    rows, pg_version = [], None
    if "chroma" in cfg.backends:
        rows.append(
            [
                "chroma",
                f"chromadb {chromadb.__version__}, in-process",
                "HNSW space=cosine, chroma defaults (M=16, ef_construction=100, ef_search=100)",
            ]
        )
    if "pgvector" in cfg.backends:
        v = server_version()
        pg_version = v["pgvector"]
        rows.append(
            [
                "pgvector",
                f"{v['server']}, pgvector {v['pgvector']} (lab.db)",
                "HNSW vector_cosine_ops m=16 ef_construction=64 (defaults); IVFFlat lists=rows/1000, "
                "probes=sqrt(lists)",
            ]
        )
    if "cockroachdb" in cfg.backends:
        if "cockroachdb" in skipped:
            version = f"skipped: {skipped['cockroachdb']}"
        else:
            with connect(crdb_url()) as conn:
                version = conn.execute("SELECT version()").fetchone()[0].split("(")[0].strip()
        rows.append(
            [
                "cockroachdb",
                version,
                "VECTOR INDEX (embedding) + (prefix_value = bucket, embedding), "
                "vector_l2_ops, default partition sizes and vector_search_beam_size",
            ]
        )
    ctx.table("conditions", rows, columns=["backend", "version", "index parameters"], title="What was measured")
    return pg_version


def _r(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def report(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n, skipped, loads, pg_version) -> None:
    ctx.table(
        "ingest",
        [
            [
                r["N"],
                r["kind"],
                r["backend"],
                r["path"],
                r["index"],
                r["status"],
                batch_size(r["N"], cfg),
                timed_label(r),
                runs_label(r),
                _r(r.get("one"), 0),
                _r(r.get("many"), 0),
                _r(r["many"] / r["one"]) if r.get("many") else None,
                r.get("retries"),
            ]
            for r in ingest_rows
        ],
        columns=[
            "N",
            "vectors",
            "backend",
            "write path",
            "index during load",
            "status",
            "batch",
            "rows timed",
            "runs (1 / many writers)",
            "1 writer doc/s",
            f"{cfg.writers} writers doc/s",
            "speedup",
            "40001 retries",
        ],
        title="Ingest throughput by write path and by the index present during the load (rows timed: a pgvector "
        f"load maintaining its index above {cfg.maintained_sample:,} rows is timed on its last "
        f"{cfg.maintained_sample:,} rows, the rows before COPY-loaded and indexed untimed; runs: loads under "
        f"{cfg.repeat_below_s:g} s are run 3 times, median kept)",
    )
    ctx.table(
        "queries",
        [
            [
                r["N"],
                r["backend"],
                r["index"],
                r.get("status", "ok"),
                _r(r.get("build_s")),
                _r(r.get("sim_p50")),
                _r(r.get("sim_p99")),
                _r(r.get("sim_recall"), 3),
                _r(r.get("hyb_p50")),
                _r(r.get("hyb_p99")),
                _r(r.get("hyb_recall"), 3),
                _r(r.get("fill_mean"), 3),
                _r(r.get("fill_min"), 3),
            ]
            for r in q_rows
        ],
        columns=[
            "N",
            "backend",
            "index",
            "status",
            "build s",
            "sim p50 ms",
            "sim p99 ms",
            "sim recall@10",
            "hybrid p50 ms",
            "hybrid p99 ms",
            "hybrid recall@10",
            "hybrid rows/k mean",
            "hybrid rows/k min",
        ],
        title=f"Query latency and recall@{cfg.k} vs exact search (hybrid = similarity + bucket filter, "
        f"selectivity 1/{cfg.buckets}, one SQL statement; pgvector hybrid with the store default "
        f"ef_search={cfg.ef_search_raised} + exact re-run when short)",
    )
    if pf_rows:
        ctx.table(
            "postfilter",
            [
                [
                    r["N"],
                    r["setting"],
                    _r(r["fill_mean"], 3),
                    _r(r["fill_min"], 3),
                    _r(r["hyb_recall"], 3),
                    _r(r["hyb_p50"]),
                    _r(r["hyb_p99"]),
                    r["fallbacks"],
                    _r(r["build_s"], 1),
                ]
                for r in pf_rows
            ],
            columns=[
                "N",
                "pgvector HNSW setting",
                "rows/k mean",
                "rows/k min",
                "hybrid recall@10",
                "p50 ms",
                "p99 ms",
                "exact re-runs",
                "partial indexes build s",
            ],
            title=f"pgvector 0.6 post-filtering: hybrid queries keeping 1/{cfg.buckets} of rows",
        )
    if path_rows:
        ctx.table(
            "ingest_paths",
            [[r["backend"], r["path"], r["n"], _r(r["docs_s"], 0), _r(r["ratio"], 1)] for r in path_rows],
            columns=["backend", "write path", "docs", "doc/s", "x per-row"],
            title="Naive per-row autocommit INSERT vs the fast paths (one writer, synthetic vectors)",
        )
    seed_table(cfg, ctx, ingest_rows, q_rows, corpus_n, skipped)
    headline_metrics(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n)
    plots(cfg, ctx, ingest_rows, q_rows, path_rows)
    findings(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n, skipped, loads, pg_version)


def timed_label(r: dict) -> str | None:
    """ "all" or "last T of N (first N-T COPY-loaded + index built, untimed)"."""
    if r.get("status") != "ok":
        return None
    if r["timed"] >= r["N"]:
        return "all"
    return f"last {r['timed']:,} of {r['N']:,} (first {r['N'] - r['timed']:,} COPY-loaded + index built, untimed)"


def runs_label(r: dict) -> str | None:
    if r.get("status") != "ok":
        return None
    return f"{r['runs']}" if r.get("runs_many") is None else f"{r['runs']} / {r['runs_many']}"


def _row(rows, **match):
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def seed_values(backend, ingest_rows, q_rows, corpus_n):
    """Our six seed-table figures for one backend at the corpus size: ingest through the seed's write
    path (per-row INSERT for pgvector) with the index present, queries on the seed's index."""
    path, index = SEED_LOAD[backend]
    ing = _row(ingest_rows, N=corpus_n, backend=backend, path=path, index=index, status="ok")
    q = _row(q_rows, N=corpus_n, backend=backend, index=SEED_INDEX[backend])
    if not ing or not q:
        return None
    return (ing["one"], ing["many"], q["sim_p50"], q["sim_p99"], q["hyb_p50"], q["hyb_p99"])


def seed_table(cfg, ctx, ingest_rows, q_rows, corpus_n, skipped) -> None:
    rows = []
    for backend in cfg.backends:
        ours = seed_values(backend, ingest_rows, q_rows, corpus_n)
        seed = SEED_ROWS[backend]
        for i, metric in enumerate(SEED_METRICS):
            value = _r(ours[i], 0 if i < 2 else 2) if ours else f"skipped: {skipped.get(backend, 'not run')}"
            how = (
                "write path {}, index during load {}".format(*SEED_LOAD[backend])
                if i < 2
                else f"index {SEED_INDEX[backend]}"
            )
            rows.append([backend, metric, seed[i], SEED_INDEX[backend], value, how])
    ctx.table(
        "seed_vs_ours",
        rows,
        columns=[
            "backend",
            "metric",
            "seed (M1 Pro, 106 chunks)",
            "seed's index",
            f"ours (2 shared vCPU, {corpus_n} chunks)",
            "ours measured with",
        ],
        title="The seed's 12.3 table next to ours — different hardware, corpus and load; compare shapes, not values",
    )


def headline_metrics(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n) -> None:
    for backend in cfg.backends:
        ours = seed_values(backend, ingest_rows, q_rows, corpus_n)
        if not ours:
            continue
        for name, value in zip(SEED_METRICS, ours):
            higher = name.endswith("docs_per_s")
            how = (
                "write path {}, index during load {}".format(*SEED_LOAD[backend])
                if higher
                else f"index {SEED_INDEX[backend]}"
            )
            ctx.metric(
                f"{backend}_{name}",
                round(value, 1 if higher else 3),
                "doc/s" if higher else "ms",
                higher_is_better=higher,
                description=f"N={corpus_n} real chunks, {how}",
            )
    shared_n = max((r["N"] for r in ingest_rows if r.get("many")), default=None)
    for r in ingest_rows:
        if r["N"] == shared_n and r["status"] == "ok":
            tag = f"{r['backend']}_ingest_{r['path'].replace(' ', '_')}_{r['index'].split()[0]}"
            timed = "" if r["timed"] >= r["N"] else f", timed on the last {r['timed']:,} rows (the rest preloaded)"
            ctx.metric(
                f"{tag}_docs_per_s_max_n",
                round(r["one"], 0),
                "doc/s",
                higher_is_better=True,
                description=f"N={shared_n}, one writer, {r['path']}, index during load: {r['index']}{timed}",
            )
    per_row = _row(path_rows, backend="pgvector", path="per_row")
    for path in ("copy", "executemany"):
        row = _row(path_rows, backend="pgvector", path=path)
        if row and per_row:
            ctx.metric(
                f"pgvector_{path}_vs_per_row_x",
                round(row["ratio"], 1),
                "x",
                higher_is_better=True,
                description=f"{path} doc/s / per-row autocommit doc/s, {row['n']} docs",
            )
            ctx.metric(f"pgvector_{path}_docs_per_s", round(row["docs_s"], 0), "doc/s", higher_is_better=True)
    if per_row:
        ctx.metric("pgvector_per_row_docs_per_s", round(per_row["docs_s"], 0), "doc/s", higher_is_better=True)
    max_n = max((r["N"] for r in q_rows if r["backend"] == "pgvector" and "sim_p50" in r), default=None)
    for backend, index in (
        ("pgvector", "hnsw"),
        ("pgvector", "ivfflat"),
        ("pgvector", "none"),
        ("chroma", "hnsw"),
        ("cockroachdb", "vector index"),
    ):
        top = max(
            (r["N"] for r in q_rows if r["backend"] == backend and r["index"] == index and "sim_p50" in r), default=None
        )
        row = _row(q_rows, N=top, backend=backend, index=index)
        if row:
            tag = index.replace(" ", "_")
            ctx.metric(
                f"{backend}_{tag}_recall_at_{cfg.k}_max_n",
                round(row["sim_recall"], 4),
                "",
                higher_is_better=True,
                description=f"N={top}",
            )
            ctx.metric(
                f"{backend}_{tag}_sim_p50_ms_max_n",
                round(row["sim_p50"], 3),
                "ms",
                higher_is_better=False,
                description=f"N={top}",
            )
    hybrid = _row(q_rows, N=max_n, backend="pgvector", index="hnsw")
    if hybrid:
        met = hybrid["hyb_p99"] <= cfg.hybrid_target_p99_ms and hybrid["hyb_recall"] >= cfg.hybrid_target_recall
        for key, name, unit, higher in (
            ("hyb_p50", "hybrid_p50_ms", "ms", False),
            ("hyb_p99", "hybrid_p99_ms", "ms", False),
            ("hyb_recall", f"hybrid_recall_at_{cfg.k}", "", True),
        ):
            ctx.metric(
                f"pgvector_hnsw_{name}_max_n",
                round(hybrid[key], 4 if higher else 3),
                unit,
                higher_is_better=higher,
                description=f"N={max_n}, store default (ef_search={cfg.ef_search_raised} + exact re-run when short)",
            )
        ctx.metric(
            "pgvector_hnsw_hybrid_target_met",
            met,
            "",
            higher_is_better=True,
            description=f"N={max_n}: p99 <= {cfg.hybrid_target_p99_ms:g} ms and recall@{cfg.k} >= "
            f"{cfg.hybrid_target_recall:g}, {os.cpu_count()} vCPUs",
        )
    partial = next((r for r in pf_rows if r["N"] == max_n and r["setting"] == PARTIAL_SETTING), None)
    if partial:
        met = partial["hyb_p99"] <= cfg.hybrid_target_p99_ms and partial["hyb_recall"] >= cfg.hybrid_target_recall
        for key, name, unit, higher in (
            ("hyb_p50", "hybrid_p50_ms", "ms", False),
            ("hyb_p99", "hybrid_p99_ms", "ms", False),
            ("hyb_recall", f"hybrid_recall_at_{cfg.k}", "", True),
        ):
            ctx.metric(
                f"pgvector_hnsw_partial_{name}_max_n",
                round(partial[key], 4 if higher else 3),
                unit,
                higher_is_better=higher,
                description=f"N={max_n}, {PARTIAL_SETTING}",
            )
        ctx.metric(
            "pgvector_hnsw_partial_hybrid_target_met",
            met,
            "",
            higher_is_better=True,
            description=f"N={max_n}, {PARTIAL_SETTING}: p99 <= {cfg.hybrid_target_p99_ms:g} ms and recall@{cfg.k} "
            f">= {cfg.hybrid_target_recall:g}",
        )
    labels = ("no fallback", "SET LOCAL", f"{PGVECTOR_DEFAULT_EF_SEARCH} + exact re-run", "(store default)")
    for label, tag in zip(labels, ("default", "raised_ef", "fallback", "store_default")):
        row = next((r for r in pf_rows if r["N"] == max_n and label in r["setting"]), None)
        if row:
            ctx.metric(
                f"pgvector_hnsw_hybrid_rows_per_k_{tag}",
                round(row["fill_mean"], 3),
                "",
                higher_is_better=True,
                description=f"N={max_n}, {row['setting']}",
            )


def plots(cfg, ctx, ingest_rows, q_rows, path_rows) -> None:
    import matplotlib  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy: matplotlib loads on first use)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    series = sorted({(r["backend"], r["index"]) for r in q_rows if "sim_p50" in r})
    for ax, key, title in ((axes[0], "sim_p50", "similarity p50"), (axes[1], "hyb_p50", "hybrid p50")):
        for backend, index in series:
            pts = sorted(
                (r["N"], r[key]) for r in q_rows if r["backend"] == backend and r["index"] == index and key in r
            )
            ax.plot(*zip(*pts), marker="o", label=f"{backend} / {index}")
        ax.set(xscale="log", yscale="log", xlabel="N vectors", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms per query")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Query latency vs N (smallest N = real {EMBEDDED_EMBEDDER.family} chunks, larger = synthetic)")
    fig.tight_layout()
    fig.savefig(ctx.artifact("latency_vs_n.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    done = [r for r in ingest_rows if r["status"] == "ok"]
    for backend, path, index in sorted({(r["backend"], r["path"], r["index"]) for r in done}):
        pts = sorted(
            (r["N"], r["one"]) for r in done if (r["backend"], r["path"], r["index"]) == (backend, path, index)
        )
        axes[0].plot(*zip(*pts), marker="o", label=f"{backend}: {path}, index {index.split()[0]}")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="N vectors",
        ylabel="doc/s (1 writer)",
        title="Ingest by write path and index present during the load",
    )
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if path_rows:
        labels = [f"{r['backend']}\n{r['path']}" for r in path_rows]
        axes[1].bar(labels, [r["docs_s"] for r in path_rows], color="tab:gray")
        axes[1].set(yscale="log", ylabel="doc/s", title=f"Write path, {path_rows[0]['n']} docs, 1 writer")
    fig.tight_layout()
    fig.savefig(ctx.artifact("throughput.png"), dpi=110)
    plt.close(fig)


def ingest_finding(q_rows, rows) -> str:
    """Like for like: every load at one N, with the index build a bulk load still owes added back."""
    parts = []
    for r in rows:
        text = f"{r['backend']} {r['path']} with index {r['index'].split()[0]} during the load: {r['one']:.0f} doc/s"
        if r["timed"] < r["N"]:
            text += f" (its last {r['timed']:,} rows, timed on a table already holding {r['N'] - r['timed']:,} and their index)"
        built = _row(q_rows, N=r["N"], backend=r["backend"], index="hnsw")
        if r["index"].startswith("none") and built and built.get("build_s"):
            total = r["N"] / r["one"] + built["build_s"]
            text += f" ({r['N'] / total:.0f} doc/s once the {built['build_s']:.1f} s HNSW build is counted)"
        parts.append(text)
    return (
        (
            f"Ingest at N={rows[0]['N']}, one writer — " + "; ".join(parts) + ". Only rows with the same index "
            "state compare like with like: Chroma always maintains its HNSW graph on insert."
        )
        if rows
        else "No ingest row completed."
    )


def hybrid_target_finding(cfg, ctx, q_rows, pf_rows, corpus_n) -> None:
    """The target (p99, recall@k) at the largest pgvector N: store default, then with partial indexes."""
    n = max((r["N"] for r in q_rows if r["backend"] == "pgvector" and r["index"] == "hnsw"), default=None)
    if n is None:
        return
    kind = f"real {EMBEDDED_EMBEDDER.family} chunks" if n == corpus_n else "synthetic clustered vectors"
    texts = []
    for prefix, label in (
        ("pgvector_hnsw", f"store default (ef_search={cfg.ef_search_raised} + exact re-run when short)"),
        ("pgvector_hnsw_partial", PARTIAL_SETTING),
    ):
        met = ctx.metrics.get(f"{prefix}_hybrid_target_met")
        if met is None:
            continue
        p50, p99, recall = (
            ctx.metrics[f"{prefix}_{k}_max_n"]["value"]
            for k in ("hybrid_p50_ms", "hybrid_p99_ms", f"hybrid_recall_at_{cfg.k}")
        )
        misses = [
            what
            for what, bad in (
                (f"p99 {p99:.1f} ms > {cfg.hybrid_target_p99_ms:g} ms", p99 > cfg.hybrid_target_p99_ms),
                (f"recall {recall:.3f} < {cfg.hybrid_target_recall:g}", recall < cfg.hybrid_target_recall),
            )
            if bad
        ]
        texts.append(
            f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, recall@{cfg.k} {recall:.3f} — "
            + ("target MET" if met["value"] else "target MISSED (" + "; ".join(misses) + ")")
        )
    build = next((r["build_s"] for r in pf_rows if r["N"] == n and r["setting"] == PARTIAL_SETTING), None)
    ctx.finding(
        f"Target check at N={n:,} ({kind}), pgvector HNSW hybrid query (1/{cfg.buckets} of rows pass the filter), "
        f"{os.cpu_count()} shared vCPUs, target p99 <= {cfg.hybrid_target_p99_ms:g} ms and recall@{cfg.k} >= "
        f"{cfg.hybrid_target_recall:g}. "
        + ". ".join(texts)
        + "."
        + (f" The partial indexes cost {build:.1f} s to build on top of the full HNSW index." if build else "")
    )


def findings(cfg, ctx, ingest_rows, q_rows, pf_rows, path_rows, corpus_n, skipped, loads, pg_version) -> None:
    ctx.finding(
        f"Timings were taken on {os.cpu_count()} vCPUs shared with other jobs: 1-minute load average {loads[0]:.1f} "
        f"at the start and {loads[1]:.1f} at the end ({os.cpu_count()} = saturated). Absolute ms and doc/s are inflated and noisy; "
        "the ratios between backends, paths and index settings measured in the same run are what carry over."
    )
    per_row, fast = (
        _row(path_rows, backend="pgvector", path="per_row"),
        _row(path_rows, backend="pgvector", path="copy"),
    )
    if per_row and fast:
        many = _row(path_rows, backend="pgvector", path="executemany")
        verdict = "meets" if fast["ratio"] >= COPY_TARGET_X else "misses"
        ctx.finding(
            f"pgvector write path ({fast['n']} docs, one writer): per-row autocommit INSERT {per_row['docs_s']:.0f} doc/s, "
            f"executemany in one transaction {many['docs_s']:.0f} doc/s ({many['ratio']:.1f}x), binary COPY "
            f"{fast['docs_s']:.0f} doc/s ({fast['ratio']:.1f}x) — {verdict} the {COPY_TARGET_X}x target. The naive path pays one "
            "commit (WAL flush) and one round trip per document."
        )
    top = max((r["N"] for r in pf_rows), default=None)
    rows = [r for r in pf_rows if r["N"] == top]
    if len(rows) == 5:
        default, raised, fallback, both, _ = rows
        ctx.finding(
            f"pgvector {pg_version} post-filtering at N={top} (HNSW, filter keeps 1/{cfg.buckets}): at the default "
            f"hnsw.ef_search={PGVECTOR_DEFAULT_EF_SEARCH} a hybrid query returned {default['fill_mean']:.0%} of the k rows on average "
            f"(worst query {default['fill_min']:.0%}), recall@{cfg.k} {default['hyb_recall']:.2f}, p50 "
            f"{default['hyb_p50']:.1f} ms. SET LOCAL hnsw.ef_search={cfg.ef_search_raised}: {raised['fill_mean']:.0%} "
            f"(recall {raised['hyb_recall']:.2f}, p50 {raised['hyb_p50']:.1f} ms). Exact re-run when short: "
            f"{fallback['fill_mean']:.0%} (recall {fallback['hyb_recall']:.2f}, p50 {fallback['hyb_p50']:.1f} ms, "
            f"{fallback['fallbacks']} of {cfg.queries} queries re-run). Both (the store default): "
            f"{both['fill_mean']:.0%}, recall {both['hyb_recall']:.2f}, p50 {both['hyb_p50']:.1f} ms, "
            f"{both['fallbacks']} re-runs."
        )
    for backend, index in (
        ("pgvector", "hnsw"),
        ("pgvector", "ivfflat"),
        ("cockroachdb", "vector index"),
        ("chroma", "hnsw"),
    ):
        big = max(
            (r["N"] for r in q_rows if r["backend"] == backend and r["index"] == index and "sim_p50" in r), default=None
        )
        row, exact = (
            _row(q_rows, N=big, backend=backend, index=index),
            _row(q_rows, N=big, backend=backend, index="none"),
        )
        if row:
            versus = f" vs {exact['sim_p50']:.1f} ms for the exact scan without an index" if exact else ""
            ctx.finding(
                f"{backend} {index} at N={big}: recall@{cfg.k} {row['sim_recall']:.3f} against exact search, "
                f"similarity p50 {row['sim_p50']:.1f} ms{versus}"
                + (f"; index build {row['build_s']:.1f} s" if row.get("build_s") else "")
                + "."
            )
    top_ingest = max((x["N"] for x in ingest_rows if x.get("many")), default=None)
    ctx.finding(ingest_finding(q_rows, [r for r in ingest_rows if r["N"] == top_ingest and r["status"] == "ok"]))
    for r in ingest_rows:
        if r["status"] == "ok" and r.get("many") and r["N"] == top_ingest:
            ctx.finding(
                f"{r['backend']} ({r['path']}, index {r['index'].split()[0]}) at N={r['N']}: {cfg.writers} concurrent "
                f"writers reached {r['many'] / r['one']:.2f}x the single writer's doc/s ({r['one']:.0f} -> "
                f"{r['many']:.0f}) on {os.cpu_count()} shared vCPUs (serialization retries: {r['retries']})."
            )
    hybrid_target_finding(cfg, ctx, q_rows, pf_rows, corpus_n)
    chroma = _row(q_rows, N=corpus_n, backend="chroma", index="hnsw")
    pg = _row(q_rows, N=corpus_n, backend="pgvector", index="hnsw")
    if chroma and pg:
        faster = "Chroma" if chroma["sim_p50"] < pg["sim_p50"] else "pgvector"
        ctx.finding(
            f"At the corpus size ({corpus_n} real chunks) similarity p50 was Chroma {chroma['sim_p50']:.2f} ms vs "
            f"pgvector HNSW {pg['sim_p50']:.2f} ms ({faster} faster here; the seed measured Chroma "
            f"{SEED_ROWS['chroma'][2]} ms vs pgvector {SEED_ROWS['pgvector'][2]} ms). Hybrid p50: Chroma {chroma['hyb_p50']:.2f} ms vs pgvector {pg['hyb_p50']:.2f} ms."
        )
    big = max((r["N"] for r in q_rows if r["backend"] == "chroma" and "sim_p50" in r), default=None)
    chroma_big = _row(q_rows, N=big, backend="chroma", index="hnsw")
    if chroma_big:
        ctx.finding(
            f"Chroma's hybrid query at N={big}: p50 {chroma_big['hyb_p50']:.1f} ms vs {chroma_big['sim_p50']:.1f} ms "
            f"unfiltered ({chroma_big['hyb_p50'] / chroma_big['sim_p50']:.1f}x), returning {chroma_big['fill_mean']:.0%} "
            f"of the k rows with recall@{cfg.k} {chroma_big['hyb_recall']:.3f}: the filter costs time here, not rows."
        )
    if "cockroachdb" in skipped:
        ctx.finding(
            f"CockroachDB rows are skipped: {skipped['cockroachdb']}. The CockroachStore code path "
            "(VECTOR(n), CREATE VECTOR INDEX with a prefix column, UPSERT batches, 40001 retries) did not run here."
        )
    ctx.finding(
        f"Seed comparison: the seed ran on an {SEED_SETUP['hardware']} with {SEED_SETUP['chunks']} chunks, all three "
        f"servers local; these rows run {corpus_n} chunks on {os.cpu_count()} shared vCPUs with an embedded "
        f"PostgreSQL + pgvector {pg_version} (the seed: pgvector {SEED_SETUP['pgvector']}, whose iterative index scans "
        "address the post-filter shortfall measured above)."
    )
    ctx.failure_mode(
        "pgvector < 0.8 applies WHERE after the HNSW scan: a selective hybrid query silently returns fewer than k "
        f"rows at the default hnsw.ef_search={PGVECTOR_DEFAULT_EF_SEARCH}. Raise ef_search per query (SET LOCAL) or "
        "re-run exactly when short."
    )
    ctx.failure_mode(
        "COPY cannot upsert: a batch holding an existing id fails with UniqueViolation; "
        "the store re-sends it through a temp staging table + INSERT ... ON CONFLICT."
    )
    ctx.failure_mode(
        "Chroma rejects an empty metadata dict ({}) but accepts None; without embeddings or an "
        "embedding_function it tries to download an ONNX model (offline: fails)."
    )


EXERCISE = Exercise(
    id="phase12.storage_bench",
    title="12.3 Storage benchmark: Chroma vs pgvector/PostgreSQL vs CockroachDB",
    run=run,
    config_cls=Config,
    profiles={
        "cpu": {"sizes": [0, 2000, 20000], "pgvector_only_sizes": [100000], "queries": 100},
        "a100": {"sizes": [0, 2000, 20000, 100000], "pgvector_only_sizes": [], "queries": 500, "ingest_paths_n": 5000},
    },
    tiny={
        "sizes": [0, 300],
        "pgvector_only_sizes": [],
        "queries": 20,
        "batch_size": 100,
        "ingest_paths_n": 100,
        "pg_indexes": ["hnsw", "ivfflat"],
        "include_readmes": False,
        "backends": ["chroma", "pgvector", "cockroachdb"],
        "maintained_sample": 100,
    },
    smoke={
        "sizes": [0, 300],
        "queries": 20,
        "batch_size": 100,
        "ingest_paths_n": 100,
        "include_readmes": False,
        "maintained_sample": 100,
    },
    references=tuple(
        Reference(
            f"{backend}_{metric}",
            value,
            "doc/s" if i < 2 else "ms",
            f"seed: M1 Pro, 106 chunks, index {SEED_INDEX[backend]}",
        )
        for backend, values in SEED_ROWS.items()
        for i, (metric, value) in enumerate(zip(SEED_METRICS, values))
    ),
    summary_metrics=(
        "pgvector_copy_vs_per_row_x",
        "pgvector_ingest_per_row_hnsw_docs_per_s_max_n",
        "pgvector_hnsw_hybrid_p99_ms_max_n",
        "pgvector_hnsw_hybrid_recall_at_10_max_n",
        "pgvector_hnsw_hybrid_target_met",
        "pgvector_hnsw_partial_hybrid_target_met",
    ),
    methods={"cpu": "scaled", "a100": "scaled"},  # 2 vCPUs, pgvector 0.6.2, no CockroachDB
)

if __name__ == "__main__":
    from lab.cli import exercise_main

    exercise_main(EXERCISE)
