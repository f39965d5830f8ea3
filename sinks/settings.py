"""The sinks' settings, read from the environment in this one place.

The same names appear in docs/configuration.md's table and in docker-compose.yml. Each
sink runs as its own process, so SINK_* settings apply to the sink of that process; their
defaults differ by sink where the sinks want different things (the lake batches longer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from capture.settings import (
    DEFAULT_BOOTSTRAP_SERVERS,
    DEFAULT_DATABASE_URL,
    DEFAULT_TOPIC,
    EnvReader,
    GiB,
    KiB,
    MiB,
    SettingsError,
)
from capture.topics import max_record_bytes

SINKS = ("timescale", "lake")

# Per sink: consumer group, metrics port, and how large a partition's batch may grow and how
# long it may wait. The database takes rows as they come; the lake wants few, large objects (a
# PUT is billed per request, and a reader pays per object): a batch closes at 32 MiB of records
# or after a minute, whichever is first, so an object holds a minute of its client's traffic
# or a large share of the batch (docs/lake.md). `make run` and the compose stack shorten the
# age so that a new user sees requests in the lake within seconds.
_DEFAULTS = {
    "timescale": {"group": "tapline-timescale", "metrics_port": 9102, "max_age_ms": 0,
                  "max_records": 5000},
    "lake": {"group": "tapline-lake", "metrics_port": 9103, "max_age_ms": 60_000,
             "max_records": 1_000_000},
}


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How a sink consumes: group, batches, dead letters, metrics."""

    sink: str
    kafka_bootstrap_servers: str
    topic: str
    group_id: str
    dlq_topic: str
    poll_timeout_ms: int
    batch_max_records: int
    batch_max_bytes: int
    batch_max_age_ms: int
    max_record_bytes: int
    retry_max_backoff_s: float
    metrics_host: str
    metrics_port: int
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000

    @classmethod
    def from_env(cls, sink: str, env: Mapping[str, str] | None = None) -> LoopSettings:
        if sink not in SINKS:
            raise SettingsError(f"unknown sink {sink!r}: use one of {', '.join(SINKS)}")
        reader = EnvReader(os.environ if env is None else env)
        defaults = _DEFAULTS[sink]
        topic = reader.text("CAPTURE_TOPIC", DEFAULT_TOPIC)
        # Kafka's own bounds for a group member (the broker's group.min/max.session.timeout.ms
        # defaults); the heartbeat must come well within the session.
        session_ms = reader.integer("SINK_SESSION_TIMEOUT_MS", 10_000, minimum=6_000,
                                    maximum=1_800_000)
        heartbeat_ms = reader.integer("SINK_HEARTBEAT_INTERVAL_MS", 3_000, minimum=100,
                                      maximum=600_000)
        if heartbeat_ms * 3 > session_ms:
            raise SettingsError(
                f"SINK_HEARTBEAT_INTERVAL_MS={heartbeat_ms} must be at most a third of "
                f"SINK_SESSION_TIMEOUT_MS={session_ms}")
        return cls(
            sink=sink,
            kafka_bootstrap_servers=reader.text("KAFKA_BOOTSTRAP_SERVERS",
                                                DEFAULT_BOOTSTRAP_SERVERS),
            topic=topic,
            group_id=reader.text("SINK_GROUP_ID", defaults["group"]),
            dlq_topic=reader.text("DLQ_TOPIC", f"{topic}.dlq"),
            poll_timeout_ms=reader.integer("SINK_POLL_TIMEOUT_MS", 200, minimum=1,
                                           maximum=60_000),
            batch_max_records=reader.integer("SINK_BATCH_MAX_RECORDS", defaults["max_records"],
                                             minimum=1, maximum=1_000_000),
            batch_max_bytes=reader.integer("SINK_BATCH_MAX_BYTES", 32 * MiB, minimum=KiB,
                                           maximum=4 * GiB),
            batch_max_age_ms=reader.integer(
                "SINK_BATCH_MAX_AGE_MS", defaults["max_age_ms"], minimum=0, maximum=3_600_000
            ),
            max_record_bytes=max_record_bytes(reader),
            retry_max_backoff_s=reader.number("SINK_RETRY_MAX_BACKOFF_S", 10.0, minimum=0.01,
                                              maximum=3600.0),
            metrics_host=reader.text("SINK_METRICS_HOST", "127.0.0.1"),
            metrics_port=reader.port("SINK_METRICS_PORT", defaults["metrics_port"], zero="off"),
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=heartbeat_ms,
        )


@dataclass(frozen=True, slots=True)
class TimescaleSettings:
    """Where and how the TimescaleDB sink writes.

    `migrate` (TIMESCALE_MIGRATE, default true): the sink brings the schema to the newest
    revision at start, which takes the schema's owner. False, for a sink that logs in as a
    member of tapline_writer: it only checks that the schema is there (and waits, saying what
    to run, while it is not); compression and retention policies are then the owner's job too
    (`python -m db policies`), so TIMESCALE_COMPRESS_AFTER and TIMESCALE_RETENTION are refused.
    """

    database_url: str
    body_max_bytes: int
    write_method: str
    compress_after: str | None
    retention: str | None
    migrate: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TimescaleSettings:
        reader = EnvReader(os.environ if env is None else env)
        method = reader.choice("TIMESCALE_WRITE_METHOD", ("copy", "insert"))
        migrate = reader.flag("TIMESCALE_MIGRATE", True)
        compress_after = reader.text("TIMESCALE_COMPRESS_AFTER", "") or None
        retention = reader.text("TIMESCALE_RETENTION", "") or None
        if not migrate and (compress_after or retention):
            raise SettingsError(
                "TIMESCALE_COMPRESS_AFTER and TIMESCALE_RETENTION need TIMESCALE_MIGRATE=true "
                "(policies take the schema's owner): with a writer role, apply them with "
                "`python -m db policies` as the owner")
        return cls(
            database_url=reader.text("DATABASE_URL", DEFAULT_DATABASE_URL),
            body_max_bytes=reader.integer("TIMESCALE_BODY_MAX_BYTES", 64 * KiB, minimum=0,
                                          maximum=GiB),
            write_method=method,
            compress_after=compress_after,
            retention=retention,
            migrate=migrate,
        )
