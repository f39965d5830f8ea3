"""The producer against a real broker: batches, partitions, the bound, the stop."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from capture.topics import ensure_topic
from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer
from proxy.settings import ProxySettings
from stack.support import read_topic, wait_until

pytestmark = pytest.mark.integration


async def connected(settings: ProxySettings, metrics: ProxyMetrics) -> CaptureProducer:
    """A started producer, once it has reached Kafka."""
    producer = CaptureProducer(settings, metrics)
    producer.start()
    await asyncio.to_thread(wait_until, lambda: producer.sender.kafka is not None, timeout=30,
                            what="the producer connected")
    return producer


def test_offers_made_while_it_flushes_go_out_with_the_rest(kafka):
    topic = f"flush-{uuid.uuid4().hex[:8]}"
    settings = ProxySettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic,
        # Batches wait a second in the client, so the stop finds records in flight.
        "KAFKA_LINGER_MS": "1000", "CAPTURE_SHUTDOWN_TIMEOUT_S": "10"})
    metrics = ProxyMetrics()

    async def scenario():
        producer = await connected(settings, metrics)
        assert producer.offer(b"k", b"before the stop")
        closing = asyncio.create_task(producer.close(settings.shutdown_timeout_s))
        await asyncio.sleep(0.2)
        assert not closing.done()  # still flushing: the first record lingers
        taken = producer.offer(b"k", b"during the flush")
        summary = await closing
        return taken, summary, producer.offer(b"k", b"after the stop")

    taken, summary, late = asyncio.run(scenario())
    assert taken and not late
    assert summary["produced"] == 2
    assert summary["dropped_by_reason"]["shutdown"] == 0
    assert metrics.value("tapline_proxy_dropped_total", reason="shutdown") == 1  # the late one
    assert summary["dropped_at_shutdown"] == 0
    values = sorted(value for _key, value in read_topic(kafka.bootstrap_servers, topic, expect=2))
    assert values == [b"before the stop", b"during the flush"]


def test_records_go_out_in_batches_each_key_on_its_partition_in_order(kafka):
    """Small batches, so that 3,000 records from 40 clients take many of them: every record
    arrives once, on the partition aiokafka's own partitioner gives its key (the one `send()`
    would use), and each client's records keep the order they were offered in."""
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    settings = ProxySettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic,
        "CAPTURE_TOPIC_PARTITIONS": "4", "KAFKA_MAX_BATCH_BYTES": "4096"})
    metrics = ProxyMetrics()
    keys = [f"10.0.0.{n}".encode() for n in range(40)]
    offered = [(keys[n % 40], f"{n:06d}".encode() * 20) for n in range(3000)]

    async def scenario():
        producer = await connected(settings, metrics)
        for n, (key, value) in enumerate(offered):
            assert producer.offer(key, value)
            if n % 100 == 0:
                await asyncio.sleep(0)  # let the producer take what has queued so far
        return await producer.close(10.0)

    summary = asyncio.run(scenario())
    assert summary["produced"] == 3000 and summary["dropped"] == 0

    async def read():
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            got: list[tuple[int, bytes, bytes]] = []
            while len(got) < 3000:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
                for tp, records in batch.items():
                    got += [(tp.partition, r.key, r.value) for r in records]
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(read())
    assert sorted(value for _p, _k, value in got) == sorted(value for _k, value in offered)
    partitions = [0, 1, 2, 3]
    for key in keys:
        on = {p for p, k, _v in got if k == key}
        assert on == {DefaultPartitioner()(key, partitions, partitions)}
        assert [v for _p, k, v in got if k == key] == [v for k, v in offered if k == key]
    assert len({p for p, _k, _v in got}) > 1


def test_records_handed_to_kafka_count_against_the_queue_bound(kafka):
    """CAPTURE_QUEUE_MAX_BYTES bounds what waits in the queue and what Kafka has not yet
    acknowledged, together: with batches lingering in the client, the queue alone is empty
    and yet an offer over the bound is refused."""
    topic = f"bound-{uuid.uuid4().hex[:8]}"
    settings = ProxySettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic,
        "CAPTURE_MAX_RECORD_BYTES": str(64 << 10), "CAPTURE_QUEUE_MAX_BYTES": str(100 << 10),
        "KAFKA_LINGER_MS": "2000"})
    metrics = ProxyMetrics()

    async def scenario():
        producer = await connected(settings, metrics)
        assert producer.offer(b"k", b"x" * (60 << 10))
        await asyncio.sleep(0.3)  # taken into a batch, which lingers for 2 s
        state = (producer.queued, producer.in_flight, producer.backlog.in_flight_bytes)
        refused = not producer.offer(b"k", b"y" * (60 << 10))
        summary = await producer.close(10.0)
        return state, refused, summary

    state, refused, summary = asyncio.run(scenario())
    assert state == (0, 1, 60 << 10)
    assert refused
    assert summary["produced"] == 1
    assert summary["dropped_by_reason"]["queue_full"] == 1
    assert metrics.value("tapline_proxy_in_flight_bytes") == 0


def test_a_topic_with_fewer_partitions_than_asked_is_named_in_a_warning(kafka, caplog):
    topic = f"narrow-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topic(kafka.bootstrap_servers, topic, partitions=1,
                             max_record_bytes=1 << 20))
    settings = ProxySettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic,
        "CAPTURE_TOPIC_PARTITIONS": "3"})

    async def scenario():
        producer = await connected(settings, ProxyMetrics())
        await producer.close(5)

    with caplog.at_level(logging.WARNING, logger="proxy.producer"):
        asyncio.run(scenario())
    warned = [r.getMessage() for r in caplog.records if "partitions" in r.getMessage()]
    assert warned == [f"topic {topic} has 1 partitions, CAPTURE_TOPIC_PARTITIONS asks for 3: "
                      f"add them with kafka-topics.sh --alter --topic {topic} --partitions 3"]
