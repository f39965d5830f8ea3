"""The producer's pieces that need no Kafka: its log filter and its count at a stop."""

from __future__ import annotations

import asyncio
import logging

from proxy.kafka_logs import RepeatFilter
from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer
from proxy.settings import ProxySettings


def record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_message_shows_once_per_interval_then_says_how_many(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("proxy.kafka_logs.time.monotonic", lambda: now[0])
    repeat = RepeatFilter(interval_s=30.0)
    shown = [repeat.filter(record("Unable connect to %r: %r", "node", n)) for n in range(50)]
    assert shown == [True] + [False] * 49
    assert repeat.filter(record("another message"))  # other messages are not held back
    now[0] += 30.0
    again = record("Unable connect to %r: %r", "node", 50)
    assert repeat.filter(again)
    assert again.getMessage().endswith("(and 49 more like it in the last 30 s)")


def test_with_kafka_unreachable_the_stop_counts_what_was_queued_by_reason():
    settings = ProxySettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                                       "CAPTURE_SHUTDOWN_TIMEOUT_S": "0.3"})
    metrics = ProxyMetrics()

    async def scenario():
        producer = CaptureProducer(settings, metrics)
        producer.start()
        assert producer.offer(b"k", b"one") and producer.offer(b"k", b"two")
        summary = await producer.close(settings.shutdown_timeout_s)
        return summary, producer.offer(b"k", b"after the stop")

    summary, late = asyncio.run(scenario())
    assert not late
    assert summary["dropped_at_shutdown"] == 2
    assert summary["dropped_by_reason"]["shutdown"] == 2
    assert summary["dropped"] == sum(summary["dropped_by_reason"].values()) == 2
    # an offer after the stop is refused and counted too
    assert metrics.value("tapline_proxy_dropped_total", reason="shutdown") == 3
    assert summary["captured"] == 0  # the addon counts captures; here nobody did


class _Builder:
    def append(self, *, timestamp, key, value):
        return object()  # aiokafka returns the record's metadata; anything but None


class _RefusingClient:
    """Stands in for the Kafka client at one point only: its send_batch fails unexpectedly."""

    def create_batch(self):
        return _Builder()

    async def send_batch(self, builder, topic, *, partition):
        raise RuntimeError("unexpected")


def test_a_batch_refused_with_an_unexpected_error_is_counted_not_lost():
    settings = ProxySettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    metrics = ProxyMetrics()
    producer = CaptureProducer(settings, metrics)
    assert producer.offer(b"k", b"one") and producer.offer(b"k", b"two")
    client = _RefusingClient()
    (batch,) = producer.backlog.take(client, [0]).values()
    assert (producer.queued, producer.in_flight) == (0, 2)

    async def send():
        await producer.sender.send(client, "topic", 0, batch)

    try:
        asyncio.run(send())
    except RuntimeError:
        pass
    else:
        raise AssertionError("the error should reach the producer task, which reconnects")
    assert producer.in_flight == 0 and producer.backlog.in_flight_bytes == 0
    assert metrics.value("tapline_proxy_dropped_total", reason="kafka_error") == 2
