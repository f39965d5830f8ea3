"""db.migrate on plain PostgreSQL: idempotent, one schema when many sinks start at once, a CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from alembic import command

import db
from db.__main__ import main
from stack import free_port

ROOT = Path(__file__).resolve().parents[2]

HEAD = "0005"  # the newest revision in db/migrations/versions


def version(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [line[0] for line in conn.execute("SELECT version_num FROM alembic_version")]


def test_migrate_twice_builds_once_in_mode_postgresql(pg_url, caplog):
    caplog.set_level("INFO", logger="db")
    assert db.migrate(pg_url) == db.POSTGRESQL
    assert db.migrate(pg_url) == db.POSTGRESQL
    assert version(pg_url) == [HEAD]
    assert "mode postgresql" in caplog.text  # the mode found is logged
    with psycopg.connect(pg_url) as conn:
        assert db.schema_mode(conn) == db.POSTGRESQL


def test_schema_mode_of_an_empty_database_says_to_migrate(pg_url):
    with psycopg.connect(pg_url) as conn, pytest.raises(db.NoSchema, match="db upgrade"):
        db.schema_mode(conn)


def test_a_mode_the_server_lacks_is_refused(pg_url):
    with pytest.raises(ValueError, match="offers only postgresql"):
        db.migrate(pg_url, mode=db.TIMESCALEDB)
    with pytest.raises(ValueError, match="mode must be one of"):
        db.migrate(pg_url, mode="oracle")


def test_migrate_waits_for_the_migration_lock(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (db.MIGRATION_LOCK_KEY,))
        done = threading.Event()
        worker = threading.Thread(target=lambda: (db.migrate(pg_url), done.set()))
        worker.start()
        time.sleep(1.0)
        assert not done.is_set()
        assert holder.execute("SELECT to_regclass('http_requests')").fetchone()[0] is None
        holder.execute("SELECT pg_advisory_unlock(%s)", (db.MIGRATION_LOCK_KEY,))
        worker.join(timeout=30)
    assert done.is_set()
    assert version(pg_url) == [HEAD]


def test_threads_migrating_at_once_agree(pg_url):
    with ThreadPoolExecutor(max_workers=4) as pool:
        modes = list(pool.map(lambda _: db.migrate(pg_url), range(4)))
    assert modes == [db.POSTGRESQL] * 4
    assert version(pg_url) == [HEAD]


def upgrade_processes(url: str, count: int, *options: str) -> list[subprocess.CompletedProcess]:
    """Run `python -m db upgrade` `count` times at once, as sinks starting together would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": url}
    running = [
        subprocess.Popen([sys.executable, "-m", "db", "upgrade", *options], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    finished = []
    for process in running:
        out, err = process.communicate(timeout=120)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return finished


def test_processes_migrating_a_new_database_at_once_build_one_schema(pg_url):
    finished = upgrade_processes(pg_url, 4)
    for done in finished:
        assert done.returncode == 0, done.stderr
        assert done.stdout == "postgresql\n"
    # Exactly one of them ran the migration; the others found the schema at head.
    assert sum("Running upgrade" in done.stderr for done in finished) == 1, [
        done.stderr for done in finished]
    assert version(pg_url) == [HEAD]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'http_requests%%' AND relkind IN "
            "('r', 'v', 'i')").fetchone()[0] == 5  # table, view, three indexes


def test_cli_mode_prints_the_mode(pg_url, capsys):
    db.migrate(pg_url)
    assert main(["mode", "--url", pg_url]) == 0
    assert capsys.readouterr().out == "postgresql\n"


def test_cli_says_what_is_wrong_in_one_line(pg_url, capsys):
    assert main(["mode", "--url", pg_url]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "db: error: the database has no http_requests table: run `python -m db upgrade` first")

    with pytest.raises(SystemExit, match="2"):  # the command line: checked before connecting
        main(["upgrade", "--url", "mysql://root:secret@127.0.0.1/tapline"])
    assert capsys.readouterr().err == (
        "db: error: --url mysql://root:***@127.0.0.1/tapline: not a postgresql:// URL\n")

    port = free_port()
    assert main(["upgrade", "--url", f"postgresql://postgres:secret@127.0.0.1:{port}/x"]) == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"db: error: postgresql://postgres:***@127.0.0.1:{port}/x: ")
    assert "secret" not in line


def test_policies_are_not_applied_without_timescaledb(pg_url, caplog):
    db.migrate(pg_url)
    caplog.set_level("INFO", logger="db")
    assert db.apply_policies(pg_url, "7 days", "30 days") == db.POSTGRESQL
    assert "need TimescaleDB's full edition" in caplog.text


def test_alembic_commands_work_from_code_and_downgrade_removes_the_schema(pg_url, monkeypatch):
    # Without a connection, db/migrations/env.py opens one to DATABASE_URL and takes the lock.
    monkeypatch.setenv("DATABASE_URL", pg_url)
    command.upgrade(db.alembic_config(), "head")
    assert version(pg_url) == [HEAD]
    command.downgrade(db.alembic_config(), "base")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT to_regclass('http_requests'), to_regclass('http_requests_5m')"
        ).fetchone() == (None, None)
    assert db.migrate(pg_url) == db.POSTGRESQL
