"""Database locator: LAB_DATABASE_URL when set, else an embedded PostgreSQL 16 + pgvector.

The embedded server comes from the `pgserver` wheel (PostgreSQL 16.2 + pgvector 0.6.2), lives
under the lab cache dir and is stopped when the process exits. CockroachDB is reached through
LAB_CRDB_URL (it speaks the PostgreSQL wire protocol; Phase 12 handles its vector syntax).
"""

from __future__ import annotations

import os
from functools import lru_cache

from lab.errors import MissingResource
from lab.paths import cache_dir
from lab.results import redact


@lru_cache(maxsize=1)
def _embedded_server():
    if "XDG_RUNTIME_DIR" not in os.environ:  # set before import: pgserver reads it, wants mode 0700
        runtime = cache_dir() / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pgserver  # noqa: PLC0415 (heavy: pgserver loads on first use)
    except ImportError as exc:
        raise MissingResource(
            "no LAB_DATABASE_URL set and the embedded PostgreSQL (`pgserver`) is not installed; "
            "run `make setup` or set LAB_DATABASE_URL=postgresql://user:pass@host/db"
        ) from exc
    return pgserver.get_server(str(cache_dir() / "pgdata"), cleanup_mode="stop")


def database_url() -> str:
    """A PostgreSQL URL with pgvector available (the extension is created if missing)."""
    url = os.environ.get("LAB_DATABASE_URL")
    if not url:
        url = _embedded_server().get_uri()
    ensure_pgvector(url)
    return url


def crdb_url() -> str | None:
    return os.environ.get("LAB_CRDB_URL") or None


def connect(url: str | None = None, **kwargs):
    """psycopg connection with a clear error naming the (redacted) URL when it is unreachable."""
    import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    url = url or database_url()
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise MissingResource(f"cannot connect to {redact(url)}: {str(exc).strip().splitlines()[0]}") from None


def ensure_pgvector(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def server_version(url: str | None = None) -> dict:
    with connect(url) as conn:
        pg = conn.execute("SELECT version()").fetchone()[0]
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return {"server": pg.split(",")[0], "pgvector": row[0] if row else None}
