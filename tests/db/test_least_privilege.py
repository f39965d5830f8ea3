"""Least privilege in the database (db.roles): what tapline_writer and tapline_reader may do,
and what they may not, on plain PostgreSQL and on TimescaleDB's full edition; login roles;
the check a sink that may not migrate makes at its start; a migrator that is not a superuser.

On PostgreSQL the tests log in as login roles made by `db.create_login`. PGlite (TimescaleDB)
logs every connection in as postgres whatever the user asked, so there the tests act as a
group with SET ROLE, which PostgreSQL checks privileges against the same way.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy.engine import make_url

import db
from db.__main__ import main
from stack import Postgres
from tests.db.conftest import Target
from tests.db.rows import BASE, insert, row, sample
from tests.db.test_timescaledb import refresh

REFUSED_TO_WRITER = [
    "DELETE FROM http_requests",
    "UPDATE http_requests SET app = 'changed'",
    "TRUNCATE http_requests",
    "DROP TABLE http_requests",
    "ALTER TABLE http_requests ADD COLUMN intruder int",
    "CREATE INDEX intruder_idx ON http_requests (app)",
    "CREATE TABLE intruder (x int)",
    "CREATE VIEW intruder AS SELECT 1 AS x",
    "SELECT count(*) FROM http_requests_5m",
    "SELECT count(*) FROM owners_only",
    "DELETE FROM alembic_version",
    "UPDATE alembic_version SET version_num = '0001'",
]
REFUSED_TO_READER = [
    "INSERT INTO http_requests (time, capture_id, app, method, path) "
    "VALUES (now(), gen_random_uuid(), 'reader', 'GET', '/')",
    "DELETE FROM http_requests",
    "UPDATE http_requests SET app = 'changed'",
    "CREATE TABLE intruder (x int)",
    "DROP TABLE http_requests",
    "SELECT count(*) FROM owners_only",
]
# TimescaleDB's own functions check ownership of the hypertable or the continuous aggregate.
REFUSED_ON_TIMESCALEDB = [
    "SELECT drop_chunks('http_requests', older_than => now())",
    "SELECT remove_continuous_aggregate_policy('http_requests_5m')",
    "SELECT add_retention_policy('http_requests', INTERVAL '1 day')",
]


# Older than the rows of every other test on the session's TimescaleDB: a refresh moves the
# continuous aggregate's watermark up to the end of what it refreshed, and rows of other tests
# that fell behind it would no longer show until refreshed themselves.
READER_BASE = datetime(2021, 3, 1, 12, 0, tzinfo=UTC)


def login_url(url: str, name: str, password: str | None = None) -> str:
    return make_url(url).set(username=name, password=password).render_as_string(
        hide_password=False)


@pytest.fixture
def owners_only(target: Target) -> None:
    """A table of the owner's that neither group was given anything on."""
    with target.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS owners_only (secret text)")


@contextlib.contextmanager
def acting_as(target: Target, group: str) -> Iterator[psycopg.Connection]:
    """A connection that acts as a member of `group` (writer or reader)."""
    if target.mode == db.POSTGRESQL:
        name = f"{group}_{uuid.uuid4().hex[:8]}"
        db.create_login(name, group, None, target.url)
        with psycopg.connect(login_url(target.url, name)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (name,)
            yield conn
    else:
        with target.connect() as conn:
            conn.execute(f"SET ROLE {db.GROUPS[group]}")
            conn.commit()
            yield conn


def refused(conn: psycopg.Connection, sql: str) -> bool:
    """Whether the server refuses `sql` for want of privilege (other errors fail the test)."""
    try:
        with conn.transaction():
            conn.execute(sql)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_the_writer_inserts_idempotently_and_reads_its_table(target):
    rows = sample(target.app)
    # A row a day older than the others: a new chunk of the hypertable, made for the writer.
    rows.append(row(target.app, BASE - timedelta(days=1), 200))
    with acting_as(target, "writer") as conn:
        assert insert(conn, rows) == len(rows)
        assert insert(conn, rows) == 0  # re-delivered: ON CONFLICT DO NOTHING, no UPDATE needed
        # The sink's staging table: a temporary table made LIKE http_requests.
        with conn.transaction():
            conn.execute("CREATE TEMPORARY TABLE stage (LIKE http_requests INCLUDING DEFAULTS) "
                         "ON COMMIT DELETE ROWS")
        assert conn.execute("SELECT count(*) FROM http_requests WHERE app = %s",
                            (target.app,)).fetchone() == (len(rows),)
        # What the sink's check at start reads: the revision, and the mode from the catalogue.
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            db.head_revision(),)
        assert db.schema_mode(conn) == target.mode


@pytest.mark.usefixtures("owners_only")
def test_what_the_writer_may_not_do(target):
    rows = sample(target.app)
    with acting_as(target, "writer") as conn:
        insert(conn, rows)
        allowed = [sql for sql in REFUSED_TO_WRITER if not refused(conn, sql)]
        if target.mode == db.TIMESCALEDB:
            allowed += [sql for sql in REFUSED_ON_TIMESCALEDB if not refused(conn, sql)]
        # Nothing it tried took anything away.
        assert conn.execute("SELECT count(*) FROM http_requests WHERE app = %s",
                            (target.app,)).fetchone() == (len(rows),)
        # Nor can it hand its rights on: PostgreSQL only warns, and grants nothing.
        conn.execute("GRANT SELECT ON http_requests TO PUBLIC")
        assert conn.execute("SELECT has_table_privilege('public', 'http_requests', 'SELECT')"
                            ).fetchone() == (False,)
        conn.rollback()
    assert allowed == []


@pytest.mark.usefixtures("owners_only")
def test_the_reader_reads_the_table_and_the_summary_and_nothing_else(target):
    rows = sample(target.app, READER_BASE)
    with target.connect() as conn:
        insert(conn, rows)
    if target.mode == db.TIMESCALEDB:
        # Part of the summary materialized, the rest computed at query time: both are read.
        refresh(target.url, READER_BASE, READER_BASE + timedelta(minutes=5))
    with acting_as(target, "reader") as conn:
        assert conn.execute("SELECT count(*) FROM http_requests WHERE app = %s",
                            (target.app,)).fetchone() == (len(rows),)
        assert conn.execute("SELECT sum(requests) FROM http_requests_5m WHERE app = %s",
                            (target.app,)).fetchone() == (len(rows),)
        allowed = [sql for sql in REFUSED_TO_READER if not refused(conn, sql)]
        if target.mode == db.TIMESCALEDB:
            allowed += [sql for sql in REFUSED_ON_TIMESCALEDB if not refused(conn, sql)]
    assert allowed == []


def test_a_login_gets_a_password_hashed_before_it_is_sent(pg_url):
    db.migrate(pg_url)
    name = f"sink_{uuid.uuid4().hex[:8]}"
    assert db.create_login(name, "writer", "first-secret", pg_url) == db.WRITER
    assert db.create_login(name, "writer", None, pg_url) == db.WRITER  # keeps its password
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT rolpassword, rolcanlogin FROM pg_authid WHERE rolname = %s",
                              (name,)).fetchone()
        member = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')",
                              (name, db.WRITER)).fetchone()[0]
    assert stored[0].startswith("SCRAM-SHA-256$") and "first-secret" not in stored[0]
    assert stored[1] and member


@pytest.mark.parametrize(("name", "group", "message"), [
    ("Robert'); DROP TABLE http_requests; --", "writer", "lower-case letters"),
    ("sink", "admin", "group must be one of writer, reader"),
    (db.WRITER, "writer", "is a group role"),
])
def test_a_bad_login_is_refused_before_anything_is_sent(name, group, message):
    with pytest.raises(ValueError, match=message):
        db.create_login(name, group, None, "postgresql://nobody@127.0.0.1:1/none")


def test_cli_login_takes_the_password_from_the_environment_only(pg_url, monkeypatch, capsys):
    db.migrate(pg_url)
    name = f"grafana_{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("READER_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="2"):
        main(["login", name, "--group", "reader", "--password-env", "READER_PASSWORD",
              "--url", pg_url])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "db: error: --password-env READER_PASSWORD: $READER_PASSWORD is not set or empty")
    monkeypatch.setenv("READER_PASSWORD", "r3ader")
    assert main(["login", name, "--group", "reader", "--password-env", "READER_PASSWORD",
                 "--url", pg_url]) == 0
    assert capsys.readouterr().out == f"{db.READER}\n"
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')",
                            (name, db.READER)).fetchone() == (True,)


# --- a sink that may not migrate ---------------------------------------------------------------


def plain_login(url: str) -> str:
    """A login role in no group at all, and its URL: what a writer's login is before the
    schema (and with it the groups' grants) exists."""
    name = f"nobody_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    return login_url(url, name)


def test_a_sink_that_may_not_migrate_says_what_to_run(pg_url, capsys):
    writer = plain_login(pg_url)
    message = (f"database {login_url(pg_url, make_url(writer).username)} is not migrated to "
               f"revision {db.head_revision()} (it is at none): run `python -m db upgrade` as "
               "the schema's owner (`make migrate`, or docker compose's migrate service)")
    with pytest.raises(db.NotMigrated) as raised:
        db.ensure_schema(writer, may_migrate=False)
    assert str(raised.value) == message
    assert main(["check", "--url", writer]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"db: error: {message}"
    with psycopg.connect(pg_url) as conn:  # it tried nothing
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)


def test_a_sink_allowed_to_migrate_without_the_rights_says_so(pg_url):
    writer = plain_login(pg_url)
    with pytest.raises(db.NotMigrated, match=r"this role may not migrate it \(permission "
                                             r"denied for schema public\): run `python -m db "
                                             r"upgrade` as the schema's owner"):
        db.ensure_schema(writer, may_migrate=True)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('http_requests')").fetchone() == (None,)


def test_a_writer_finds_a_migrated_schema_and_changes_nothing(pg_url):
    db.migrate(pg_url)
    name = f"sink_{uuid.uuid4().hex[:8]}"
    db.create_login(name, "writer", None, pg_url)
    writer = login_url(pg_url, name)
    assert db.ensure_schema(writer, may_migrate=False) == db.POSTGRESQL
    # Allowed to migrate, with nothing to do, a writer needs no more than its rights either.
    assert db.ensure_schema(writer, may_migrate=True) == db.POSTGRESQL
    assert main(["check", "--url", writer]) == 0


def test_a_schema_behind_head_is_not_at_head(pg_url):
    db.migrate(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
    with pytest.raises(db.NotMigrated, match=r"is not migrated to revision \d+ \(it is at 0002\)"):
        db.check_migrated(pg_url)


# --- a migrator that is not a superuser --------------------------------------------------------


def test_an_owner_that_may_not_create_roles_is_told_what_an_administrator_must_do(tmp_path):
    # A cluster of its own, with passwords: the groups do not exist there yet, and the logins'
    # passwords are really checked.
    with Postgres(tmp_path / "pg", password="sup3r-secret") as cluster:
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute("CREATE ROLE schema_owner LOGIN PASSWORD 'owner-secret'")
            admin.execute("CREATE DATABASE owned OWNER schema_owner")
        owner = login_url(make_url(cluster.dsn).set(database="owned").render_as_string(
            hide_password=False), "schema_owner", "owner-secret")

        assert main(["upgrade", "--url", owner]) == 1
        with psycopg.connect(cluster.dsn) as admin:
            assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE "
                                 "'tapline_%'").fetchone() == (0,)

        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {db.WRITER} NOLOGIN")
            admin.execute(f"CREATE ROLE {db.READER} NOLOGIN")
            admin.execute("CREATE ROLE sink LOGIN PASSWORD 'writer-secret'")
            admin.execute(f"GRANT {db.WRITER} TO sink")
        assert db.migrate(owner) == db.POSTGRESQL

        sink = login_url(owner, "sink", "writer-secret")
        with psycopg.connect(sink) as conn:
            insert(conn, [row("owned", datetime.now(UTC))])
            assert refused(conn, "DROP TABLE http_requests")
            assert refused(conn, "DELETE FROM http_requests")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(login_url(owner, "sink", "wrong"))
