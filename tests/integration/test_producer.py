"""The producer against a real broker: records offered while it stops still go out."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer
from proxy.settings import ProxySettings
from tests.support import read_topic, wait_until

pytestmark = pytest.mark.integration


def test_offers_made_while_it_flushes_go_out_with_the_rest(kafka):
    topic = f"flush-{uuid.uuid4().hex[:8]}"
    settings = ProxySettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic,
        # Batches wait a second in the client, so the stop finds records in flight.
        "KAFKA_LINGER_MS": "1000", "CAPTURE_SHUTDOWN_TIMEOUT_S": "10"})
    metrics = ProxyMetrics()

    async def scenario():
        producer = CaptureProducer(settings, metrics)
        producer.start()
        await asyncio.to_thread(wait_until, lambda: producer._kafka is not None, timeout=30,
                                what="the producer connected")
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
