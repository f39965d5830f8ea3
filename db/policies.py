"""Compression and retention of http_requests, for TimescaleDB's full edition only.

Both are TimescaleDB policies, that is jobs its background workers run: compression turns chunks
older than `compress_after` into column-wise compressed ones (far smaller, and still
queryable); retention drops chunks older than `retention`. Whole one-day chunks: a row goes at
most a day after its age passes the interval.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from db.migrate import connect
from db.mode import TIMESCALEDB, schema_mode

log = logging.getLogger(__name__)

# Compressed in segments of one app, newest first: queries filter on app and read recent rows.
ENABLE_COMPRESSION = """
ALTER TABLE http_requests SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'app',
    timescaledb.compress_orderby = 'time DESC')
"""

_JOB = """
SELECT job_id, (config ->> :key)::interval = CAST(:wanted AS interval) AS same
FROM timescaledb_information.jobs
WHERE proc_name = :proc AND hypertable_schema = current_schema()
  AND hypertable_name = 'http_requests'
"""


def apply_policies(
    target: str | Connection | None, compress_after: str | None, retention: str | None
) -> str:
    """Put compression and retention policies on http_requests; return the schema's mode.

    `target` is a database URL (None: db.migrate.database_url's default) or a SQLAlchemy
    connection; intervals are PostgreSQL's ('7 days', '1 month'). Each policy given is added if
    missing and replaced if its interval differs, so calling this at every start with the same
    settings changes nothing; one given as None is left as it is. Compression needs the
    compression settings on the table, which the first compression policy sets.

    In the other modes there are no policies: this logs so and does nothing. Raises ValueError
    for a retention that would drop rows inside the continuous aggregate's refresh window (the
    refresh would then empty the summary of those rows).
    """
    with _connection(target) as conn:
        mode = schema_mode(conn)
        if mode != TIMESCALEDB:
            if compress_after or retention:
                log.info("mode %s: compression and retention policies need TimescaleDB's full "
                         "edition; none applied", mode)
            return mode
        for interval in (compress_after, retention):
            if interval:
                _check_interval(conn, interval)
        if compress_after:
            if not _compression_enabled(conn):
                conn.exec_driver_sql(ENABLE_COMPRESSION)
            _ensure_policy(conn, "policy_compression", "compress_after", compress_after,
                           "add_compression_policy", "remove_compression_policy")
        if retention:
            _check_retention(conn, retention)
            _ensure_policy(conn, "policy_retention", "drop_after", retention,
                           "add_retention_policy", "remove_retention_policy")
    return mode


@contextlib.contextmanager
def _connection(target: str | Connection | None) -> Iterator[Connection]:
    """A connection in a transaction that is committed at the end, unless the caller owns it."""
    if isinstance(target, Connection):
        if target.in_transaction():
            yield target  # the caller's transaction: the caller commits
        else:
            with target.begin():
                yield target
        return
    with connect(target) as conn:
        yield conn
        conn.commit()


def _compression_enabled(conn: Connection) -> bool:
    return bool(conn.execute(text("""
        SELECT compression_enabled FROM timescaledb_information.hypertables
        WHERE hypertable_schema = current_schema() AND hypertable_name = 'http_requests'
    """)).scalar())


def _ensure_policy(
    conn: Connection, proc: str, key: str, wanted: str, add: str, remove: str
) -> None:
    jobs = conn.execute(text(_JOB), {"key": key, "wanted": wanted, "proc": proc}).all()
    if jobs and all(job.same for job in jobs):
        log.info("http_requests: %s after %s already in place", proc, wanted)
        return
    if jobs:
        conn.execute(text(f"SELECT {remove}('http_requests', if_exists => true)"))
    conn.execute(
        text(f"SELECT {add}('http_requests', CAST(:wanted AS interval), if_not_exists => true)"),
        {"wanted": wanted},
    )
    log.info("http_requests: %s after %s %s", proc, wanted, "replaced" if jobs else "added")


class BadInterval(ValueError):
    """An interval PostgreSQL does not take."""


def _check_interval(conn: Connection, value: str) -> None:
    try:
        with conn.begin_nested():  # a failed cast must not spoil the caller's transaction
            conn.execute(text("SELECT CAST(:value AS interval)"), {"value": value})
    except DBAPIError as error:
        raise BadInterval(f"not an interval: {value!r} (write e.g. '7 days')") from error


def _check_retention(conn: Connection, retention: str) -> None:
    window = conn.execute(text("""
        SELECT max((j.config ->> 'start_offset')::interval)::text
        FROM timescaledb_information.jobs j
        JOIN timescaledb_information.continuous_aggregates c
          -- The job names the view (2.23) or, in older versions, its materialization table.
          ON (j.hypertable_schema, j.hypertable_name) IN (
              (c.view_schema, c.view_name),
              (c.materialization_hypertable_schema, c.materialization_hypertable_name))
        WHERE j.proc_name = 'policy_refresh_continuous_aggregate'
          AND c.view_schema = current_schema() AND c.view_name = 'http_requests_5m'
          AND (j.config ->> 'start_offset')::interval >= CAST(:retention AS interval)
    """), {"retention": retention}).scalar()
    if window is not None:
        raise ValueError(f"a retention of {retention} would drop rows that http_requests_5m's "
                         f"refresh still covers (the last {window}): keep rows longer")
