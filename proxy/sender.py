"""The proxy's sender: connects to Kafka (again and again, in the background), makes sure of
the topic, and hands over the batches the backlog builds, or the spool's oldest records.

aiokafka's `send()` can wait up to `request_timeout_ms` for metadata or room in a batch, and
with idempotence on it retries forever while the broker is down (aiokafka issue #1101), so
no hook calls it: the backlog (proxy/backlog.py) sits between. Batches go with one future
each (`send_batch`), instead of a coroutine, a future and a callback per record.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from capture.topics import REQUEST_TIMEOUT_MS, ensure_topic, message_limit, partitions, record_cap
from proxy.backlog import DROP_LOG_INTERVAL_S, REFUSED, Backlog, Batch

log = logging.getLogger("proxy.producer")

RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
SPOOL_READ_BYTES = 4 << 20  # the spool's records read and sent at a time
SPOOL_RETRY_S = 1.0


class Sender:
    """Feeds Kafka from a `Backlog` until cancelled."""

    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.settings = backlog.settings
        self.kafka: AIOKafkaProducer | None = None

    async def run(self) -> None:
        while True:
            try:
                self.kafka = await self.connect()
                self.backlog.kafka_down = False
                await self.pump(self.kafka)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever went wrong, the producer must not die and leave the queue to fill.
                log.exception("capture producer failed; reconnecting")
                self.backlog.kafka_down = True
                if self.kafka is not None:
                    kafka, self.kafka = self.kafka, None
                    await kafka.stop()
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    async def connect(self) -> AIOKafkaProducer:
        """Start a producer and make sure the topic exists, retrying until Kafka answers."""
        attempt = 0
        while True:
            kafka = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                acks="all",
                compression_type=self.settings.compression,
                linger_ms=self.settings.linger_ms,
                max_batch_size=self.backlog.max_batch_bytes,
                max_request_size=message_limit(self.backlog.max_record_bytes),
                request_timeout_ms=REQUEST_TIMEOUT_MS,
                # Idempotence would retry forever while the broker is down; a record id is
                # unique and the sinks write idempotently, so a rare duplicate is harmless.
                enable_idempotence=False,
            )
            try:
                await kafka.start()
                await self.ensure_topic()
            except (KafkaError, OSError) as e:
                await kafka.stop()
                self.backlog.count_error(e)
                self.backlog.kafka_down = True
                self.backlog.spool_wakeup.set()
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

    async def ensure_topic(self) -> None:
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
        if limit is not None and limit < message_limit(self.backlog.max_record_bytes):
            self.backlog.max_record_bytes = record_cap(limit)
            self.backlog.max_batch_bytes = min(self.backlog.max_batch_bytes,
                                               self.backlog.max_record_bytes)
            log.warning("topic %s takes messages up to %d bytes; records are capped at %d",
                        self.settings.topic, limit, self.backlog.max_record_bytes)

    async def pump(self, kafka: AIOKafkaProducer) -> None:
        topic = self.settings.topic
        while True:
            if self.backlog.spooled:
                # Behind the spool: what is in it goes first, and the rest follows it there.
                if self.backlog.spool.records:
                    await self.send_spooled(kafka, topic)
                else:
                    self.backlog.wakeup.clear()
                    await self.backlog.wakeup.wait()
                continue
            if not self.backlog.queue:
                self.backlog.wakeup.clear()
                await self.backlog.wakeup.wait()
                continue
            partitions = sorted(await kafka.partitions_for(topic))
            batches = self.backlog.take(kafka, partitions)
            try:
                while batches:
                    partition, batch = batches.popitem()
                    await self.send(kafka, topic, partition, batch)
            except asyncio.CancelledError:
                raise  # close() counts what is still in flight
            except BaseException as e:
                for batch in batches.values():  # taken, never handed over
                    self.backlog.settle(batch, e)
                raise

    async def send(
        self, kafka: AIOKafkaProducer, topic: str, partition: int, batch: Batch
    ) -> None:
        try:
            future = await kafka.send_batch(batch.builder, topic, partition=partition)
        except KafkaError as e:
            self.backlog.settle(batch, e)
            return
        except asyncio.CancelledError:
            raise  # close() counts what is still in flight
        except BaseException as e:  # counted, then the producer reconnects
            self.backlog.settle(batch, e)
            raise
        future.add_done_callback(
            lambda f, batch=batch: self.backlog.settle(
                batch, None if f.cancelled() else f.exception(), cancelled=f.cancelled()
            )
        )

    async def send_spooled(self, kafka: AIOKafkaProducer, topic: str) -> None:
        """Send the oldest spooled records, wait for Kafka's answers, and forget the rows it
        acknowledged (or refused for themselves). On any other error the rows stay, and are
        sent again after a pause."""
        partitions = sorted(await kafka.partitions_for(topic))
        if partitions != self.backlog.partitions_seen:
            self.backlog.partitions_seen = partitions
            self.backlog.partition_of.clear()
        rows = await self.backlog.spool.read(max(SPOOL_READ_BYTES, self.backlog.max_batch_bytes))
        open_batches: dict[int, Batch] = {}
        batches: list[tuple[int, Batch]] = []
        for rowid, key, value in rows:
            partition = self.backlog.partition(key, partitions)
            batch = open_batches.get(partition)
            size = len(key) + len(value)
            if (batch is not None and batch.bytes
                    and batch.bytes + size > self.backlog.max_batch_bytes):
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
                self.backlog.count_error(result)
                retry = result
                continue
            if isinstance(result, BaseException):
                self.backlog.count_error(result)
                refused += len(batch.rowids)
            else:
                produced += len(batch.rowids)
            done += batch.rowids
            done_bytes += batch.bytes
        if done:
            await self.backlog.spool.delete(done, done_bytes)
        if produced:
            self.backlog.kafka_down = False
            self.backlog.metrics.produced.inc(produced)
        if refused:
            self.backlog.count_drop("kafka_error", refused)
        self.backlog.publish()
        if retry is not None:
            self.backlog.kafka_down = True
            if self.backlog.last_spool_log < time.monotonic() - DROP_LOG_INTERVAL_S:
                self.backlog.last_spool_log = time.monotonic()
                log.warning("Kafka failed spooled captures (%r); they stay in the spool", retry)
            await asyncio.sleep(SPOOL_RETRY_S)
