"""App B on Flask's test client, with its database in a temporary file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from apps import app_b


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "users.sqlite3"


@pytest.fixture
def client(db_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("APP_B_DB", str(db_path))
    return app_b.create_app().test_client()


def _users(db_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT token, username FROM users ORDER BY token").fetchall()


def test_known_token_answers_the_username(client):
    resp = client.post("/auth", data={"token": "mytoken"})
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    assert resp.get_data(as_text=True) == "density"


@pytest.mark.parametrize(("token", "username"), sorted(app_b.SEED_USERS.items()))
def test_every_seeded_user_is_known(client, token, username):
    resp = client.post("/auth", data={"token": token})
    assert (resp.status_code, resp.get_data(as_text=True)) == (200, username)


@pytest.mark.parametrize("data", [{"token": "nope"}, {"token": ""}, {}, {"other": "mytoken"}])
def test_unknown_empty_or_missing_token_is_401(client, data):
    resp = client.post("/auth", data=data)
    assert resp.status_code == 401
    assert resp.mimetype == "text/plain"


def test_get_is_405(client):
    assert client.get("/auth").status_code == 405


def test_unknown_path_is_404(client):
    assert client.post("/nope", data={"token": "mytoken"}).status_code == 404


def test_database_is_created_at_the_configured_path(client, db_path):
    assert _users(db_path) == sorted(app_b.SEED_USERS.items())


def test_seeding_is_idempotent_and_keeps_other_users(db_path):
    app_b.seed_database(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO users VALUES ('token-carol', 'carol')")
    app_b.seed_database(db_path)
    assert _users(db_path) == sorted({**app_b.SEED_USERS, "token-carol": "carol"}.items())


def test_concurrent_seeding_does_not_fail(db_path):
    # What several gunicorn workers starting at once do to the same file.
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def seed() -> None:
        start.wait()
        try:
            app_b.seed_database(db_path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=seed) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _users(db_path) == sorted(app_b.SEED_USERS.items())


def test_db_path_defaults_to_the_temp_dir(monkeypatch):
    monkeypatch.delenv("APP_B_DB", raising=False)
    assert app_b.Settings.from_env().db_path == app_b.DEFAULT_DB_PATH


def test_missing_parent_directory_is_created(tmp_path):
    db_path = tmp_path / "a" / "b" / "users.sqlite3"
    app_b.create_app(app_b.Settings(db_path=db_path))
    assert _users(db_path) == sorted(app_b.SEED_USERS.items())
