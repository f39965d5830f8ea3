"""stack.TimescaleLite, the WASM TimescaleDB: what its clients may count on."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import psycopg
import pytest

from tests.db.rows import BASE, insert, row

CHECK_LOGIN_S = 10


def connect(dsn: str, **options) -> psycopg.Connection:
    return psycopg.connect(dsn, connect_timeout=CHECK_LOGIN_S, **options)


def test_dsn_names_the_port_and_what_psycopg_needs(timescale):
    assert timescale.dsn == (
        f"postgresql://postgres:postgres@127.0.0.1:{timescale.port}/postgres?sslmode=disable")
    with connect(timescale.dsn) as conn:
        found = conn.execute(
            "SELECT current_database(), current_setting('search_path')").fetchone()
    assert found == ("postgres", "public")


FULL_EDITION = """
    SELECT current_setting('timescaledb.license'), _timescaledb_functions.tsl_loaded()
"""


def test_a_restart_keeps_the_data_the_port_and_the_full_edition(timescale, timescale_url):
    # The suite's server, migrated: without TimescaleDB's loader loaded first, a restarted
    # cluster would run without the TSL module, and inserting into a hypertable that feeds a
    # continuous aggregate would fail (see server.mjs).
    app = f"restart-{uuid.uuid4().hex[:8]}"
    with connect(timescale_url) as conn:
        insert(conn, [row(app, BASE, 200)])
    port = timescale.port
    timescale.stop()
    assert not timescale.running
    timescale.start()
    assert timescale.port == port
    with connect(timescale_url) as conn:
        assert conn.execute(FULL_EDITION).fetchone() == ("timescale", True)
        insert(conn, [row(app, BASE, 500)])
        assert conn.execute(
            "SELECT count(*) FROM http_requests WHERE app = %s", (app,)).fetchone() == (2,)


def test_clients_default_ssl_negotiation_is_answered(timescale):
    dsn = timescale.dsn.replace("?sslmode=disable", "")  # libpq's default: sslmode=prefer
    with connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not conn.pgconn.ssl_in_use


def test_statements_larger_than_a_network_read_arrive_whole(timescale):
    body = "x" * 3_000_000
    with connect(timescale.dsn) as conn:
        conn.execute("CREATE TEMPORARY TABLE big (body text)")
        conn.execute("INSERT INTO big VALUES (%s)", (body,))
        assert conn.execute("SELECT length(body) FROM big").fetchone() == (len(body),)


def test_copy_from_stdin_fails_cleanly_and_the_server_goes_on(timescale):
    with connect(timescale.dsn) as conn:
        conn.execute("CREATE TEMPORARY TABLE copied (n int)")
        conn.commit()
        refused = pytest.raises(psycopg.errors.FeatureNotSupported, match="write with INSERT")
        with refused, conn.cursor().copy("COPY copied FROM STDIN") as copy:
            copy.write_row((1,))
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM copied").fetchone() == (0,)


def test_the_next_client_does_not_inherit_a_session(timescale):
    first = connect(timescale.dsn)
    first.execute("CREATE TABLE IF NOT EXISTS inherited (n int)")
    first.commit()
    first.execute("INSERT INTO inherited VALUES (1)")  # left uncommitted
    first.execute("SELECT pg_advisory_lock(42)")
    first.execute("SET application_name = 'first'")
    first.pgconn.finish()  # the socket closes with the transaction open

    with connect(timescale.dsn, autocommit=True) as second:
        found = second.execute("""
            SELECT (SELECT count(*) FROM inherited),
                   (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'),
                   current_setting('application_name') = 'first'
        """).fetchone()
        assert second.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        second.execute("DROP TABLE inherited")
    assert found == (0, 0, False)


def test_a_second_client_waits_for_the_first(timescale):
    answered: list[float] = []
    with connect(timescale.dsn) as first:
        first.execute("SELECT 1")

        def second() -> None:
            began = time.monotonic()
            with connect(timescale.dsn) as conn:
                conn.execute("SELECT 2")
            answered.append(time.monotonic() - began)

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        assert not answered  # still queued behind the first
    waiter.join(timeout=CHECK_LOGIN_S)
    assert answered and answered[0] >= 0.4


def test_a_client_that_gave_up_waiting_does_not_block_the_others(timescale):
    with connect(timescale.dsn) as first:
        # A client that connects and sends its startup packet, then never answers the password
        # request: what one that timed out but kept its socket open looks like to the server.
        silent = socket.create_connection(("127.0.0.1", timescale.port))
        startup = b"\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
        silent.sendall((len(startup) + 4).to_bytes(4, "big") + startup)
        first.execute("SELECT 1")
    try:
        with connect(timescale.dsn) as later:
            assert later.execute("SELECT 3").fetchone() == (3,)
    finally:
        silent.close()
