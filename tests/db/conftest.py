"""The servers the schema is tested on: a PostgreSQL cluster and TimescaleDB as WASM (PGlite).

Both are real and started here (PostgreSQL: DATABASE_URL's if set); a server that cannot start
fails the tests that need it. PGlite takes one connection at a time: a test holds at most one
connection to it at any moment, and closes it before calling db.migrate or db.apply_policies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy.engine import make_url

import db

# A mistake that opens a second connection to PGlite fails after this long instead of hanging.
PGLITE_CONNECT_TIMEOUT_S = 20


def with_connect_timeout(dsn: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}connect_timeout={PGLITE_CONNECT_TIMEOUT_S}"


@pytest.fixture
def pg_url(postgres) -> Iterator[str]:
    """A new, empty database on the suite's PostgreSQL, dropped after the test."""
    name = f"tapline_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(postgres.dsn).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(postgres.dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def timescale_url(timescale) -> str:
    """The session's TimescaleLite database, migrated once (tests keep apart by app name)."""
    url = with_connect_timeout(timescale.dsn)
    assert db.migrate(url) == db.TIMESCALEDB
    return url


@dataclass(frozen=True)
class Target:
    """A migrated database and a name of an app that no other test writes."""

    url: str
    mode: str
    app: str

    def connect(self, **options) -> psycopg.Connection:
        return psycopg.connect(self.url, **options)


@pytest.fixture(params=[db.POSTGRESQL, db.TIMESCALEDB])
def target(request) -> Target:
    """Each test that takes it runs on plain PostgreSQL and on TimescaleDB (full edition)."""
    app = f"app-{uuid.uuid4().hex[:8]}"
    if request.param == db.POSTGRESQL:
        url = request.getfixturevalue("pg_url")
        assert db.migrate(url) == db.POSTGRESQL
    else:
        url = request.getfixturevalue("timescale_url")
    return Target(url=url, mode=request.param, app=app)
