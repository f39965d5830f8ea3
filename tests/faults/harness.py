"""The whole pipeline on real services, with a handle on every part a fault scenario breaks,
and the figures of a run: what the clients saw, what the proxy counted, what each store holds.

Apps and proxy come from tests.integration's start_pipeline; the two sinks run as their own
processes (`python -m sinks timescale|lake`) against a PostgreSQL database and a moto S3
server that the lake sink reaches through a TcpForwarder, so S3 can be made unreachable.
"""

from __future__ import annotations

import ast
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from capture import decode, parse_time
from proxy.metrics import DROP_REASONS
from stack.support import (
    Process,
    read_topic,
    sample,
    scrape,
    topic_exists,
    topic_size,
    wait_for_port,
    wait_until,
)
from tests.faults.load import Tally
from tests.integration.conftest import Pipeline, start_pipeline
from tests.sinks.conftest import SinkProcess
from tests.sinks.lake_fixtures import (
    TcpForwarder,
    committed,
    copy_group,
    lake_env,
    lake_rows,
    read_lake,
)

SINKS = ("timescale", "lake")
# The scenarios' shape (tests/faults/test_*.py).
OUTAGE_S = 30.0  # how long Kafka, and S3, stay unreachable
RATE = 60.0  # requests a second, from 4 clients in all
LEAD_S = 3.0  # load before the fault
TRAIL_S = 3.0  # load after the part is back
# Short backoffs and timeouts, so that a sink notices a store's return within a second or two.
SINK_ENV = {"SINK_RETRY_MAX_BACKOFF_S": "1"}
LAKE_ENV = {"SINK_BATCH_MAX_AGE_MS": "500", "S3_TIMEOUT_S": "2"}


@dataclass
class ProxyCount:
    """The proxy's accounting: captured + recovered (found in its spool at start) ==
    produced + dropped + queued + spooled + in flight."""

    captured: int
    produced: int
    dropped: dict[str, int]
    queued: int
    in_flight: int
    spooled: int = 0
    recovered: int = 0

    @property
    def settled(self) -> bool:
        return (self.queued == self.in_flight == self.spooled == 0
                and self.captured + self.recovered
                == self.produced + sum(self.dropped.values()))


def proxy_count(metrics_url: str) -> ProxyCount:
    samples = scrape(metrics_url)
    return ProxyCount(
        captured=int(sample(samples, "tapline_proxy_captures_total")),
        produced=int(sample(samples, "tapline_proxy_produced_total")),
        dropped={reason: int(sample(samples, "tapline_proxy_dropped_total", reason=reason))
                 for reason in DROP_REASONS},
        queued=int(sample(samples, "tapline_proxy_queue_records")),
        in_flight=int(sample(samples, "tapline_proxy_in_flight_records")),
        spooled=int(sample(samples, "tapline_proxy_spool_records")),
        recovered=int(sample(samples, "tapline_proxy_spool_recovered_total")),
    )


def final_count(proxy_log: Path) -> dict[str, float]:
    """The figures the proxy logs as its producer stops: captured, produced, dropped (all
    reasons), dropped_by_reason and dropped_at_shutdown (what was still queued or in
    flight)."""
    for line in reversed(proxy_log.read_text(errors="replace").splitlines()):
        _, found, summary = line.partition("capture producer stopped: ")
        if found:
            return ast.literal_eval(summary.strip())
    raise AssertionError(f"the proxy logged no final figures in {proxy_log}")


@dataclass
class Stores:
    """Capture ids in each place, with how many times each is there: on the topic, rows in
    the database, rows of the lake as its readers see it (the DuckDB view `captures`), and
    copies in the lake's objects (a record can be in two after a crash or a stalled sink;
    readers count it once)."""

    topic: Counter
    db: Counter
    lake: Counter
    started: dict[str, datetime]  # when each request on the topic began, by capture id
    lake_objects: Counter = field(default_factory=Counter)


def duplicates(ids: Counter) -> int:
    """Copies beyond the first: count(*) - count(DISTINCT id)."""
    return sum(ids.values()) - len(ids)


@dataclass
class Figures:
    """One scenario's line in the summary."""

    scenario: str
    tally: Tally
    captured: int
    dropped: dict[str, int]
    stores: Stores
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        dropped = {reason: n for reason, n in self.dropped.items() if n}
        shown = (f"{sum(dropped.values())} {{"
                 + ", ".join(f"{reason}: {n}" for reason, n in dropped.items()) + "}"
                 if dropped else "0")
        return (f"{self.scenario} | sent {self.tally.sent} | ok {self.tally.ok} "
                f"| captured {self.captured} | rows {len(self.stores.db)} "
                f"| lake {len(self.stores.lake)} | dropped {shown} "
                f"| duplicates: db {duplicates(self.stores.db)}, "
                f"lake {duplicates(self.stores.lake)}"
                + "".join(f" | {note}" for note in self.notes))


def db_ids(url: str) -> Counter:
    with psycopg.connect(url) as conn:
        return Counter(dict(conn.execute(
            "SELECT capture_id::text, count(*) FROM http_requests GROUP BY 1").fetchall()))


class FullPipeline:
    """Apps, proxy, Kafka, both sinks and both stores, with a handle on each."""

    def __init__(self, pipeline: Pipeline, database: str, s3_url: str, bucket: str,
                 forwarder: TcpForwarder, lake_settings: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.database = database
        self.s3_url = s3_url
        self.bucket = bucket
        self.forwarder = forwarder
        bootstrap, topic = pipeline.bootstrap, pipeline.topic
        self.envs = {
            "timescale": {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CAPTURE_TOPIC": topic,
                          "DATABASE_URL": database, "SINK_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
                          **SINK_ENV},
            "lake": lake_env(bootstrap, topic, forwarder.url, bucket,
                             **(SINK_ENV | LAKE_ENV | (lake_settings or {}))),
        }
        self.sinks: dict[str, SinkProcess] = {}
        self.consumed = Counter()  # records read by the processes of each sink that are gone

    @property
    def metrics(self) -> str:
        return self.pipeline.metrics

    def start_sinks(self, *names: str) -> None:
        """Start these sinks side by side; return once each serves its metrics."""
        for name in names:
            self.sinks[name] = SinkProcess(name, self.pipeline.workdir, self.envs[name])
            Process.start(self.sinks[name])  # no port to wait for yet
        for name in names:
            sink = self.sinks[name]
            wait_for_port(sink.metrics_port, sink.proc, sink.log, timeout=60)

    def start_replica(self, key: str, of: str, **env: str) -> SinkProcess:
        """Another process of sink `of`, in its consumer group, with these settings changed;
        known as `key` (its metrics still say sink=`of`)."""
        sink = SinkProcess(of, self.pipeline.workdir, self.envs[of] | env)
        self.sinks[key] = sink.start()
        return sink

    def wait_assigned(self, name: str) -> None:
        sink = self.sinks[name]
        wait_until(lambda: "assigned" in sink.log.read_text(errors="replace"), timeout=60,
                   what=f"the {name} sink to be given the topic's partitions")

    def kill_sink(self, name: str) -> None:
        """SIGKILL: no last batch, no last commit. What the sink had read by then is kept,
        to tell how much its successors read again."""
        self.consumed[name] += self.consumed_now(name)
        self.sinks[name].kill()

    def consumed_now(self, name: str) -> int:
        return int(sample(self.sinks[name].metrics(), "tapline_sink_consumed_total", sink=name))

    def read_again(self, name: str, distinct: int) -> int:
        """Records that the sink's processes read more than once in all, at least: a killed
        process may have read more after its last count, so the sum of the counts can even
        fall short of the distinct records; then all that is known is 0 or more."""
        return max(0, self.consumed[name] + self.consumed_now(name) - distinct)

    def restart_sink(self, name: str, *, copy: bool) -> SinkProcess:
        """Start the sink again. With `copy`, in a new consumer group holding the killed
        group's commits: the same records, without waiting for Kafka to expire the killed
        member (its 10 s session timeout) before the partitions are given out again."""
        if copy:
            env = self.envs[name]
            env["SINK_GROUP_ID"] = copy_group(self.pipeline.bootstrap, env["SINK_GROUP_ID"],
                                              self.pipeline.topic)
        self.start_sinks(name)
        return self.sinks[name]

    def written(self, name: str) -> int:
        """Records the running process of this sink has written and committed."""
        return int(sample(self.sinks[name].metrics(), "tapline_sink_written_total", sink=name))

    def write_retries(self, name: str) -> int:
        return int(sample(self.sinks[name].metrics(), "tapline_sink_write_retries_total",
                          sink=name))

    def settle_proxy(self, timeout: float = 60.0) -> ProxyCount:
        """The proxy's count once nothing is queued or in flight any more."""
        return wait_until(lambda: (c := proxy_count(self.metrics)).settled and c,
                          timeout=timeout, what="the proxy to produce or drop every capture")

    def wait_caught_up(self, timeout: float = 90.0) -> int:
        """Wait until each sink has committed every record on the topic; their number."""
        bootstrap, topic = self.pipeline.bootstrap, self.pipeline.topic
        assert topic_exists(bootstrap, topic), f"Kafka knows no partition of topic {topic}"
        size = topic_size(bootstrap, topic)
        for name in SINKS:
            group = self.envs[name]["SINK_GROUP_ID"]
            wait_until(lambda g=group: committed(self.pipeline.bootstrap, g,
                                                 self.pipeline.topic) >= size,
                       timeout=timeout, interval=0.5,
                       what=f"the {name} sink to commit all {size} records")
        return size

    def stores(self, size: int) -> Stores:
        """Every capture id on the topic, in the database and in the lake."""
        on_topic = read_topic(self.pipeline.bootstrap, self.pipeline.topic, expect=size,
                              timeout=60, settle=0.5)
        records = [decode(value) for _key, value in on_topic]
        return Stores(
            topic=Counter(record.id for record in records),
            db=db_ids(self.database),
            lake=lake_rows(self.s3_url, self.bucket),
            started={record.id: parse_time(record.started_at) for record in records},
            lake_objects=read_lake(self.s3_url, self.bucket).ids(),
        )

    def stop_sinks(self) -> None:
        for name, sink in self.sinks.items():
            if sink.proc is not None and sink.proc.poll() is None:
                assert sink.stop() == 0, f"the {name} sink did not stop cleanly"


@contextlib.contextmanager
def full_pipeline(workdir: Path, bootstrap: str, database: str, s3_url: str, bucket: str,
                  lake_settings: dict[str, str] | None = None,
                  *, proxy_prefix: Sequence[str] = (), **proxy_env: str) -> Iterator[FullPipeline]:
    """Start everything, wait until both sinks hold the topic's partitions, stop it all after."""
    target = urlsplit(s3_url)
    forwarder = TcpForwarder(target.hostname, target.port)
    try:
        with start_pipeline(workdir, bootstrap, proxy_prefix=proxy_prefix,
                            **proxy_env) as pipeline:
            wait_until(lambda: topic_exists(bootstrap, pipeline.topic), timeout=60,
                       what=f"the proxy to create topic {pipeline.topic}")
            full = FullPipeline(pipeline, database, s3_url, bucket, forwarder, lake_settings)
            try:
                full.start_sinks(*SINKS)
                for name in SINKS:
                    full.wait_assigned(name)
                yield full
            finally:
                for sink in full.sinks.values():
                    if sink.proc is not None and sink.proc.poll() is None:
                        sink.kill()
    finally:
        forwarder.close()


def check(figures: Figures, *, clients_see_errors: bool = False) -> None:
    """What every scenario guarantees, from its figures."""
    tally, stores = figures.tally, figures.stores
    assert tally.sent > 0
    if not clients_see_errors:
        assert tally.ok == tally.sent, tally.failed
    # Every capture the proxy did not count as dropped reached Kafka: the count is exact.
    assert figures.captured == len(stores.topic) + sum(figures.dropped.values())
    # Each store holds each of those records once, and nothing else.
    assert set(stores.db) == set(stores.topic)
    assert set(stores.lake) == set(stores.topic)
    assert duplicates(stores.db) == 0
    assert duplicates(stores.lake) == 0
