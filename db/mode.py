"""Which of three schemas a database gets, as TimescaleDB is there in full, in part or not at all.

- `timescaledb`: TimescaleDB's full (TSL) edition: http_requests is a hypertable and
  http_requests_5m a continuous aggregate with real-time aggregation and a refresh policy;
  compression and retention policies are available (db.policies).
- `timescaledb-apache`: the Apache 2 edition (license `apache`): a hypertable, and
  http_requests_5m a plain view over it; no continuous aggregates, compression or policies.
- `postgresql`: no TimescaleDB: a plain table, and http_requests_5m a plain view.

http_requests_5m has the same columns, types and meaning in all three, so the same queries work
on any of them.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

TIMESCALEDB = "timescaledb"
TIMESCALEDB_APACHE = "timescaledb-apache"
POSTGRESQL = "postgresql"
MODES = (TIMESCALEDB, TIMESCALEDB_APACHE, POSTGRESQL)

TABLE = "http_requests"
VIEW = "http_requests_5m"


class NoSchema(LookupError):
    """The database has no http_requests table: it was never migrated."""


def _scalar(conn: Any, sql: str) -> Any:
    """The first value of the first row, on a SQLAlchemy or a (sync) psycopg connection."""
    if hasattr(conn, "exec_driver_sql"):
        return conn.exec_driver_sql(sql).scalar()
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def schema_mode(conn: Any) -> str:
    """The mode the database's schema was built in, read from its catalogue.

    `conn` is a SQLAlchemy Connection or a sync psycopg Connection; nothing is written. Raises
    NoSchema when http_requests does not exist.
    """
    if _scalar(conn, f"SELECT to_regclass('{TABLE}') IS NULL"):
        raise NoSchema(f"the database has no {TABLE} table: run `python -m db upgrade` first")
    has_extension = _scalar(
        conn, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    )
    if not has_extension:
        return POSTGRESQL
    is_hypertable = _scalar(conn, f"""
        SELECT EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = '{TABLE}')""")
    if not is_hypertable:
        return POSTGRESQL
    is_continuous = _scalar(conn, f"""
        SELECT EXISTS (
            SELECT 1 FROM timescaledb_information.continuous_aggregates
            WHERE view_schema = current_schema() AND view_name = '{VIEW}')""")
    return TIMESCALEDB if is_continuous else TIMESCALEDB_APACHE


def check_mode(mode: str | None) -> str | None:
    """`mode` itself if it is one of MODES or None; ValueError otherwise."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def choose_mode(conn: Connection, wanted: str | None = None) -> str:
    """The mode to build: `wanted`, else the best this server offers.

    For the migration: it runs inside its transaction and creates the timescaledb extension
    when the server has it (unless `postgresql` is wanted). Raises ValueError when `wanted` asks
    for more than the server offers. The full edition needs both the license `timescale` and the
    TSL module loaded (`tsl_loaded()`): a session that loaded TimescaleDB's library without its
    loader reports the license `timescale` while continuous aggregates fail.
    """
    if check_mode(wanted) == POSTGRESQL:
        log.info("mode %s, as asked", POSTGRESQL)
        return POSTGRESQL
    offered = _offered_mode(conn)
    if wanted is None or wanted == offered:
        return offered
    if MODES.index(wanted) < MODES.index(offered):
        raise ValueError(f"mode {wanted} was asked for, but this server offers only {offered}")
    log.info("mode %s, as asked (the server offers %s)", wanted, offered)
    return wanted


def _offered_mode(conn: Connection) -> str:
    available = conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    ).scalar()
    if not available:
        log.info("TimescaleDB is not installed on this server: mode %s", POSTGRESQL)
        return POSTGRESQL
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except DBAPIError as error:
        # Installed but not usable here, e.g. missing from shared_preload_libraries, or a user
        # that may not create extensions: a plain table still takes every row.
        reason = str(error.orig).strip().splitlines()[0]
        log.warning("TimescaleDB is installed but could not be created (%s): mode %s",
                    reason, POSTGRESQL)
        return POSTGRESQL
    license_name = conn.exec_driver_sql(
        "SELECT current_setting('timescaledb.license', true)"
    ).scalar()
    loader = conn.exec_driver_sql("""
        SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proname = 'tsl_loaded'
          AND n.nspname IN ('_timescaledb_functions', '_timescaledb_internal')
        ORDER BY n.nspname = '_timescaledb_functions' DESC LIMIT 1""").scalar()
    tsl_loaded = True
    if loader is not None:
        tsl_loaded = conn.exec_driver_sql(f"SELECT {loader}.tsl_loaded()").scalar()
    version = conn.exec_driver_sql(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).scalar()
    mode = TIMESCALEDB if license_name == "timescale" and tsl_loaded else TIMESCALEDB_APACHE
    log.info("TimescaleDB %s, license %s, TSL module %s: mode %s", version, license_name,
             "loaded" if tsl_loaded else "not loaded", mode)
    return mode
