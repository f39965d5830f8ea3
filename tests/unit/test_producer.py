"""The producer's pieces that need no Kafka: its log filter and its count at a stop."""

from __future__ import annotations

import asyncio
import logging

from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer, RepeatFilter
from proxy.settings import ProxySettings


def record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_message_shows_once_per_interval_then_says_how_many(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("proxy.producer.time.monotonic", lambda: now[0])
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
