"""The schema on TimescaleDB (WASM, stack.TimescaleLite): hypertable, continuous aggregate with
real-time aggregation, its refresh policy, compression and retention; and the Apache mode."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

import db
from stack import TimescaleLite
from tests.db.conftest import with_connect_timeout
from tests.db.rows import BASE, expected_summary, insert, row, sample, summary
from tests.db.test_migrate import HEAD, upgrade_processes
from tests.db.test_schema import VIEW_COLUMNS, columns


def new_app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def refresh(url: str, start: datetime, end: datetime) -> None:
    # A procedure that refuses to run inside a transaction block.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CALL refresh_continuous_aggregate('http_requests_5m', %s, %s)",
                     (start, end))


def test_migrate_again_changes_nothing(timescale_url):
    assert db.migrate(timescale_url) == db.TIMESCALEDB
    with psycopg.connect(timescale_url) as conn:
        assert db.schema_mode(conn) == db.TIMESCALEDB
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_http_requests_is_a_hypertable_of_one_day_chunks(timescale_url):
    with psycopg.connect(timescale_url) as conn:
        found = conn.execute("""
            SELECT d.column_name, d.time_interval
            FROM timescaledb_information.hypertables h
            JOIN timescaledb_information.dimensions d USING (hypertable_schema, hypertable_name)
            WHERE h.hypertable_name = 'http_requests'
        """).fetchall()
    assert found == [("time", timedelta(days=1))]


def test_summary_is_a_real_time_continuous_aggregate_with_a_refresh_policy(timescale_url):
    with psycopg.connect(timescale_url) as conn:
        materialized_only = conn.execute("""
            SELECT materialized_only FROM timescaledb_information.continuous_aggregates
            WHERE view_name = 'http_requests_5m'
        """).fetchall()
        policy = conn.execute("""
            SELECT j.schedule_interval,
                   (j.config ->> 'start_offset')::interval,
                   (j.config ->> 'end_offset')::interval
            FROM timescaledb_information.jobs j
            WHERE j.hypertable_name = 'http_requests_5m'
              AND j.proc_name = 'policy_refresh_continuous_aggregate'
        """).fetchall()
    assert materialized_only == [(False,)]
    assert policy == [(timedelta(minutes=1), timedelta(days=3), timedelta(minutes=5))]


def materialized(conn, app: str) -> int:
    """How many of the summary's rows for `app` are stored, rather than computed at query time."""
    schema, table = conn.execute("""
        SELECT materialization_hypertable_schema, materialization_hypertable_name
        FROM timescaledb_information.continuous_aggregates WHERE view_name = 'http_requests_5m'
    """).fetchone()
    query = sql.SQL("SELECT count(*) FROM {} WHERE app = %s").format(sql.Identifier(schema, table))
    return conn.execute(query, (app,)).fetchone()[0]


def test_rows_show_at_once_and_the_same_after_a_refresh(timescale_url):
    app = new_app()
    rows = sample(app)
    with psycopg.connect(timescale_url) as conn:
        insert(conn, rows)
        before = summary(conn, app)
        assert materialized(conn, app) == 0
    refresh(timescale_url, BASE - timedelta(hours=1), BASE + timedelta(hours=1))
    with psycopg.connect(timescale_url) as conn:
        after = summary(conn, app)
        assert materialized(conn, app) == len(after)
    assert before == expected_summary(rows)
    assert after == before


def test_the_newest_minutes_show_without_a_refresh(timescale_url):
    app = new_app()
    now = datetime.now(UTC)
    rows = [row(app, now - timedelta(seconds=5), 200), row(app, now, 502)]
    with psycopg.connect(timescale_url) as conn:
        insert(conn, rows)
        found = summary(conn, app)
    assert found == expected_summary(rows)


def test_a_late_row_in_a_materialized_bucket_shows_after_the_next_refresh(timescale_url):
    # Real-time aggregation only covers what lies after the materialized buckets; a row that
    # arrives for an older bucket waits for the refresh policy (every minute, 3 days back).
    app = new_app()
    at = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    window = (at - timedelta(hours=1), at + timedelta(hours=1))
    with psycopg.connect(timescale_url) as conn:
        insert(conn, [row(app, at, 200)])
    refresh(timescale_url, *window)
    with psycopg.connect(timescale_url) as conn:
        insert(conn, [row(app, at + timedelta(seconds=1), 200)])
        assert [line[5] for line in summary(conn, app)] == [1]
    refresh(timescale_url, *window)
    with psycopg.connect(timescale_url) as conn:
        assert [line[5] for line in summary(conn, app)] == [2]


def test_the_same_rows_give_the_same_summary_as_on_postgresql(timescale_url, pg_url):
    app = new_app()
    rows = sample(app, BASE + timedelta(days=1))
    results = []
    for url in (with_connect_timeout(pg_url), timescale_url):
        db.migrate(url)
        with psycopg.connect(url) as conn:
            insert(conn, rows)
            results.append((summary(conn, app), columns(conn, "http_requests_5m")))
    assert results[0] == results[1]
    assert results[0][0] == expected_summary(rows)


def test_compression_and_retention_policies(timescale_url):
    jobs_sql = """
        SELECT proc_name, job_id, coalesce(config ->> 'compress_after', config ->> 'drop_after')
        FROM timescaledb_information.jobs
        WHERE hypertable_name = 'http_requests' ORDER BY proc_name"""
    assert db.apply_policies(timescale_url, "7 days", "30 days") == db.TIMESCALEDB
    with psycopg.connect(timescale_url) as conn:
        first = conn.execute(jobs_sql).fetchall()
        enabled = conn.execute("""
            SELECT compression_enabled FROM timescaledb_information.hypertables
            WHERE hypertable_name = 'http_requests'""").fetchone()[0]
    assert [(name, after) for name, _, after in first] == [
        ("policy_compression", "7 days"), ("policy_retention", "30 days")]
    assert enabled

    db.apply_policies(timescale_url, "7 days", "30 days")  # the same again: nothing changes
    with psycopg.connect(timescale_url) as conn:
        assert conn.execute(jobs_sql).fetchall() == first

    db.apply_policies(timescale_url, "14 days", None)  # a new interval replaces the policy
    with psycopg.connect(timescale_url) as conn:
        changed = conn.execute(jobs_sql).fetchall()
    assert [(name, after) for name, _, after in changed] == [
        ("policy_compression", "14 days"), ("policy_retention", "30 days")]

    with pytest.raises(ValueError, match="refresh still covers"):
        db.apply_policies(timescale_url, None, "2 days")
    with pytest.raises(ValueError, match="not an interval"):
        db.apply_policies(timescale_url, "a week or so", None)


def test_a_compressed_chunk_still_answers_and_ignores_redelivered_rows(timescale_url):
    db.apply_policies(timescale_url, "7 days", None)  # sets the compression settings
    app = new_app()
    day = datetime(2023, 6, 1, tzinfo=UTC)
    rows = sample(app, day + timedelta(hours=3))
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        insert(conn, rows)
        compressed = conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) "
            "FROM show_chunks('http_requests', newer_than => %s, older_than => %s) c",
            (day, day + timedelta(days=1))).fetchall()
        assert len(compressed) == 1
        assert conn.execute(
            "SELECT is_compressed FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'http_requests' AND range_start = %s", (day,)
        ).fetchone() == (True,)
        assert insert(conn, rows[:2]) == 0  # a redelivery after compression
        assert insert(conn, [row(app, day + timedelta(hours=3, minutes=1), 200)]) == 1
        stored = conn.execute(
            "SELECT count(*) FROM http_requests WHERE app = %s", (app,)).fetchone()[0]
    assert stored == len(rows) + 1
    # Rows this old lie before the summary's materialized buckets (and beyond the policy's
    # 3 days): they show once a refresh covers them.
    refresh(timescale_url, day, day + timedelta(days=1))
    with psycopg.connect(timescale_url) as conn:
        assert sum(line[5] for line in summary(conn, app)) == len(rows) + 1


def test_apache_mode_has_a_hypertable_and_a_plain_view(tmp_path):
    # PGlite runs TimescaleDB's full edition only (its license cannot be changed here), so the
    # Apache edition's schema is asked for: what it builds is what an Apache server gets.
    with TimescaleLite(tmp_path / "apache") as server:
        url = with_connect_timeout(server.dsn)
        finished = upgrade_processes(url, 2, "--mode", db.TIMESCALEDB_APACHE)
        for done in finished:
            assert done.returncode == 0, done.stderr
            assert done.stdout == "timescaledb-apache\n"
        assert sum("Running upgrade" in done.stderr for done in finished) == 1

        app = new_app()
        rows = sample(app)
        with psycopg.connect(url) as conn:
            assert db.schema_mode(conn) == db.TIMESCALEDB_APACHE
            kinds = conn.execute("""
                SELECT (SELECT count(*) FROM timescaledb_information.hypertables
                        WHERE hypertable_name = 'http_requests'),
                       (SELECT count(*) FROM timescaledb_information.continuous_aggregates),
                       (SELECT count(*) FROM pg_views WHERE viewname = 'http_requests_5m')
            """).fetchone()
            insert(conn, rows)
            found = summary(conn, app)
            view_columns = [line[:2] for line in columns(conn, "http_requests_5m")]
        assert kinds == (1, 0, 1)
        assert found == expected_summary(rows)
        assert view_columns == VIEW_COLUMNS
        # The groups' rights hold on this schema too: the writer fills a new chunk, the reader
        # reads the plain view over the hypertable.
        with psycopg.connect(url) as conn:
            conn.execute(f"SET ROLE {db.WRITER}")
            assert insert(conn, [row(app, BASE + timedelta(days=2), 200)]) == 1
            conn.execute(f"SET ROLE {db.READER}")
            assert conn.execute("SELECT sum(requests) FROM http_requests_5m WHERE app = %s",
                                (app,)).fetchone() == (len(rows) + 1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                insert(conn, [row(app, BASE, 200)])
        assert db.apply_policies(url, "7 days", "30 days") == db.TIMESCALEDB_APACHE
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM timescaledb_information.jobs "
                "WHERE hypertable_name = 'http_requests'").fetchone() == (0,)
