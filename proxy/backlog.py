"""The records between the hooks and Kafka, and their accounting: the proxy's accumulator.

`offer()` is what the hooks call: synchronous, it returns at once, and a record that does not
fit is dropped and counted by reason. One bound, `CAPTURE_QUEUE_MAX_BYTES`, covers the records
queued and those handed to Kafka and not yet acknowledged, so the proxy's memory for captures
stays bounded wherever they sit. `take()` builds whole batches (aiokafka's `create_batch`):
what the queue holds, one batch per partition up to `KAFKA_MAX_BATCH_BYTES`; per record that is
a C append and a dict lookup, and the batches grow with the load. `settle()` counts Kafka's
answer for a batch. The sender (proxy/sender.py) and the spooler (proxy/spooler.py) work on
this state; proxy/producer.py puts them together.

Accounting holds at every moment: captured + recovered == produced + dropped + queued +
spooled + in flight, where recovered counts the records this process found in its spool as
it started, and spooled includes the records being written to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from proxy.metrics import ProxyMetrics
from proxy.settings import ProxySettings
from proxy.spool import Spool

log = logging.getLogger("proxy.producer")

DROP_LOG_INTERVAL_S = 10.0
PARTITION_CACHE_SIZE = 100_000
# Errors that refuse the record itself: trying again cannot help.
REFUSED = (MessageSizeTooLargeError, RecordTooLargeError)


class Batch:
    """Records on their way to one partition: the aiokafka builder, and what to count when
    Kafka answers."""

    __slots__ = ("builder", "bytes", "items", "queued_at", "rowids")

    def __init__(self, builder) -> None:
        self.builder = builder
        self.queued_at: list[float] = []
        self.bytes = 0
        # With a spool: the records themselves, to queue again if Kafka fails them.
        self.items: list[tuple[bytes, bytes]] | None = None
        self.rowids: list[int] = []  # a batch read from the spool: its rows

    def __len__(self) -> int:
        return len(self.queued_at)


def _nothing() -> None:
    pass


class Backlog:
    """The queue, the records in flight and in the spool, and their counts."""

    def __init__(self, settings: ProxySettings, metrics: ProxyMetrics,
                 spool: Spool | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = spool
        self.max_record_bytes = settings.max_record_bytes
        # A batch is one message to the broker, so it must fit the topic's cap as a record does.
        self.max_batch_bytes = min(settings.max_batch_bytes, settings.max_record_bytes)
        self.queue: deque[tuple[bytes, bytes, float]] = deque()
        self.queued_bytes = 0
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.spooling = 0  # taken from the queue, being written to the spool
        self.spooling_bytes = 0
        self.partition_of: dict[bytes, int] = {}
        self.partitions_seen: list[int] = []
        self.wakeup = asyncio.Event()  # the sender's: something to send
        self.spool_wakeup = asyncio.Event()  # the spooler's
        self.closing = False
        self.abandoned = False
        self.kafka_down = False
        self.last_drop_log = 0.0
        self.last_spool_log = 0.0
        if metrics.multiprocess:
            # One of several workers (proxy/workers.py): the supervisor reads the gauges
            # from shared files, so they are written as they change.
            self.publish = self.set_gauges
        else:
            # Read when /metrics is scraped, so the hot path sets no gauge.
            self.publish = _nothing
            metrics.queue_records.set_function(lambda: len(self.queue))
            metrics.queue_bytes.set_function(lambda: self.queued_bytes)
            metrics.in_flight.set_function(lambda: self.in_flight)
            metrics.in_flight_bytes.set_function(lambda: self.in_flight_bytes)
            metrics.spool_records.set_function(lambda: self.spooled)
            metrics.spool_bytes.set_function(lambda: self.spooled_bytes)

    def set_gauges(self) -> None:
        self.metrics.queue_records.set(len(self.queue))
        self.metrics.queue_bytes.set(self.queued_bytes)
        self.metrics.in_flight.set(self.in_flight)
        self.metrics.in_flight_bytes.set(self.in_flight_bytes)
        self.metrics.spool_records.set(self.spooled)
        self.metrics.spool_bytes.set(self.spooled_bytes)

    @property
    def spooled(self) -> int:
        return 0 if self.spool is None else self.spool.records + self.spooling

    @property
    def spooled_bytes(self) -> int:
        return 0 if self.spool is None else self.spool.bytes + self.spooling_bytes

    def offer(self, key: bytes, value: bytes) -> bool:
        """Queue one encoded record; False (and counted) when it had to be dropped."""
        if self.closing:
            return self.count_drop("shutdown")
        if len(value) > self.max_record_bytes:
            return self.count_drop("oversized")
        if (self.queued_bytes + self.in_flight_bytes + len(value)
                > self.settings.queue_max_bytes):
            return self.count_drop("queue_full")
        self.queue.append((key, value, time.monotonic()))
        self.queued_bytes += len(value)
        self.publish()
        self.wakeup.set()
        if self.spool is not None and (self.kafka_down or self.spooled):
            self.spool_wakeup.set()
        return True

    def drop(self, reason: str) -> None:
        """Count a record the caller gave up on before offering it."""
        self.count_drop(reason)

    @property
    def queued(self) -> int:
        return len(self.queue)

    def count_drop(self, reason: str, records: int = 1) -> bool:
        self.metrics.dropped.labels(reason).inc(records)
        now = time.monotonic()
        if now - self.last_drop_log > DROP_LOG_INTERVAL_S:
            self.last_drop_log = now
            log.warning(
                "dropping captures (%s); dropped so far: %d, queued: %d records, %d bytes",
                reason, self.metrics.dropped_total(), len(self.queue), self.queued_bytes,
            )
        return False

    def partition(self, key: bytes, partitions: list[int]) -> int:
        partition = self.partition_of.get(key)
        if partition is None:
            if len(self.partition_of) >= PARTITION_CACHE_SIZE:
                self.partition_of.clear()
            partition = DefaultPartitioner()(key, partitions, partitions)
            self.partition_of[key] = partition
        return partition

    def take(self, kafka: AIOKafkaProducer, partitions: list[int]) -> dict[int, Batch]:
        """Move queued records into one batch per partition, until the queue is empty or a
        partition's batch is full (the record that did not fit stays first in the queue)."""
        if partitions != self.partitions_seen:
            self.partitions_seen = partitions
            self.partition_of.clear()
        batches: dict[int, Batch] = {}
        queue = self.queue
        while queue:
            key, value, queued_at = queue[0]
            partition = self.partition(key, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = Batch(kafka.create_batch())
                if self.spool is not None:
                    batch.items = []
            size = len(value)
            if batch.bytes and batch.bytes + size > self.max_batch_bytes:
                break  # full; the first record of a batch goes in whatever its size
            if batch.builder.append(timestamp=None, key=key, value=value) is None:
                break
            queue.popleft()
            if batch.items is not None:
                batch.items.append((key, value))
            batch.queued_at.append(queued_at)
            batch.bytes += size
            self.queued_bytes -= size
            self.in_flight += 1
            self.in_flight_bytes += size
        self.publish()
        return {p: batch for p, batch in batches.items() if batch.queued_at}

    def settle(
        self, batch: Batch, error: BaseException | None, *, cancelled: bool = False
    ) -> None:
        if self.abandoned:  # already counted as dropped at shutdown
            return
        self.in_flight -= len(batch)
        self.in_flight_bytes -= batch.bytes
        self.publish()
        if (error is not None or cancelled) and batch.items is not None and not isinstance(
                error, REFUSED):
            # With a spool nothing Kafka failed is lost: back to the head of the queue, in
            # order, from where the spooler takes it while Kafka stays out of reach.
            if error is not None:
                self.count_error(error)
            for item, queued_at in zip(reversed(batch.items), reversed(batch.queued_at),
                                       strict=True):
                self.queue.appendleft((*item, queued_at))
            self.queued_bytes += batch.bytes
            self.kafka_down = True
            self.publish()
            self.spool_wakeup.set()
            return
        if error is not None or cancelled:
            if error is not None:
                self.count_error(error)
            self.count_drop("kafka_error", len(batch))
        else:
            self.kafka_down = False
            self.metrics.produced.inc(len(batch))
            now = time.monotonic()
            observe = self.metrics.produce_latency.observe
            for queued_at in batch.queued_at:
                observe(now - queued_at)

    def count_error(self, error: BaseException) -> None:
        self.metrics.kafka_errors.labels(type(error).__name__).inc()
