"""Sample app B: tells who owns a token, from a small SQLite table of users.

    POST /auth   form field ``token`` -> 200 with the username (text/plain), 401 otherwise.

Setting (read from the environment once, in ``Settings.from_env``):

    APP_B_DB   path of the SQLite database; default ``<tempdir>/tapline-app_b.sqlite3``.
               Created and seeded when the app is created, so every gunicorn worker seeds it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, request

DEFAULT_DB_PATH = Path(tempfile.gettempdir()) / "tapline-app_b.sqlite3"

# token -> username. "mytoken" is the one the demo and the pipeline tests use.
SEED_USERS: dict[str, str] = {
    "mytoken": "density",
    "token-alice": "alice",
    "token-bob": "bob",
}

# Several gunicorn workers may start at once and seed the same file; a writer waits this long
# for another's lock instead of failing with "database is locked".
_BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Settings:
    """App B's settings. ``db_path``: the SQLite file holding the users table."""

    db_path: Path = DEFAULT_DB_PATH

    @classmethod
    def from_env(cls) -> Settings:
        db = os.environ.get("APP_B_DB", "").strip()
        return cls(db_path=Path(db) if db else DEFAULT_DB_PATH)


def _connect(db_path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN ourselves, so CREATE TABLE and the inserts share one
    # transaction (the sqlite3 module would otherwise run the DDL outside it).
    return sqlite3.connect(db_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)


def seed_database(db_path: Path, users: dict[str, str] = SEED_USERS) -> None:
    """Create the users table if needed and add ``users`` that are missing.

    Idempotent, and safe when several processes run it at once: BEGIN IMMEDIATE takes the write
    lock up front, so the others wait for it rather than racing on the schema.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS users (token TEXT PRIMARY KEY, username TEXT NOT NULL)"
            )
            conn.executemany(
                "INSERT OR IGNORE INTO users (token, username) VALUES (?, ?)",
                users.items(),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def find_username(db_path: Path, token: str) -> str | None:
    """The username owning ``token``, or None if no user has it."""
    # One short-lived connection per lookup: sqlite3 connections may not cross threads, and
    # opening a local file is cheap next to the HTTP request around it.
    conn = _connect(db_path)
    try:
        row = conn.execute("SELECT username FROM users WHERE token = ?", (token,)).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def create_app(settings: Settings | None = None) -> Flask:
    """Build app B; ``settings`` default to the environment. Seeds the database."""
    settings = settings or Settings.from_env()
    seed_database(settings.db_path)

    app = Flask(__name__)

    @app.post("/auth")
    def auth() -> Response:
        token = request.form.get("token", "")
        username = find_username(settings.db_path, token) if token else None
        if username is None:
            return _text("unknown token\n", 401)
        return _text(username, 200)

    return app


app = create_app()
