"""The proxy's spooler: moves the oldest queued records to the on-disk spool (proxy/spool.py)
while they cannot go to Kafka: while it is out of reach, while the oldest record has waited
more than SPOOL_AFTER_S, or while the queue is over half its bound.

Once anything is in the spool everything goes through it, so records reach Kafka in the
order they were captured (a batch that failed in flight goes back to the head of the queue);
the sender deletes rows once Kafka has acknowledged them, so a record may arrive twice after
a crash, never not at all. Never on the hook's path: a background task, and the disk's work
on the spool's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from proxy.backlog import DROP_LOG_INTERVAL_S, Backlog
from proxy.spool import SpoolFull

log = logging.getLogger("proxy.producer")

SPOOL_AFTER_S = 2.0  # a record that has waited this long for Kafka goes to the spool
SPOOL_POLL_S = 0.5  # how often the spooler looks, between wake-ups
SPOOL_CHUNK_RECORDS = 2000
SPOOL_CHUNK_BYTES = 4 << 20


class Spooler:
    """Moves records from a `Backlog`'s queue to its spool, until the backlog closes."""

    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.settings = backlog.settings
        self.spool = backlog.spool

    def should_spool(self) -> bool:
        if self.backlog.kafka_down or self.backlog.spooled:
            return True  # out of reach, or behind what is already spooled (order)
        backlog = self.backlog
        if backlog.queued_bytes + backlog.in_flight_bytes > self.settings.queue_max_bytes // 2:
            return True
        return time.monotonic() - self.backlog.queue[0][2] > SPOOL_AFTER_S

    async def run(self) -> None:
        """Move the oldest queued records to the spool while they cannot go to Kafka."""
        while not self.backlog.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.backlog.spool_wakeup.wait(), SPOOL_POLL_S)
            self.backlog.spool_wakeup.clear()
            while self.backlog.queue and not self.backlog.closing and self.should_spool():
                await self.spool_some()

    async def spool_some(self) -> None:
        """Write one chunk from the head of the queue to the spool; drop what does not fit."""
        items, size = [], 0
        queue = self.backlog.queue
        wall = time.time() - time.monotonic()  # queued_at (monotonic) as a time across runs
        while queue and len(items) < SPOOL_CHUNK_RECORDS and size < SPOOL_CHUNK_BYTES:
            key, value, queued_at = queue.popleft()
            items.append((key, value, wall + queued_at))
            size += len(value)
        self.backlog.queued_bytes -= size
        self.backlog.spooling += len(items)
        self.backlog.spooling_bytes += size
        written = 0
        try:
            written = await self.spool.append(items)
        except SpoolFull as e:
            self._full(e)
        except Exception as e:  # the disk: whatever it raised, the records are counted
            self._full(e)
        finally:
            self.backlog.spooling -= len(items)
            self.backlog.spooling_bytes -= size
            if written < len(items):
                self.backlog.count_drop("spool_full", len(items) - written)
            self.backlog.publish()
            self.backlog.wakeup.set()

    def _full(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self.backlog.last_spool_log > DROP_LOG_INTERVAL_S:
            self.backlog.last_spool_log = now
            log.warning("capture spool cannot take more (%s: %s)", type(error).__name__, error)
