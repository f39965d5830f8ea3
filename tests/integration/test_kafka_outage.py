"""Kafka stops in the middle of traffic: clients notice nothing and every capture is counted."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from stack.support import accounted, metric, read_topic, wait_until
from tests.integration.conftest import start_pipeline

pytestmark = pytest.mark.integration




def burst(pipeline, n: int) -> list[int]:
    def hello(_):
        return requests.get(pipeline.app_a + "/hello", timeout=10).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(hello, range(n)))


def test_kafka_down_mid_traffic_costs_clients_nothing(own_kafka, tmp_path):
    # A small queue, so that the outage also fills it and drops are counted.
    with start_pipeline(tmp_path, own_kafka.bootstrap_servers,
                        CAPTURE_QUEUE_MAX_BYTES=str(256 * 1024),
                        CAPTURE_MAX_RECORD_BYTES=str(128 * 1024)) as pipeline:
        assert burst(pipeline, 100) == [200] * 100
        own_kafka.stop()
        assert burst(pipeline, 600) == [200] * 600  # every request still succeeds
        # The proxy captures an exchange just after it sent the answer on (addon.py,
        # capture_soon): under load the last answers can reach the client first.
        wait_until(lambda: accounted(pipeline.metrics)[0] == 700, timeout=10,
                   what="every exchange captured")
        captured, rest, _ = accounted(pipeline.metrics)
        assert captured == 700
        assert rest == captured
        dropped_during_outage = metric(
            pipeline.metrics, "tapline_proxy_dropped_total", reason="queue_full")
        assert dropped_during_outage > 0

        own_kafka.start()
        # The producer finds the broker again by itself: new traffic reaches the topic.
        deadline = time.monotonic() + 60
        produced = metric(pipeline.metrics, "tapline_proxy_produced_total")
        while time.monotonic() < deadline:
            assert burst(pipeline, 10) == [200] * 10
            now = metric(pipeline.metrics, "tapline_proxy_produced_total")
            if now > produced + 10:
                break
            time.sleep(1)
        else:
            pytest.fail("no capture was produced after Kafka came back")
        captured, rest, _ = accounted(pipeline.metrics)
        assert rest == captured


def test_shutdown_flushes_and_reports(kafka, tmp_path):
    with start_pipeline(tmp_path, kafka.bootstrap_servers) as pipeline:
        assert burst(pipeline, 200) == [200] * 200
        assert pipeline.proxy.stop() == 0
        log = pipeline.proxy.log.read_text()
        assert "capture producer stopped" in log
        on_topic = read_topic(pipeline.bootstrap, pipeline.topic, expect=200)
        assert len(on_topic) == 200
        assert "'dropped': 0.0" in log and "'produced': 200.0" in log
