"""Ships capture records to Kafka from a background task, so that no hook ever waits on Kafka.

aiokafka's `send()` can wait up to `request_timeout_ms` for metadata or room in a batch, and
with idempotence on it retries forever while the broker is down (aiokafka issue #1101). So a
queue sits between the hooks and the producer: `offer()` is synchronous and returns at once,
and a record that does not fit is dropped and counted by reason. One bound,
`CAPTURE_QUEUE_MAX_BYTES`, covers the records queued and those handed to Kafka and not yet
acknowledged, so the proxy's memory for captures stays bounded wherever the backlog sits.

The background task builds whole batches itself (aiokafka's `create_batch`/`send_batch`): it
takes what the queue holds, one batch per partition up to `KAFKA_MAX_BATCH_BYTES`, and hands
each over with one future. Per record that is a C append and a dict lookup, instead of a
coroutine, a future and a callback per `send()`, and the batches grow with the load: the
producer keeps up while the proxy is busy instead of falling behind 16 KB at a time.

With a spool (CAPTURE_SPOOL_DIR, proxy/spool.py) records that cannot go to Kafka now go to
disk instead of waiting in memory until the queue is full: a second background task moves the
oldest queued records there while Kafka is out of reach, while the oldest has waited more than
SPOOL_AFTER_S, or while the queue is over half its bound. Once anything is in the spool,
everything goes through it, so records reach Kafka in the order they were captured (a batch
that failed in flight goes back to the head of the queue); rows are deleted once Kafka has
acknowledged them, so a record may arrive twice after a crash, never not at all. A record
Kafka refuses for itself (too large for the topic) is dropped, anything else is tried again.

Accounting holds at every moment: captured + recovered == produced + dropped + queued +
spooled + in flight, where recovered counts the records this process found in its spool as
it started, and spooled includes the records being written to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from proxy.metrics import DROP_REASONS, ProxyMetrics
from proxy.settings import ProxySettings
from proxy.spool import Spool, SpoolFull
from proxy.workers import worker_index
from topics import REQUEST_TIMEOUT_MS, ensure_topic, message_limit, partitions, record_cap

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
DROP_LOG_INTERVAL_S = 10.0
PARTITION_CACHE_SIZE = 100_000
SPOOL_AFTER_S = 2.0  # a record that has waited this long for Kafka goes to the spool
SPOOL_POLL_S = 0.5  # how often the spooler looks, between wake-ups
SPOOL_CHUNK_RECORDS = 2000
SPOOL_CHUNK_BYTES = 4 << 20
SPOOL_RETRY_S = 1.0
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


class CaptureProducer:
    """A bounded queue in front of an `AIOKafkaProducer` that (re)connects in the background."""

    def __init__(self, settings: ProxySettings, metrics: ProxyMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.max_record_bytes = settings.max_record_bytes
        # A batch is one message to the broker, so it must fit the topic's cap as a record does.
        self.max_batch_bytes = min(settings.max_batch_bytes, settings.max_record_bytes)
        self._queue: deque[tuple[bytes, bytes, float]] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._partition_of: dict[bytes, int] = {}
        self._partitions: list[int] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._kafka: AIOKafkaProducer | None = None
        self._closing = False
        self._abandoned = False
        self._last_drop_log = 0.0
        self._kafka_down = False
        self._last_spool_log = 0.0
        self.spool: Spool | None = None
        self._spooling = 0  # taken from the queue, being written to the spool
        self._spooling_bytes = 0
        self._spool_wakeup = asyncio.Event()
        self._spool_task: asyncio.Task | None = None
        if settings.spool_dir is not None:
            worker = worker_index()
            self.spool = Spool(settings.spool_dir, worker or 0,
                               1 if worker is None else settings.workers,
                               settings.spool_max_bytes)
        if metrics.multiprocess:
            # One of several workers (proxy/workers.py): the supervisor reads the gauges
            # from shared files, so they are written as they change.
            self._publish = self._set_gauges
        else:
            # Read when /metrics is scraped, so the hot path sets no gauge.
            self._publish = _nothing
            metrics.queue_records.set_function(lambda: len(self._queue))
            metrics.queue_bytes.set_function(lambda: self._queued_bytes)
            metrics.in_flight.set_function(lambda: self._in_flight)
            metrics.in_flight_bytes.set_function(lambda: self._in_flight_bytes)
            metrics.spool_records.set_function(lambda: self.spooled)
            metrics.spool_bytes.set_function(lambda: self.spooled_bytes)

    def _set_gauges(self) -> None:
        self.metrics.queue_records.set(len(self._queue))
        self.metrics.queue_bytes.set(self._queued_bytes)
        self.metrics.in_flight.set(self._in_flight)
        self.metrics.in_flight_bytes.set(self._in_flight_bytes)
        self.metrics.spool_records.set(self.spooled)
        self.metrics.spool_bytes.set(self.spooled_bytes)

    @property
    def spooled(self) -> int:
        return 0 if self.spool is None else self.spool.records + self._spooling

    @property
    def spooled_bytes(self) -> int:
        return 0 if self.spool is None else self.spool.bytes + self._spooling_bytes

    # --- the hook side: synchronous, never waits -------------------------------------------

    def offer(self, key: bytes, value: bytes) -> bool:
        """Queue one encoded record; False (and counted) when it had to be dropped."""
        if self._closing:
            return self._drop("shutdown")
        if len(value) > self.max_record_bytes:
            return self._drop("oversized")
        if (self._queued_bytes + self._in_flight_bytes + len(value)
                > self.settings.queue_max_bytes):
            return self._drop("queue_full")
        self._queue.append((key, value, time.monotonic()))
        self._queued_bytes += len(value)
        self._publish()
        self._wakeup.set()
        if self.spool is not None and (self._kafka_down or self.spooled):
            self._spool_wakeup.set()
        return True

    def drop(self, reason: str) -> None:
        """Count a record the caller gave up on before offering it."""
        self._drop(reason)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _drop(self, reason: str, records: int = 1) -> bool:
        self.metrics.dropped.labels(reason).inc(records)
        now = time.monotonic()
        if now - self._last_drop_log > DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "dropping captures (%s); dropped so far: %d, queued: %d records, %d bytes",
                reason, self.metrics.dropped_total(), len(self._queue), self._queued_bytes,
            )
        return False

    # --- the background side ---------------------------------------------------------------

    def start(self) -> None:
        """Start the background tasks. With a spool, open it first: a folder that cannot be
        used raises `SpoolUnusable`, and records left by an earlier run count as recovered."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            if self.spool is not None:
                found = self.spool.open()
                if found:
                    self.metrics.spool_recovered.inc(found)
                    log.info("capture spool: %d records from an earlier run wait for Kafka",
                             found)
                self._publish()
                self._spool_task = loop.create_task(self._spool_loop(), name="capture-spool")
            self._task = loop.create_task(self._run(), name="capture-producer")

    async def _run(self) -> None:
        while True:
            try:
                self._kafka = await self._connect()
                self._kafka_down = False
                await self._pump(self._kafka)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever went wrong, the producer must not die and leave the queue to fill.
                log.exception("capture producer failed; reconnecting")
                self._kafka_down = True
                if self._kafka is not None:
                    kafka, self._kafka = self._kafka, None
                    await kafka.stop()
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    async def _connect(self) -> AIOKafkaProducer:
        """Start a producer and make sure the topic exists, retrying until Kafka answers."""
        attempt = 0
        while True:
            kafka = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                acks="all",
                compression_type=self.settings.compression,
                linger_ms=self.settings.linger_ms,
                max_batch_size=self.max_batch_bytes,
                max_request_size=message_limit(self.max_record_bytes),
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                # Idempotence would retry forever while the broker is down; a record id is
                # unique and the sinks write idempotently, so a rare duplicate is harmless.
                enable_idempotence=False,
            )
            try:
                await kafka.start()
                await self._ensure_topic()
            except (KafkaError, OSError) as e:
                await kafka.stop()
                self._count_error(e)
                self._kafka_down = True
                self._spool_wakeup.set()
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                if attempt == 0:
                    log.warning("Kafka at %s is not reachable (%r); retrying",
                                self.settings.kafka_bootstrap_servers, e)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            log.info("producing captures to %s on %s",
                     self.settings.topic, self.settings.kafka_bootstrap_servers)
            return kafka

    async def _ensure_topic(self) -> None:
        """Create the topic when absent; fit our record cap under the topic's message cap."""
        limit = await ensure_topic(
            self.settings.kafka_bootstrap_servers,
            self.settings.topic,
            partitions=self.settings.topic_partitions,
            max_record_bytes=self.settings.max_record_bytes,
        )
        have = len(await partitions(self.settings.kafka_bootstrap_servers, self.settings.topic))
        if have < self.settings.topic_partitions:
            # Made earlier with fewer (by another setting, or on demand by a broker that makes
            # topics for any client): Kafka can add partitions, never remove them.
            log.warning("topic %s has %d partitions, CAPTURE_TOPIC_PARTITIONS asks for %d: "
                        "add them with kafka-topics.sh --alter --topic %s --partitions %d",
                        self.settings.topic, have, self.settings.topic_partitions,
                        self.settings.topic, self.settings.topic_partitions)
        if limit is not None and limit < message_limit(self.max_record_bytes):
            self.max_record_bytes = record_cap(limit)
            self.max_batch_bytes = min(self.max_batch_bytes, self.max_record_bytes)
            log.warning("topic %s takes messages up to %d bytes; records are capped at %d",
                        self.settings.topic, limit, self.max_record_bytes)

    async def _pump(self, kafka: AIOKafkaProducer) -> None:
        topic = self.settings.topic
        while True:
            if self.spooled:
                # Behind the spool: what is in it goes first, and the rest follows it there.
                if self.spool.records:
                    await self._send_spooled(kafka, topic)
                else:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                continue
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            partitions = sorted(await kafka.partitions_for(topic))
            batches = self._take(kafka, partitions)
            try:
                while batches:
                    partition, batch = batches.popitem()
                    await self._send(kafka, topic, partition, batch)
            except asyncio.CancelledError:
                raise  # close() counts what is still in flight
            except BaseException as e:
                for batch in batches.values():  # taken, never handed over
                    self._settle(batch, e)
                raise

    def _partition(self, key: bytes, partitions: list[int]) -> int:
        partition = self._partition_of.get(key)
        if partition is None:
            if len(self._partition_of) >= PARTITION_CACHE_SIZE:
                self._partition_of.clear()
            partition = DefaultPartitioner()(key, partitions, partitions)
            self._partition_of[key] = partition
        return partition

    def _take(self, kafka: AIOKafkaProducer, partitions: list[int]) -> dict[int, Batch]:
        """Move queued records into one batch per partition, until the queue is empty or a
        partition's batch is full (the record that did not fit stays first in the queue)."""
        if partitions != self._partitions:
            self._partitions = partitions
            self._partition_of.clear()
        batches: dict[int, Batch] = {}
        queue = self._queue
        while queue:
            key, value, queued_at = queue[0]
            partition = self._partition(key, partitions)
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
            self._queued_bytes -= size
            self._in_flight += 1
            self._in_flight_bytes += size
        self._publish()
        return {p: batch for p, batch in batches.items() if batch.queued_at}

    async def _send(
        self, kafka: AIOKafkaProducer, topic: str, partition: int, batch: Batch
    ) -> None:
        try:
            future = await kafka.send_batch(batch.builder, topic, partition=partition)
        except KafkaError as e:
            self._settle(batch, e)
            return
        except asyncio.CancelledError:
            raise  # close() counts what is still in flight
        except BaseException as e:  # counted, then the producer reconnects
            self._settle(batch, e)
            raise
        future.add_done_callback(
            lambda f, batch=batch: self._settle(
                batch, None if f.cancelled() else f.exception(), cancelled=f.cancelled()
            )
        )

    def _settle(
        self, batch: Batch, error: BaseException | None, *, cancelled: bool = False
    ) -> None:
        if self._abandoned:  # already counted as dropped at shutdown
            return
        self._in_flight -= len(batch)
        self._in_flight_bytes -= batch.bytes
        self._publish()
        if (error is not None or cancelled) and batch.items is not None and not isinstance(
                error, REFUSED):
            # With a spool nothing Kafka failed is lost: back to the head of the queue, in
            # order, from where the spooler takes it while Kafka stays out of reach.
            if error is not None:
                self._count_error(error)
            for item, queued_at in zip(reversed(batch.items), reversed(batch.queued_at),
                                       strict=True):
                self._queue.appendleft((*item, queued_at))
            self._queued_bytes += batch.bytes
            self._kafka_down = True
            self._publish()
            self._spool_wakeup.set()
            return
        if error is not None or cancelled:
            if error is not None:
                self._count_error(error)
            self._drop("kafka_error", len(batch))
        else:
            self._kafka_down = False
            self.metrics.produced.inc(len(batch))
            now = time.monotonic()
            observe = self.metrics.produce_latency.observe
            for queued_at in batch.queued_at:
                observe(now - queued_at)

    # --- the spool ---------------------------------------------------------------------------

    def _should_spool(self) -> bool:
        if self._kafka_down or self.spooled:
            return True  # out of reach, or behind what is already spooled (order)
        if self._queued_bytes + self._in_flight_bytes > self.settings.queue_max_bytes // 2:
            return True
        return time.monotonic() - self._queue[0][2] > SPOOL_AFTER_S

    async def _spool_loop(self) -> None:
        """Move the oldest queued records to the spool while they cannot go to Kafka."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spool_wakeup.wait(), SPOOL_POLL_S)
            self._spool_wakeup.clear()
            while self._queue and not self._closing and self._should_spool():
                await self._spool_some()

    async def _spool_some(self) -> None:
        """Write one chunk from the head of the queue to the spool; drop what does not fit."""
        items, size = [], 0
        queue = self._queue
        wall = time.time() - time.monotonic()  # queued_at (monotonic) as a time across runs
        while queue and len(items) < SPOOL_CHUNK_RECORDS and size < SPOOL_CHUNK_BYTES:
            key, value, queued_at = queue.popleft()
            items.append((key, value, wall + queued_at))
            size += len(value)
        self._queued_bytes -= size
        self._spooling += len(items)
        self._spooling_bytes += size
        written = 0
        try:
            written = await self.spool.append(items)
        except SpoolFull as e:
            self._spool_full(e)
        except Exception as e:  # the disk: whatever it raised, the records are counted
            self._spool_full(e)
        finally:
            self._spooling -= len(items)
            self._spooling_bytes -= size
            if written < len(items):
                self._drop("spool_full", len(items) - written)
            self._publish()
            self._wakeup.set()

    def _spool_full(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_spool_log > DROP_LOG_INTERVAL_S:
            self._last_spool_log = now
            log.warning("capture spool cannot take more (%s: %s)", type(error).__name__, error)

    async def _send_spooled(self, kafka: AIOKafkaProducer, topic: str) -> None:
        """Send the oldest spooled records, wait for Kafka's answers, and forget the rows it
        acknowledged (or refused for themselves). On any other error the rows stay, and are
        sent again after a pause."""
        partitions = sorted(await kafka.partitions_for(topic))
        if partitions != self._partitions:
            self._partitions = partitions
            self._partition_of.clear()
        rows = await self.spool.read(max(SPOOL_CHUNK_BYTES, self.max_batch_bytes))
        open_batches: dict[int, Batch] = {}
        batches: list[tuple[int, Batch]] = []
        for rowid, key, value in rows:
            partition = self._partition(key, partitions)
            batch = open_batches.get(partition)
            size = len(key) + len(value)
            if batch is not None and batch.bytes and batch.bytes + size > self.max_batch_bytes:
                batch = None
            if batch is None or batch.builder.append(timestamp=None, key=key,
                                                     value=value) is None:
                batch = open_batches[partition] = Batch(kafka.create_batch())
                batches.append((partition, batch))
                batch.builder.append(timestamp=None, key=key, value=value)
            batch.rowids.append(rowid)
            batch.bytes += size
        futures = []
        for partition, batch in batches:
            try:
                futures.append(await kafka.send_batch(batch.builder, topic,
                                                      partition=partition))
            except KafkaError as e:
                futures.append(e)
        results = await asyncio.gather(
            *(f for f in futures if not isinstance(f, BaseException)), return_exceptions=True)
        answers = iter(results)
        done, done_bytes, produced, refused, retry = [], 0, 0, 0, None
        for (_, batch), future in zip(batches, futures, strict=True):
            result = future if isinstance(future, BaseException) else next(answers)
            if isinstance(result, BaseException) and not isinstance(result, REFUSED):
                self._count_error(result)
                retry = result
                continue
            if isinstance(result, BaseException):
                self._count_error(result)
                refused += len(batch.rowids)
            else:
                produced += len(batch.rowids)
            done += batch.rowids
            done_bytes += batch.bytes
        if done:
            await self.spool.delete(done, done_bytes)
        if produced:
            self._kafka_down = False
            self.metrics.produced.inc(produced)
        if refused:
            self._drop("kafka_error", refused)
        self._publish()
        if retry is not None:
            self._kafka_down = True
            if self._last_spool_log < time.monotonic() - DROP_LOG_INTERVAL_S:
                self._last_spool_log = time.monotonic()
                log.warning("Kafka failed spooled captures (%r); they stay in the spool", retry)
            await asyncio.sleep(SPOOL_RETRY_S)

    def _count_error(self, error: BaseException) -> None:
        self.metrics.kafka_errors.labels(type(error).__name__).inc()

    # --- shutdown --------------------------------------------------------------------------

    async def close(self, timeout_s: float) -> dict[str, object]:
        """Flush what can be flushed within `timeout_s`, then count the rest as dropped.

        Offers stay open while the flush runs: mitmproxy still finishes the exchanges in
        progress as it stops, and their records can go out with the rest. Only when the queue is
        empty, or the time is up, does the queue close; what is left is dropped as `shutdown`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._queue or self._in_flight) and self._kafka is not None:
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        self._closing = True
        if self._spool_task is not None:
            self._spool_wakeup.set()  # it finishes the chunk it is writing, then stops
            await asyncio.gather(self._spool_task, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._kafka is not None:
            try:
                await asyncio.wait_for(self._kafka.stop(), max(0.1, deadline - loop.time()))
            except (TimeoutError, KafkaError) as e:
                log.warning("Kafka producer did not stop cleanly: %r", e)
        if self.spool is not None:
            await asyncio.sleep(0)  # batches Kafka failed as it stopped go back to the queue
            while self._queue:  # what Kafka did not take waits on disk for the next start
                await self._spool_some()
        left = len(self._queue) + self._in_flight
        self._abandoned = True
        if left:
            self.metrics.dropped.labels("shutdown").inc(left)
        self._queue.clear()
        self._queued_bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._publish()
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
            summary["spooled"] = float(self.spooled)
            summary["recovered"] = self.metrics.value("tapline_proxy_spool_recovered_total")
            await self.spool.close()
        worker = worker_index()
        # The supervisor of several workers logs the whole proxy's figures as the last line.
        log.info("capture producer stopped%s: %s",
                 "" if worker is None else f" (worker {worker})", summary)
        return summary


class RepeatFilter(logging.Filter):
    """Lets each distinct message through at most once per `interval_s`, then says how many
    copies it held back. While Kafka is down aiokafka logs an error for every failed
    connection attempt and every expired batch, hundreds a minute, which would bury the
    proxy's own lines (the drop counters already count every lost record)."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.levelno}:{record.msg}"
        now = time.monotonic()
        shown_at, held = self._last.get(key, (float("-inf"), 0))
        if now - shown_at < self.interval_s:
            self._last[key] = (shown_at, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval_s:g} s)"
        self._last[key] = (now, 0)
        if len(self._last) > 1000:  # messages are templates, but bound the memory anyway
            self._last.clear()
        return True


def quiet_kafka_client_logs(interval_s: float = 30.0) -> None:
    """Install `RepeatFilter` on aiokafka's loggers (the handlers are mitmproxy's), and keep
    aiokafka's debug lines from being made at all: mitmproxy logs at debug level, and aiokafka
    writes several debug lines per batch."""
    logging.getLogger("aiokafka").setLevel(logging.INFO)
    repeat = RepeatFilter(interval_s)
    for name in ("aiokafka.conn", "aiokafka.client", "aiokafka.cluster", "aiokafka.admin.client",
                 "aiokafka.producer.sender", "aiokafka.producer.producer"):
        logging.getLogger(name).addFilter(repeat)
