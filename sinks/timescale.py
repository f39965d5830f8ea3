"""The TimescaleDB sink: one row per capture in `http_requests`, written idempotently.

`row_of_json` (pure) turns a record's bytes into a row; `TimescaleSink` writes batches of rows.
The fast path is COPY straight into `http_requests` inside a savepoint. A batch holding a row
that is there already (a re-delivery after a crash or a rebalance) fails that COPY as a whole
with a unique violation; the batch then goes again through COPY into a temporary staging table
and one `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, so a record delivered twice is stored
once. Re-deliveries are rare, so the common batch costs one COPY and no second copy of its
rows. The INSERT path (multi-row VALUES, ON CONFLICT DO NOTHING) is for servers without COPY
(the WASM TimescaleDB of the tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import psycopg
import sqlalchemy as sa
from aiokafka.structs import ConsumerRecord

import db
from capture import InvalidRecord
from sinks.loop import Fence, Item, PermanentWriteError, Sink, unfenced
from sinks.rows import COLUMNS, row_of_json
from sinks.settings import TimescaleSettings

log = logging.getLogger(__name__)

INSERT_CHUNK_ROWS = 500  # 500 rows x 29 columns stays far below the 65,535 parameter limit
_COLUMN_LIST = ", ".join(COLUMNS)


# --- the sink --------------------------------------------------------------------------------


class TimescaleSink(Sink):
    name = "timescale"

    def __init__(self, settings: TimescaleSettings) -> None:
        self.settings = settings
        self.engine: sa.Engine | None = None
        self.mode: str | None = None

    async def start(self) -> None:
        # Migrates, or with TIMESCALE_MIGRATE=false (a writer role) only checks; either way a
        # schema not at head is one NotMigrated line, and the loop retries until it is.
        self.mode = await asyncio.to_thread(
            db.ensure_schema, self.settings.database_url, may_migrate=self.settings.migrate)
        log.info("TimescaleDB sink: schema is at head, mode %s", self.mode)
        await asyncio.to_thread(
            db.apply_policies, self.settings.database_url,
            self.settings.compress_after, self.settings.retention,
        )
        self.engine = sa.create_engine(
            db.sqlalchemy_url(self.settings.database_url),
            pool_size=1, max_overflow=0, pool_pre_ping=True,
        )

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def prepare(self, message: ConsumerRecord) -> tuple:
        if not message.value:
            raise InvalidRecord("empty message")
        return row_of_json(message.value, self.settings.body_max_bytes)

    async def write(self, items: Sequence[Item], fence: Fence = unfenced) -> None:
        fence()  # a late write would be harmless here (ON CONFLICT DO NOTHING), a cheap check
        rows = [item.prepared for item in items]
        await asyncio.to_thread(self._write, rows)

    def _write(self, rows: list[tuple]) -> None:
        assert self.engine is not None
        try:
            with self.engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()
                with cursor:
                    if self.settings.write_method == "copy":
                        _copy(cursor, rows)
                    else:
                        _insert(cursor, rows)
        except (psycopg.DataError, psycopg.IntegrityError,
                # A row PostgreSQL can never take: an index entry over its size limit (a long
                # URL), a value too large for a field. Retrying would wedge the sink.
                psycopg.errors.ProgramLimitExceeded,
                sa.exc.DataError, sa.exc.IntegrityError) as e:
            raise PermanentWriteError(str(e).splitlines()[0]) from e
        except Exception:
            # Whatever broke may have broken the connection: start the next try afresh.
            self.engine.dispose()
            raise


def _copy(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    cursor.execute("SAVEPOINT tapline_copy")
    try:
        _copy_into(cursor, "http_requests", rows)
    except psycopg.errors.UniqueViolation:
        cursor.execute("ROLLBACK TO SAVEPOINT tapline_copy")
        _copy_staged(cursor, rows)
    else:
        cursor.execute("RELEASE SAVEPOINT tapline_copy")


def _copy_into(cursor: psycopg.Cursor, table: str, rows: list[tuple]) -> None:
    with cursor.copy(f"COPY {table} ({_COLUMN_LIST}) FROM STDIN") as copy:
        write_row = copy.write_row
        for row in rows:
            write_row(row)


def _copy_staged(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    """Rows some of which may be stored already: each one stored once."""
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS http_requests_stage "
        "(LIKE http_requests INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    _copy_into(cursor, "http_requests_stage", rows)
    cursor.execute(
        f"INSERT INTO http_requests ({_COLUMN_LIST}) "
        f"SELECT {_COLUMN_LIST} FROM http_requests_stage ON CONFLICT DO NOTHING"
    )


def _insert(cursor: psycopg.Cursor, rows: list[tuple]) -> None:
    one = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
    for start in range(0, len(rows), INSERT_CHUNK_ROWS):
        chunk = rows[start:start + INSERT_CHUNK_ROWS]
        cursor.execute(
            f"INSERT INTO http_requests ({_COLUMN_LIST}) VALUES "
            + ", ".join([one] * len(chunk)) + " ON CONFLICT DO NOTHING",
            [value for row in chunk for value in row],
        )
