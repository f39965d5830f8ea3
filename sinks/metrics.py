"""A sink's Prometheus metrics, in a registry of its own (one per sink process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from capture.endpoint import serve_metrics


class SinkMetrics:
    def __init__(self, sink: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"sink": sink}
        self.consumed = Counter(
            "tapline_sink_consumed", "Records read from the topic.", ["sink"],
            registry=self.registry).labels(**labels)
        self.written = Counter(
            "tapline_sink_written", "Records durably written (offsets committed).", ["sink"],
            registry=self.registry).labels(**labels)
        self.dead_lettered = Counter(
            "tapline_sink_dead_lettered", "Records sent to the dead-letter topic.", ["sink"],
            registry=self.registry).labels(**labels)
        self.retries = Counter(
            "tapline_sink_write_retries", "Writes retried after a transient error.", ["sink"],
            registry=self.registry).labels(**labels)
        self.lost_batches = Counter(
            "tapline_sink_lost_batches", "Batches dropped uncommitted because the group gave "
            "their partitions to another member while they were written.", ["sink"],
            registry=self.registry).labels(**labels)
        self.batch_seconds = Histogram(
            "tapline_sink_batch_seconds", "Time to write a batch and commit it.", ["sink"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry).labels(**labels)
        self._lag = Gauge(
            "tapline_sink_consumer_lag", "Records on the topic not yet committed by this sink.",
            ["sink", "partition"], registry=self.registry)
        self.sink = sink
        self._server = None

    def lag(self, partition: int, value: int) -> None:
        self._lag.labels(self.sink, str(partition)).set(value)

    def serve(self, host: str, port: int) -> None:
        self._server = serve_metrics(self.registry, host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"sink": self.sink, **labels}) or 0.0
