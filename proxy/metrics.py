"""The proxy's Prometheus metrics, in a registry of their own.

A registry per proxy (instead of prometheus-client's global one) lets tests build many
addons in one process, and keeps the endpoint to what the proxy itself knows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from capture.endpoint import serve_metrics

# worker_lost: what a proxy worker held (queued or in flight) when it died; proxy/workers.py.
# spool_full: Kafka was out of reach and the spool at its cap or its disk full (proxy/spool.py).
DROP_REASONS = ("queue_full", "oversized", "kafka_error", "shutdown", "encode_error",
                "worker_lost", "spool_full")


def multiprocess() -> bool:
    """Whether metrics live in prometheus-client's shared files (PROMETHEUS_MULTIPROC_DIR,
    read when prometheus_client is first imported): the proxy runs as several workers."""
    from prometheus_client import values
    return values.ValueClass is not values.MutexValue


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess()
        self.captured = Counter(
            "tapline_proxy_captures",
            "Exchanges turned into capture records.",
            registry=self.registry,
        )
        self.produced = Counter(
            "tapline_proxy_produced",
            "Capture records Kafka acknowledged.",
            registry=self.registry,
        )
        self.dropped = Counter(
            "tapline_proxy_dropped",
            "Capture records given up, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_records = Gauge(
            "tapline_proxy_queue_records",
            "Records waiting between the hooks and the producer.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.queue_bytes = Gauge(
            "tapline_proxy_queue_bytes",
            "Bytes of the records waiting between the hooks and the producer.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "tapline_proxy_in_flight_records",
            "Records handed to the Kafka client and not yet acknowledged or failed.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.in_flight_bytes = Gauge(
            "tapline_proxy_in_flight_bytes",
            "Bytes of the records handed to the Kafka client and not yet acknowledged or failed.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.spool_records = Gauge(
            "tapline_proxy_spool_records",
            "Records in the on-disk spool (CAPTURE_SPOOL_DIR), waiting for Kafka.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.spool_bytes = Gauge(
            "tapline_proxy_spool_bytes",
            "Bytes of the records in the on-disk spool (keys and values).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.spool_recovered = Counter(
            "tapline_proxy_spool_recovered",
            "Records found in the spool as the proxy started (left by an earlier run).",
            registry=self.registry,
        )
        self.produce_latency = Histogram(
            "tapline_proxy_produce_latency_seconds",
            "From the hook to Kafka's acknowledgement.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.kafka_errors = Counter(
            "tapline_proxy_kafka_errors",
            "Errors from the Kafka client, by exception name.",
            ["error"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "tapline_proxy_workers",
            "Proxy worker processes running (PROXY_WORKERS).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.worker_restarts = Counter(
            "tapline_proxy_worker_restarts",
            "Proxy workers started again after they died.",
            registry=self.registry,
        )
        if not self.multiprocess:
            self.workers.set(1)  # this process is the proxy
        for reason in DROP_REASONS:
            self.dropped.labels(reason)  # every reason shows, at 0, from the start

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics over HTTP from a daemon thread (port 0 turns it off)."""
        self._server = serve_metrics(self.registry, host, port)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None

    def value(self, name: str, **labels: str) -> float:
        """One sample's value: value("tapline_proxy_dropped_total", reason="queue_full")."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def dropped_total(self) -> float:
        return sum(
            self.value("tapline_proxy_dropped_total", reason=reason) for reason in DROP_REASONS
        )
