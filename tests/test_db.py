"""The database locator: the embedded PostgreSQL starts with pgvector, and a bad URL fails clearly."""

import socket

import pytest

from lab import db
from lab.errors import MissingResource


@pytest.mark.db
def test_embedded_postgres_has_pgvector_and_answers_a_nearest_neighbour_query(monkeypatch):
    monkeypatch.delenv("LAB_DATABASE_URL", raising=False)
    url = db.database_url()
    assert url.startswith("postgresql://")
    with db.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TEMP TABLE docs (id int PRIMARY KEY, embedding vector(3))")
        conn.execute("INSERT INTO docs VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]'), (4, '[0.7,0.7,0]')")
        nearest = conn.execute("SELECT id FROM docs ORDER BY embedding <-> '[0.1,0.95,0]' LIMIT 2").fetchall()
        cosine = conn.execute("SELECT round((embedding <=> '[1,1,0]')::numeric, 4) FROM docs WHERE id = 4").fetchone()[
            0
        ]
    assert [row[0] for row in nearest] == [2, 4]
    assert float(cosine) == pytest.approx(0.0, abs=1e-3)  # same direction: cosine distance 0
    info = db.server_version(url)
    assert info["server"].startswith("PostgreSQL 16") and info["pgvector"] == "0.6.2"


def test_unreachable_database_url_is_a_missing_resource_with_the_password_redacted(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("LAB_DATABASE_URL", f"postgresql://bob:hunter2secret@127.0.0.1:{port}/lab")
    with pytest.raises(
        MissingResource, match=rf"cannot connect to postgresql://bob:\*\*\*@127.0.0.1:{port}/lab"
    ) as err:
        db.database_url()
    assert "hunter2secret" not in str(err.value)


def test_crdb_url_is_optional(monkeypatch):
    monkeypatch.delenv("LAB_CRDB_URL", raising=False)
    assert db.crdb_url() is None
    monkeypatch.setenv("LAB_CRDB_URL", "postgresql://root@localhost:26257/defaultdb")
    assert db.crdb_url() == "postgresql://root@localhost:26257/defaultdb"
