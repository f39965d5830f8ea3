"""Bring a database's schema to the newest revision, safely when several sinks start at once."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from capture.settings import DEFAULT_DATABASE_URL
from db.mode import check_mode, schema_mode

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DATABASE_VARIABLE = "DATABASE_URL"
DEFAULT_URL = DEFAULT_DATABASE_URL
# The key of the session-level advisory lock that migrators take: "tapline" in ASCII.
MIGRATION_LOCK_KEY = 0x7461706C696E65
_DRIVER = "postgresql+psycopg"

# Alembic keeps its running context in module globals (alembic.op, alembic.context): two threads
# of one process must not run it at the same time, even on different databases.
_alembic_running = threading.Lock()


class NotMigrated(RuntimeError):
    """The schema is not at the newest revision, and this connection is not to bring it there
    (it was told not to, or its role may not)."""


def database_url(url: str | None = None) -> str:
    """`url`, else $DATABASE_URL, else DEFAULT_URL."""
    return url or os.environ.get(DATABASE_VARIABLE, "").strip() or DEFAULT_URL


def sqlalchemy_url(url: str | URL) -> URL:
    """A postgresql:// (or postgres://) URL as SQLAlchemy's URL for psycopg 3.

    Raises ValueError for anything that is not a PostgreSQL URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(f"not a database URL: {url!r}") from error
    if parsed.drivername in ("postgresql", "postgres", _DRIVER):
        return parsed.set(drivername=_DRIVER)
    raise ValueError(f"not a postgresql:// URL: {parsed.render_as_string(hide_password=True)}")


def shown(url: str | URL) -> str:
    """The URL to print: as given, without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a URL)"


@contextlib.contextmanager
def connect(url: str | None = None) -> Iterator[Connection]:
    """One connection to the database at `url` (see database_url), closed on exit.

    No pool: the connection is gone when the block ends, which a one-connection server (the
    WASM TimescaleDB of the tests) needs before anyone else may connect.
    """
    engine = create_engine(sqlalchemy_url(database_url(url)), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextlib.contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the migrators' advisory lock on `connection` (session level) for the block.

    Sinks that start together each call migrate(): the first builds the schema, the others wait
    here, then find it at the newest revision and do nothing. The lock is taken and released in
    transactions of their own, which are committed, so that the block starts and ends with none.
    """
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()  # whatever a failure left open
        # A broken connection cannot unlock, but its session has ended, and the lock with it.
        with contextlib.suppress(DBAPIError):
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
            connection.commit()


def alembic_config(connection: Connection | None = None, mode: str | None = None) -> Config:
    """Alembic's configuration, from code: the scripts in db/migrations, on `connection`.

    `mode`, when given, is the mode a new schema is built in (see migrate).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes["mode"] = check_mode(mode)
    return config


def migrate(url: str | None = None, mode: str | None = None) -> str:
    """Bring the database at `url` (see database_url) to the newest revision; return its mode.

    Safe to call from several processes at once (an advisory lock takes them in turn) and again
    and again (an up-to-date schema is left alone). The mode, one of db.mode.MODES, is logged;
    a new schema gets the best the server offers, or `mode` if given (a lesser one: `postgresql`
    on a TimescaleDB server, say; ValueError if the server cannot give it). An existing schema
    keeps the mode it was built in, whatever `mode` says (a warning tells).
    """
    config = alembic_config(mode=mode)
    began = time.monotonic()
    with _alembic_running, connect(url) as connection, migration_lock(connection):
        waited = time.monotonic() - began
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
        found = schema_mode(connection)
        connection.commit()
    log.info("database %s: schema at head, mode %s (%.1f s, of which %.1f s waiting for the "
             "lock)", shown(database_url(url)), found, time.monotonic() - began, waited)
    if mode is not None and found != mode:
        log.warning("database %s: its schema was built in mode %s, not %s: that takes a new "
                    "database", shown(database_url(url)), found, mode)
    return found


def head_revision() -> str:
    """The newest revision in db/migrations/versions."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "db/migrations/versions holds no revision"
    return head


def schema_revision(connection: Connection) -> str | None:
    """The revision the database's schema is at (None: never migrated). Needs only SELECT on
    alembic_version, which both tapline_writer and tapline_reader have."""
    return MigrationContext.configure(connection).get_current_revision()


def check_migrated(url: str | None = None) -> str:
    """The mode of the database at `url` if its schema is at the newest revision; NotMigrated
    otherwise, saying who must do what. Changes nothing, takes no lock: for a role that may
    not migrate."""
    head = head_revision()
    with connect(url) as connection:
        found = schema_revision(connection)
        if found == head:
            return schema_mode(connection)
    raise NotMigrated(
        f"database {shown(database_url(url))} is not migrated to revision {head} (it is at "
        f"{found or 'none'}): run `python -m db upgrade` as the schema's owner (`make "
        "migrate`, or docker compose's migrate service)")


def ensure_schema(url: str | None = None, *, may_migrate: bool = True) -> str:
    """For a writer at its start: the schema at the newest revision; its mode.

    With `may_migrate`, this is migrate(), except that a role without the rights to migrate a
    schema that needs it gets NotMigrated (one line: what to run, as whom) rather than a
    permission error from somewhere inside a migration. Without, it only checks
    (check_migrated): a role that is not the schema's owner never even tries.
    """
    if not may_migrate:
        return check_migrated(url)
    try:
        return migrate(url)
    except DBAPIError as error:
        if not isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
            raise
        reason = str(error.orig).strip().splitlines()[0]
        raise NotMigrated(
            f"database {shown(database_url(url))} is not migrated to revision "
            f"{head_revision()}, and this role may not migrate it ({reason}): run `python -m "
            "db upgrade` as the schema's owner (`make migrate`, or docker compose's migrate "
            "service)") from error
