"""http_requests, one row per captured exchange, and http_requests_5m, its 5-minute summary.

The mode (db.mode) decides what they are built as: a hypertable and a continuous aggregate with
TimescaleDB's full edition, a hypertable and a view with its Apache edition, a table and a view
without TimescaleDB. Every statement tolerates what it creates being there already: the
continuous aggregate must be made outside a transaction, after the table's transaction has been
committed, so a run that fails there leaves the table behind, and the next run must go on from it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

from db.mode import POSTGRESQL, TIMESCALEDB, choose_mode, schema_mode

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS http_requests (
    time                    timestamptz      NOT NULL,
    capture_id              uuid             NOT NULL,
    app                     text             NOT NULL,
    client_ip               inet,
    client_port             integer,
    method                  text             NOT NULL,
    scheme                  text,
    host                    text,
    path                    text             NOT NULL,
    query                   text,
    params                  jsonb            NOT NULL DEFAULT '{}',
    status_code             smallint,
    reason                  text,
    http_version            text,
    duration_ms             double precision,
    ended_at                timestamptz,
    request_size            bigint,
    response_size           bigint,
    user_agent              text,
    error                   text,
    request_headers         jsonb            NOT NULL DEFAULT '[]',
    response_headers        jsonb,
    request_body            text,
    request_body_encoding   text,
    request_body_truncated  boolean          NOT NULL DEFAULT false,
    response_body           text,
    response_body_encoding  text,
    response_body_truncated boolean          NOT NULL DEFAULT false,
    inserted_at             timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (capture_id, time)
)
"""

# One-day chunks: a busy service's day of rows and indexes fits in memory, and retention drops
# whole days.
CREATE_HYPERTABLE = """
SELECT create_hypertable('http_requests', 'time', chunk_time_interval => INTERVAL '1 day',
                         if_not_exists => TRUE)
"""

# The questions users ask: the latest requests (a hypertable makes this one itself, under this
# name); one endpoint's requests by status; one client's requests; the failed requests.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS http_requests_time_idx ON http_requests (time DESC)",
    "CREATE INDEX IF NOT EXISTS http_requests_app_path_status_time_idx "
    "ON http_requests (app, path, status_code, time DESC)",
    "CREATE INDEX IF NOT EXISTS http_requests_client_ip_time_idx "
    "ON http_requests (client_ip, time DESC)",
    "CREATE INDEX IF NOT EXISTS http_requests_failed_time_idx "
    "ON http_requests (status_code, time DESC) WHERE status_code >= 400 OR status_code IS NULL",
)

# The 5-minute summary, with `{bucket}` the bucket's expression. A failed request is one with an
# error status or no response at all. Sums of bigint are numeric in PostgreSQL: cast back, so
# clients get integers.
SUMMARY = """
SELECT {bucket} AS bucket,
       app, method, path, status_code,
       count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400 OR status_code IS NULL) AS errors,
       avg(duration_ms) AS avg_duration_ms,
       max(duration_ms) AS max_duration_ms,
       sum(request_size)::bigint AS bytes_in,
       sum(response_size)::bigint AS bytes_out
FROM http_requests
GROUP BY bucket, app, method, path, status_code
"""
TIME_BUCKET = "time_bucket(INTERVAL '5 minutes', time)"
# date_bin from 2000-01-01 UTC gives time_bucket's buckets: its origin, 2000-01-03 UTC, is a
# whole number of 5 minutes later. The zone is spelled out: the constant is fixed when the view
# is made, in that session's time zone.
DATE_BIN = "date_bin(INTERVAL '5 minutes', time, TIMESTAMPTZ '2000-01-01 00:00:00+00')"

# materialized_only = false: real-time aggregation, so the minutes not yet materialized are
# computed from http_requests at query time and the newest requests show at once.
CREATE_CONTINUOUS_AGGREGATE = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS http_requests_5m "
    "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS"
    + SUMMARY.format(bucket=TIME_BUCKET)
    + "WITH NO DATA"
)

# Every minute, materialize the buckets that ended more than 5 minutes ago, as far back as 3 days:
# rows that arrive late (a sink catching up after an outage, a redelivery) are summarized again
# if they are less than 3 days old. A retention shorter than that would empty the buckets it
# dropped rows from (db.policies refuses it).
ADD_REFRESH_POLICY = """
SELECT add_continuous_aggregate_policy('http_requests_5m',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '5 minutes',
    schedule_interval => INTERVAL '1 minute',
    if_not_exists => TRUE)
"""


def _run(sql: str) -> None:
    # Straight to the driver: no bind-parameter parsing of the SQL text.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    mode = choose_mode(op.get_bind(), context.config.attributes.get("mode"))
    _run(CREATE_TABLE)
    if mode != POSTGRESQL:
        _run(CREATE_HYPERTABLE)
    for index in INDEXES:
        _run(index)
    if mode == TIMESCALEDB:
        with op.get_context().autocommit_block():
            _run(CREATE_CONTINUOUS_AGGREGATE)
            _run(ADD_REFRESH_POLICY)
    else:
        bucket = DATE_BIN if mode == POSTGRESQL else TIME_BUCKET
        _run("CREATE OR REPLACE VIEW http_requests_5m AS" + SUMMARY.format(bucket=bucket))


def downgrade() -> None:
    if schema_mode(op.get_bind()) == TIMESCALEDB:
        with op.get_context().autocommit_block():
            _run("DROP MATERIALIZED VIEW IF EXISTS http_requests_5m")
    else:
        _run("DROP VIEW IF EXISTS http_requests_5m")
    _run("DROP TABLE IF EXISTS http_requests")
