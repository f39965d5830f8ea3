"""Ships capture records to Kafka in the background, so that no hook ever waits on Kafka.

Three parts, as aiokafka splits its own producer (accumulator, sender):

- proxy/backlog.py: the queue the hooks offer to, the batches built from it, the records in
  flight and their accounting;
- proxy/sender.py: the Kafka connection, the topic, and the hand-over of batches;
- proxy/spooler.py with proxy/spool.py: the on-disk spool (CAPTURE_SPOOL_DIR) for what Kafka
  cannot take now.

`CaptureProducer` puts them together, starts them, and stops them (the flush at shutdown).
Accounting holds at every moment: captured + recovered == produced + dropped + queued +
spooled + in flight (proxy/backlog.py).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError

from proxy.backlog import Backlog
from proxy.metrics import DROP_REASONS, ProxyMetrics
from proxy.sender import Sender
from proxy.settings import ProxySettings
from proxy.spool import Spool
from proxy.spooler import Spooler
from proxy.workers import worker_index

log = logging.getLogger(__name__)


class CaptureProducer:
    """A bounded backlog in front of Kafka, a sender that (re)connects in the background, and
    with a spool, a spooler."""

    def __init__(self, settings: ProxySettings, metrics: ProxyMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        spool = None
        if settings.spool_dir is not None:
            worker = worker_index()
            spool = Spool(settings.spool_dir, worker or 0,
                          1 if worker is None else settings.workers, settings.spool_max_bytes)
        self.spool = spool
        self.backlog = Backlog(settings, metrics, spool)
        self.sender = Sender(self.backlog)
        self.spooler = Spooler(self.backlog) if spool is not None else None
        # The hooks' calls go straight to the backlog.
        self.offer = self.backlog.offer
        self.drop = self.backlog.drop
        self._task: asyncio.Task | None = None
        self._spool_task: asyncio.Task | None = None

    @property
    def max_record_bytes(self) -> int:
        """The record cap: the setting's, or lower when the topic takes less."""
        return self.backlog.max_record_bytes

    @property
    def queued(self) -> int:
        return self.backlog.queued

    @property
    def in_flight(self) -> int:
        return self.backlog.in_flight

    @property
    def spooled(self) -> int:
        return self.backlog.spooled

    def start(self) -> None:
        """Start the background tasks. With a spool, open it first: a folder that cannot be
        used raises `SpoolUnusable`, and records left by an earlier run count as recovered."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        if self.spooler is not None:
            found = self.spool.open()
            if found:
                self.metrics.spool_recovered.inc(found)
                log.info("capture spool: %d records from an earlier run wait for Kafka", found)
            self.backlog.publish()
            self._spool_task = loop.create_task(self.spooler.run(), name="capture-spool")
        self._task = loop.create_task(self.sender.run(), name="capture-producer")

    async def close(self, timeout_s: float) -> dict[str, object]:
        """Flush what can be flushed within `timeout_s`; spool the rest, or count it dropped.

        Offers stay open while the flush runs: mitmproxy still finishes the exchanges in
        progress as it stops, and their records can go out with the rest. Only when the queue is
        empty, or the time is up, does the queue close; what is left goes to the spool, or
        without one is dropped as `shutdown`.
        """
        backlog, sender = self.backlog, self.sender
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (backlog.queue or backlog.in_flight) and sender.kafka is not None:
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        backlog.closing = True
        if self._spool_task is not None:
            backlog.spool_wakeup.set()  # it finishes the chunk it is writing, then stops
            await asyncio.gather(self._spool_task, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if sender.kafka is not None:
            try:
                await asyncio.wait_for(sender.kafka.stop(), max(0.1, deadline - loop.time()))
            except (TimeoutError, KafkaError) as e:
                log.warning("Kafka producer did not stop cleanly: %r", e)
        if self.spooler is not None:
            await asyncio.sleep(0)  # batches Kafka failed as it stopped go back to the queue
            while backlog.queue:  # what Kafka did not take waits on disk for the next start
                await self.spooler.spool_some()
        left = len(backlog.queue) + backlog.in_flight
        backlog.abandoned = True
        if left:
            self.metrics.dropped.labels("shutdown").inc(left)
        backlog.queue.clear()
        backlog.queued_bytes = 0
        backlog.in_flight = 0
        backlog.in_flight_bytes = 0
        backlog.publish()
        summary = {
            "captured": self.metrics.value("tapline_proxy_captures_total"),
            "produced": self.metrics.value("tapline_proxy_produced_total"),
            "dropped": self.metrics.dropped_total(),
            "dropped_by_reason": {
                reason: self.metrics.value("tapline_proxy_dropped_total", reason=reason)
                for reason in DROP_REASONS
            },
            "dropped_at_shutdown": float(left),
        }
        if self.spool is not None:
            summary["spooled"] = float(backlog.spooled)
            summary["recovered"] = self.metrics.value("tapline_proxy_spool_recovered_total")
            await self.spool.close()
        worker = worker_index()
        # The supervisor of several workers logs the whole proxy's figures as the last line.
        log.info("capture producer stopped%s: %s",
                 "" if worker is None else f" (worker {worker})", summary)
        return summary
