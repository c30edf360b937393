"""Versioned schema migrations (``lab.migrations``) and every owner that uses them.

Each test gets a database of its own, created in the embedded PostgreSQL (``lab.db``) and dropped
afterwards, so the fixed-name tables of Phases 13-16 (``p13_agent_runs``, ``p16_corpora`` ...) start
from nothing without touching the shared database's. With ``LAB_CRDB_URL`` set the same tests run on
CockroachDB too.
"""

import hashlib
import re
import threading
import time
import uuid

import pytest

from lab import db
from lab.db import connect
from lab.migrations import Migration, MigrationError, Schema, migrate, recorded, version_table
from lab.paths import REPO_ROOT
from phase13_react.state_store import AgentStateStore
from phase13_react.state_store import schema as agent_schema
from phase14_frameworks import langgraph_research as lr
from phase14_frameworks.langgraph_research import schema as node_log_schema
from phase15_production.resilient_calls import IdempotentEffects, effects_schema
from phase16_capstone.job_store import JobStore, schema
from phase16_capstone.job_store import schema as engine_schema
from phase16_capstone.researcher import registry_schema

pytestmark = pytest.mark.db


@pytest.fixture(params=["postgresql", "cockroachdb"])
def url(request):
    """The URL of a new, empty database (dropped at the end)."""
    import psycopg  # noqa: PLC0415 (psycopg loads only on the path that uses it)
    from psycopg.conninfo import make_conninfo  # noqa: PLC0415 (psycopg loads only on the path that uses it)

    if request.param == "cockroachdb":
        base = db.crdb_url()
        if not base:
            pytest.skip("LAB_CRDB_URL is not set")
    else:
        base = db.database_url()
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with db.connect(base, autocommit=True) as admin:
        try:
            admin.execute(f"CREATE DATABASE {name}")
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("this database user cannot create a database")
    yield make_conninfo(base, dbname=name)
    with db.connect(base, autocommit=True) as admin:
        force = "WITH (FORCE)" if request.param == "postgresql" else "CASCADE"
        admin.execute(f"DROP DATABASE IF EXISTS {name} {force}")


def owners(ns="p16m"):
    """Every owner of tables, by name: (schema, how the owner's own code starts on a URL)."""

    def engine(url):
        store = JobStore(url, namespace=ns)
        store.close()
        return store.migrated

    return {
        "engine": (engine_schema(ns), engine),
        "corpora": (registry_schema(), lambda url: migrate(url, registry_schema())),
        "agent_state": (agent_schema(), lambda url: AgentStateStore(url) and None),
        "node_log": (node_log_schema(), lambda url: migrate(url, node_log_schema())),
        "effects": (effects_schema("p15m_effects"), lambda url: IdempotentEffects(url, table="p15m_effects") and None),
    }


def rows(url, schema):

    with connect(url, autocommit=True) as conn:
        return recorded(conn, schema.namespace, schema.owner)


def tables(url):

    with connect(url, autocommit=True) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchall()
        }


def oids(url, names):

    with connect(url, autocommit=True) as conn:
        return {n: conn.execute(f"SELECT '{n}'::regclass::oid").fetchone()[0] for n in names}


# --- version 1 is the schema the code made before migrations ---------------------------------------

V1_SHA256 = {  # of each owner's version-1 statements: databases in use were made by exactly these
    "engine": "0b5c38b2c6a46e04",
    "corpora": "9e92e73ed6cbefde",
    "agent_state": "4a06d5b3a82f2248",
    "node_log": "c112cee0a931e885",
    "effects": "64c13720137eed0f",
}


def test_version_1_of_every_owner_is_the_schema_the_old_code_created_and_never_changes():

    schemas = {name: owner for name, (owner, _) in owners("p16").items()}
    schemas["effects"] = effects_schema("idempotent_effects")  # IdempotentEffects' default table
    for name, owner in schemas.items():
        text = "\n;\n".join(owner.migrations[0].statements)
        assert hashlib.sha256(text.encode()).hexdigest()[:16] == V1_SHA256[name], (
            f"{name}: version 1 was edited; databases already at version 1 will not see the change: "
            f"append a version instead"
        )
        assert owner.tables and all(t.startswith(owner.namespace) or name == "effects" for t in owner.tables)


def test_nothing_else_creates_engine_or_agent_tables():
    """Every CREATE/ALTER of the engine's and agents' tables lives in a migration list."""

    allowed = {
        "phase16_capstone/job_store.py",
        "phase16_capstone/researcher.py",
        "phase13_react/state_store.py",
        "phase14_frameworks/langgraph_research.py",
    }  # each inside its schema(): the migration list
    for folder in ("phase13_react", "phase14_frameworks", "phase16_capstone"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            rel = path.relative_to(REPO_ROOT).as_posix()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#")[0]
                if re.search(r"\b(CREATE (TABLE|INDEX)|ALTER TABLE)\b", code) and "``" not in code:
                    assert rel in allowed, f"{rel}:{n} creates a table outside the migrations: {line.strip()}"


# --- the runner on every owner ---------------------------------------------------------------------


def test_fresh_database_gets_every_version_once_and_a_rerun_is_a_no_op(url):
    for name, (owner, start) in owners().items():
        first = start(url)
        recorded = rows(url, owner)
        assert [r[0] for r in recorded] == list(range(1, owner.latest + 1)), name
        assert set(owner.tables) <= tables(url), name
        if first is not None:
            assert first.applied == list(range(1, owner.latest + 1)) and not first.adopted, name
        again = start(url)
        if again is not None:
            assert again.applied == [] and again.version == owner.latest, name
        assert rows(url, owner) == recorded, name  # same rows, same applied_at: nothing ran again
    assert "p16m_schema_migrations" in tables(url) and "p16_schema_migrations" in tables(url)


def test_a_database_made_by_the_old_code_is_adopted_not_recreated(url):
    """The old code ran each owner's CREATE ... IF NOT EXISTS statements on every start: a database it
    made (and filled) is recognized, recorded at version 1 and keeps its tables and rows. The oldest
    engine tables, made before the reply-claim and review columns, get those columns."""

    everyone = owners()
    with connect(url, autocommit=True) as conn:  # the old code: statements, no version table
        for schema, _ in everyone.values():
            for statement in schema.migrations[0].statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO p16m_jobs (id, topic, source, trace_id) VALUES (%s, 'old topic', 'cli', 't')", ("a" * 32,)
        )
        conn.execute("INSERT INTO p13_agent_runs (run_id, task) VALUES ('old-run', 'old task')")
        conn.execute("INSERT INTO p15m_effects (key, status) VALUES ('old-key', 'done')")
        for column in ("reply_token", "reply_expires", "reply_attempts", "reply_message_id"):
            conn.execute(f"ALTER TABLE p16m_jobs DROP COLUMN {column}")  # as the first engine made it
        conn.execute("ALTER TABLE p16m_reviews DROP COLUMN reviewed")
    before = oids(url, [t for schema, _ in everyone.values() for t in schema.tables])

    for name, (schema, start) in everyone.items():
        outcome = start(url)
        if outcome is not None:
            assert outcome.adopted and outcome.applied == [1] and outcome.version == 1, name
        assert [r[0] for r in rows(url, schema)] == [1], name
    assert oids(url, before) == before  # the same tables, not dropped and made again

    store = JobStore(url, namespace="p16m")
    try:
        assert store.get("a" * 32).topic == "old topic"
        assert store.reply("a" * 32) == {"state": None, "attempts": 0, "message_id": None}  # the column came back
        job, _ = store.create_job("a new topic", "cli")
        assert store.get(job.id).state == "queued"
    finally:
        store.close()
    with connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT task FROM p13_agent_runs WHERE run_id = 'old-run'").fetchone()[0] == "old task"
        assert conn.execute("SELECT count(*) FROM p15m_effects").fetchone()[0] == 1
        assert (
            conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'p16m_reviews' "
                "AND column_name = 'reviewed'"
            ).fetchone()[0]
            == 1
        )


# --- a later version -------------------------------------------------------------------------------


def planted(ns, statements=None, apply=None):
    """The engine's schema with a version 2 appended, as a later change of the code would."""

    base = schema(ns)
    v2 = Migration(
        2,
        "a note on every job, and a log of who applied it",
        tuple(
            statements
            or (
                f"ALTER TABLE {ns}_jobs ADD COLUMN note TEXT",  # not IF NOT EXISTS: a second run would fail
                f"CREATE TABLE {ns}_planted_log (n INT NOT NULL)",
                f"INSERT INTO {ns}_planted_log (n) VALUES (1)",
            )
        ),
        apply=apply,
    )
    return Schema(base.namespace, base.owner, (*base.migrations, v2), base.tables + (f"{ns}_planted_log",))


def test_a_new_version_applies_once_and_only_once_with_starters_racing(url):
    """Four starters (threads, each on its own connections as separate processes would be) bring an
    engine at version 1 to a version 2 at once, twice over: exactly one applies it, the others find it
    applied and go on."""

    for round_ in range(2):
        ns = f"p16race{round_}"
        JobStore(url, namespace=ns).close()  # version 1, as deployed
        executions: list[int] = []

        def slow(conn, ran=executions):
            ran.append(1)
            time.sleep(0.3)  # the migration is still running when the other starters arrive

        schema = planted(ns, apply=slow)
        outcomes, errors = race(4, lambda schema=schema: migrate(url, schema))
        assert not errors, errors
        assert sorted(o.applied for o in outcomes) == [[], [], [], [2]]
        assert all(o.version == 2 for o in outcomes)
        assert [r[0] for r in rows(url, schema)] == [1, 2]
        with connect(url, autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {ns}_planted_log").fetchone()[0] == 1
        assert len(executions) >= 1  # a loser may have run it and rolled back; only one committed
        assert migrate(url, schema).applied == []  # and once more, later: nothing


def race(n, start):
    """``start()`` in ``n`` threads released at once (each opens its own connections): (results, errors)."""
    barrier, results, errors = threading.Barrier(n), [], []

    def run():
        try:
            barrier.wait()
            results.append(start())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def test_engines_starting_at_once_on_a_fresh_database_all_come_up_at_version_1(url):
    """PostgreSQL lets the slower of two concurrent CREATE TABLE IF NOT EXISTS fail on its catalog;
    the runner's loser rolls back, finds version 1 recorded and starts."""

    stores, errors = race(4, lambda: JobStore(url, namespace="p16fresh"))
    assert not errors, errors
    assert sum(s.migrated.applied == [1] for s in stores) == 1
    assert [r[0] for r in rows(url, schema("p16fresh"))] == [1]
    for s in stores:
        s.close()


@pytest.mark.parametrize("failure", ["sql", "python"])
def test_a_failing_migration_is_rolled_back_whole_and_the_version_is_unchanged(url, failure):

    ns = "p16fail"
    JobStore(url, namespace=ns).close()

    def boom(conn):
        raise RuntimeError("the data rewrite found a row it cannot convert")

    broken = planted(
        ns,
        statements=(
            f"CREATE TABLE {ns}_half (n INT)",
            f"ALTER TABLE {ns}_jobs ADD COLUMN half INT",
            *(["SELECT 1 / 0"] if failure == "sql" else []),
        ),
        apply=boom if failure == "python" else None,
    )
    with pytest.raises(MigrationError, match="migration 2 .* rolled back; the recorded version is unchanged"):
        migrate(url, broken)
    assert [r[0] for r in rows(url, broken)] == [1]
    assert f"{ns}_half" not in tables(url)  # its DDL went with it
    with connect(url, autocommit=True) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = 'half'",
                (f"{ns}_jobs",),
            ).fetchone()[0]
            == 0
        )
    fixed = migrate(url, planted(ns))  # the fixed version 2 of the next release applies
    assert fixed.applied == [2] and [r[0] for r in rows(url, broken)] == [1, 2]


# --- dropped tables, bad lists ---------------------------------------------------------------------


def test_tables_dropped_outside_the_runner_are_made_again_and_a_partial_drop_is_an_error(url):
    """A throwaway run drops its effects table and leaves the version row; the same name later (a
    recycled pid) must get a working table, not a version that says it exists."""

    IdempotentEffects(url, table="p15m_throwaway")
    with connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE p15m_throwaway")
    again = IdempotentEffects(url, table="p15m_throwaway")
    assert again.run_once("k", lambda: 7) == 7
    assert [r[0] for r in rows(url, effects_schema("p15m_throwaway"))] == [1]

    JobStore(url, namespace="p16part").close()
    with connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE p16part_sites")
    with pytest.raises(MigrationError, match="p16part_sites are missing"):
        migrate(url, schema("p16part"))


def test_drop_forgets_the_versions_so_the_namespace_can_start_again(url):

    store = JobStore(url, namespace="p16again")
    store.drop()
    store.close()
    assert rows(url, schema("p16again")) == [] and "p16again_schema_migrations" not in tables(url)
    store = JobStore(url, namespace="p16again")
    assert store.migrated.applied == [1]
    store.close()


def test_a_bad_migration_list_or_a_gap_in_the_versions_is_refused(url):

    with pytest.raises(ValueError, match="1, 2, 3"):
        Schema("p16bad", "o", (Migration(1, "a"), Migration(3, "c")))
    with pytest.raises(ValueError, match="identifier"):
        Schema("p16-bad", "o", (Migration(1, "a"),))
    ok = Schema(
        "p16gap",
        "o",
        (Migration(1, "a", ("CREATE TABLE IF NOT EXISTS p16gap_t (n INT)",)), Migration(2, "b")),
        tables=("p16gap_t",),
    )
    migrate(url, ok)
    with connect(url, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {version_table('p16gap')} WHERE version = 1")
    with pytest.raises(MigrationError, match="gap"):
        migrate(url, ok)


def test_the_langgraph_saver_opens_with_the_node_log_migrated(url):
    pytest.importorskip("langgraph.checkpoint.postgres")

    saver = lr.open_saver(url)
    saver.conn.close()
    assert {"checkpoints", "checkpoint_migrations", "p14_node_executions", "p14_published"} <= tables(url)
    assert [r[0] for r in rows(url, lr.schema())] == [1]
