"""The proxy's on-disk spool: captures that cannot go to Kafka now wait here, in order, and
survive a restart of the proxy (CAPTURE_SPOOL_DIR, capped at CAPTURE_SPOOL_MAX_BYTES).

The spool is one SQLite database per proxy process (stdlib `sqlite3`, in WAL mode): a row
per record with the time it was captured, which is the order rows are read in (a batch
Kafka failed in flight is spooled after newer records, and still goes first). SQLite is
used instead of a home-made segment log because it already is what such a log must be: a
write is a transaction, so a proxy killed in the middle of one leaves the rows before it
whole and no torn record behind, and rows are deleted, and their pages reused, only once
Kafka has acknowledged them. Every call runs on one thread of its own (`asyncio.to_thread`
would hop between threads), so the event loop never waits on the disk, and the producer
keeps the counts (records, bytes) on the event loop, where its accounting is.

With several workers (PROXY_WORKERS) each has its own file, `worker-<N>.sqlite`. A worker
that starts adopts the files of workers that no longer exist (a proxy restarted with fewer
workers): worker i takes `worker-j` for every j >= PROXY_WORKERS with j % PROXY_WORKERS == i.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = ("CREATE TABLE IF NOT EXISTS spool (key BLOB NOT NULL, value BLOB NOT NULL, "
           "at REAL NOT NULL); CREATE INDEX IF NOT EXISTS spool_at ON spool (at)")


class SpoolFull(Exception):
    """The spool is at its cap, or the disk under it is full: the records were not written."""


class SpoolUnusable(Exception):
    """The spool's folder or file cannot be used at all (at start); the message says why."""


def spool_file(folder: Path, worker: int) -> Path:
    return folder / f"worker-{worker}.sqlite"


def adoptable(folder: Path, worker: int, workers: int) -> list[Path]:
    """Files of workers beyond `workers` that worker `worker` takes over."""
    found = []
    for path in folder.glob("worker-*.sqlite"):
        number = path.stem.removeprefix("worker-")
        if number.isdigit() and int(number) >= workers and int(number) % workers == worker:
            found.append(path)
    return sorted(found)


class Spool:
    """Rows of (key, value) on disk, in order. Methods are coroutines that run the work on the
    spool's own thread; `records` and `bytes` are kept by the caller's event loop."""

    def __init__(self, folder: Path, worker: int, workers: int, max_bytes: int) -> None:
        self.folder = folder
        self.path = spool_file(folder, worker)
        self.worker = worker
        self.workers = workers
        self.max_bytes = max_bytes
        self.records = 0
        self.bytes = 0
        self._db: sqlite3.Connection | None = None
        # Rows Kafka has acknowledged that a full disk would not let us delete (a delete
        # writes to the WAL too): skipped by reads, deleted again with the next delete.
        self._forgotten: set[int] = set()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-spool")

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # --- start -------------------------------------------------------------------------------

    def open(self) -> int:
        """Open (or create) the file and adopt orphans; the records found in it. Synchronous:
        called once at start, before any traffic, so that a folder that cannot be used stops
        the proxy with one line."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._db = self._connect(self.path)
            for orphan in adoptable(self.folder, self.worker, self.workers):
                self._adopt(orphan)
            records, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM spool"
            ).fetchone()
        except (OSError, sqlite3.Error) as e:
            raise SpoolUnusable(f"CAPTURE_SPOOL_DIR {self.folder}: cannot use {self.path.name}: "
                                f"{e}") from None
        self.records, self.bytes = records, size
        return records

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Records are 1-100 KB: in SQLite's default 4 KiB pages a 2 KB record takes a page of
        # its own; 64 KiB pages hold 30 of them (set before the first table, else ignored).
        db.execute("PRAGMA page_size=65536")
        db.execute("PRAGMA journal_mode=WAL")
        # A commit reaches the OS (which keeps it when the proxy is killed); fsync only at
        # checkpoints: a power cut may lose the last moments of a spool, not corrupt it.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    def _adopt(self, orphan: Path) -> None:
        other = self._connect(orphan)
        try:
            moved = 0
            while rows := other.execute(
                    "SELECT rowid, key, value, at FROM spool ORDER BY rowid LIMIT 1000"
            ).fetchall():
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO spool (key, value, at) VALUES (?, ?, ?)",
                                     [row[1:] for row in rows])
                self._db.execute("COMMIT")
                other.execute("DELETE FROM spool WHERE rowid <= ?", (rows[-1][0],))
                moved += len(rows)
        finally:
            other.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{orphan}{suffix}").unlink(missing_ok=True)
        log.info("capture spool: took over %d records from %s", moved, orphan.name)

    # --- work ---------------------------------------------------------------------------------

    async def append(self, items: list[tuple[bytes, bytes, float]]) -> int:
        """Write `items` (key, value, time captured); how many were written (a prefix: the
        cap may stop it early). Raises SpoolFull when none could be written."""
        room = self.max_bytes - self.bytes
        fits, size = [], 0
        for item in items:
            if size + len(item[0]) + len(item[1]) > room:
                break
            fits.append(item)
            size += len(item[0]) + len(item[1])
        if not fits:
            raise SpoolFull("the spool is at CAPTURE_SPOOL_MAX_BYTES")
        await self._call(self._insert, fits)
        self.records += len(fits)
        self.bytes += size
        return len(fits)

    def _insert(self, items: list[tuple[bytes, bytes, float]]) -> None:
        if not self._write("INSERT INTO spool (key, value, at) VALUES (?, ?, ?)", items):
            raise SpoolFull("the disk under the spool refuses the write")

    def _write(self, statement: str, rows: list) -> bool:
        """Run `statement` over `rows` in one transaction; False when the disk refused it
        even after a checkpoint (the WAL may be what cannot grow: its pages are folded into
        the file and it starts over)."""
        for attempt in range(2):
            try:
                self._db.execute("BEGIN")
                self._db.executemany(statement, rows)
                self._db.execute("COMMIT")
                return True
            except (sqlite3.Error, OSError) as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if not _disk_full(e):
                    raise
                if attempt == 0:
                    with contextlib.suppress(sqlite3.Error, OSError):
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return False

    async def read(self, max_bytes: int) -> list[tuple[int, bytes, bytes]]:
        """(rowid, key, value) of the oldest records, up to `max_bytes` (at least one)."""
        return await self._call(self._select, max_bytes)

    def _select(self, max_bytes: int) -> list[tuple[int, bytes, bytes]]:
        rows, size = [], 0
        cursor = self._db.execute("SELECT rowid, key, value FROM spool ORDER BY at, rowid")
        for row in cursor:
            if row[0] in self._forgotten:
                continue
            size += len(row[1]) + len(row[2])
            if rows and size > max_bytes:
                break
            rows.append(row)
        cursor.close()
        return rows

    async def delete(self, rowids: list[int], size: int) -> None:
        """Forget rows Kafka has acknowledged (or that were dropped). On a disk too full even
        for that, the rows are skipped from now on and deleted later: the spool still drains
        (a restart before then sends them again; the sinks store a record once)."""
        await self._call(self._delete, rowids)
        self.records -= len(rowids)
        self.bytes -= size

    def _delete(self, rowids: list[int]) -> None:
        rowids = [*self._forgotten, *rowids]
        if not self._write("DELETE FROM spool WHERE rowid = ?", [(r,) for r in rowids]):
            self._forgotten.update(rowids)
            return
        self._forgotten.clear()
        if self._db.execute("SELECT 1 FROM spool LIMIT 1").fetchone() is None:
            # Empty: give the pages back (a spool that held an outage may be large).
            with contextlib.suppress(sqlite3.Error, OSError):
                self._db.execute("VACUUM")

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)


def _disk_full(error: BaseException) -> bool:
    """Whether the disk refused a write: full (SQLITE_FULL, ENOSPC), over a quota, or over
    the file size limit (SQLite reports EFBIG as SQLITE_IOERR_WRITE)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def folder_of(spec: str) -> Path | None:
    """CAPTURE_SPOOL_DIR as a path; None (no spool) when empty."""
    return Path(os.path.expanduser(spec)).resolve() if spec else None
