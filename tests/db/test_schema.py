"""The schema is the same to its users on plain PostgreSQL and on TimescaleDB: tables, keys,
indexes, defaults, and the numbers of the 5-minute summary."""

from __future__ import annotations

from tests.db.rows import BASE, expected_summary, insert, row, sample, summary

# (name, type, nullable, default): the contract with the sinks and the docs' queries.
TABLE_COLUMNS = [
    ("time", "timestamp with time zone", "NO", None),
    ("capture_id", "uuid", "NO", None),
    ("app", "text", "NO", None),
    ("client_ip", "inet", "YES", None),
    ("client_port", "integer", "YES", None),
    ("method", "text", "NO", None),
    ("scheme", "text", "YES", None),
    ("host", "text", "YES", None),
    ("path", "text", "NO", None),
    ("query", "text", "YES", None),
    ("params", "jsonb", "NO", "'{}'::jsonb"),
    ("status_code", "smallint", "YES", None),
    ("reason", "text", "YES", None),
    ("http_version", "text", "YES", None),
    ("duration_ms", "double precision", "YES", None),
    ("ended_at", "timestamp with time zone", "YES", None),
    ("request_size", "bigint", "YES", None),
    ("response_size", "bigint", "YES", None),
    ("user_agent", "text", "YES", None),
    ("error", "text", "YES", None),
    ("request_headers", "jsonb", "NO", "'[]'::jsonb"),
    ("response_headers", "jsonb", "YES", None),
    ("request_body", "text", "YES", None),
    ("request_body_encoding", "text", "YES", None),
    ("request_body_truncated", "boolean", "NO", "false"),
    ("response_body", "text", "YES", None),
    ("response_body_encoding", "text", "YES", None),
    ("response_body_truncated", "boolean", "NO", "false"),
    ("inserted_at", "timestamp with time zone", "NO", "now()"),
    ("principal", "text", "YES", None),  # revision 0002
    ("request_body_withheld", "text", "YES", None),  # revision 0004
    ("response_body_withheld", "text", "YES", None),
]
VIEW_COLUMNS = [
    ("bucket", "timestamp with time zone"),
    ("app", "text"),
    ("method", "text"),
    ("path", "text"),
    ("status_code", "smallint"),
    ("requests", "bigint"),
    ("errors", "bigint"),
    ("avg_duration_ms", "double precision"),
    ("max_duration_ms", "double precision"),
    ("bytes_in", "bigint"),
    ("bytes_out", "bigint"),
]
# What the project's queries use (bench/index_use.py; migration 0005 dropped the rest).
INDEXES = {
    "http_requests_pkey": "(capture_id, \"time\")",
    "http_requests_time_idx": "(\"time\" DESC)",
    "http_requests_client_ip_time_idx": "(client_ip, \"time\" DESC)",
}


def columns(conn, table: str) -> list[tuple]:
    return [tuple(line) for line in conn.execute(
        "SELECT column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
        (table,),
    )]


def test_table_has_the_documented_columns(target):
    with target.connect() as conn:
        assert columns(conn, "http_requests") == TABLE_COLUMNS


def test_summary_has_the_same_columns_and_types_in_every_mode(target):
    with target.connect() as conn:
        assert [line[:2] for line in columns(conn, "http_requests_5m")] == VIEW_COLUMNS


def test_primary_key_is_capture_id_and_time(target):
    with target.connect() as conn:
        key = conn.execute("""
            SELECT array_agg(a.attname::text ORDER BY k.ord)
            FROM pg_constraint c
            CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
            WHERE c.conrelid = 'http_requests'::regclass AND c.contype = 'p'
        """).fetchone()[0]
    assert key == ["capture_id", "time"]


def test_indexes_serve_the_common_questions(target):
    with target.connect() as conn:
        found = dict(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = 'http_requests'"
        ).fetchall())
    assert set(found) == set(INDEXES)
    for name, columns_and_predicate in INDEXES.items():
        assert found[name].endswith(columns_and_predicate), found[name]


def test_a_redelivered_row_is_ignored(target):
    first = row(target.app, BASE, 200, duration_ms=10.0)
    again = {**first, "status_code": 503, "duration_ms": 99.0}  # same capture_id and time
    with target.connect() as conn:
        assert insert(conn, [first]) == 1
        assert insert(conn, [again, row(target.app, BASE, 201)]) == 1
        kept = conn.execute(
            "SELECT count(*), min(duration_ms) FROM http_requests WHERE app = %s",
            (target.app,),
        ).fetchone()
    assert kept == (2, 10.0)


def test_a_minimal_row_gets_the_defaults(target):
    with target.connect() as conn:
        conn.execute(
            "INSERT INTO http_requests (time, capture_id, app, method, path) "
            "VALUES (now(), gen_random_uuid(), %s, 'GET', '/')", (target.app,))
        stored = conn.execute(
            "SELECT params, request_headers, request_body_truncated, response_body_truncated, "
            "inserted_at IS NOT NULL, status_code, response_headers "
            "FROM http_requests WHERE app = %s", (target.app,)).fetchone()
    assert stored == ({}, [], False, False, True, None, None)


def test_summary_counts_requests_errors_durations_and_bytes_per_5_minutes(target):
    rows = sample(target.app)
    with target.connect() as conn:
        insert(conn, rows)
        found = summary(conn, target.app)
    assert found == expected_summary(rows)
    assert {line[0] for line in found} == {BASE, BASE.replace(minute=5)}  # two buckets
    # The totals a dashboard asks for, summed over status codes.
    assert sum(line[5] for line in found) == 8
    assert sum(line[6] for line in found) == 3  # a 500, a 404 and one without a response
