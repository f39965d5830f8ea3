"""Services that already run elsewhere, named by the environment, in place of launched ones.

The rule, one for every test and for `make run`: when a variable below is set (and not empty),
the service at that address is used and nothing is launched for it; otherwise the stack launches
its own in the given work dir.

    KAFKA_BOOTSTRAP_SERVERS  host:port[,host:port...] of a Kafka cluster
    DATABASE_URL             postgresql://user[:password]@host:port/dbname
    S3_ENDPOINT_URL          http://host:port of an S3 endpoint (the bucket must already exist)

These are the names `python -m stack` prints, so its output can be pasted into a shell. The
objects returned for an outside service have the same address properties as launched ones;
`start()` waits until the service answers, `close()` does nothing, and `stop()` raises
NotLaunched, because a test that stops its service cannot run against one it does not own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from stack.errors import NotLaunched, StartupFailed
from stack.kafka import Kafka, kafka_answers
from stack.postgres import Postgres
from stack.s3 import DEFAULT_BUCKET, S3Server, http_answers
from stack.service import port_open

KAFKA_VARIABLE = "KAFKA_BOOTSTRAP_SERVERS"
DATABASE_VARIABLE = "DATABASE_URL"
S3_VARIABLE = "S3_ENDPOINT_URL"


class External:
    """What the outside services share: wait for an answer at start, refuse to stop."""

    name = "service"
    variable = ""
    managed = False  # someone else runs it: we may use it, not stop it
    default_timeout_s = 30.0

    def address(self) -> str:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Self:
        """Return once the service answers; raise StartupFailed if it does not within `timeout`."""
        limit = self.default_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self.answers():
            if time.monotonic() > deadline:
                raise StartupFailed(f"{self.name} at {self.address()} (from {self.variable}) "
                                    f"did not answer within {limit:.0f} s")
            time.sleep(0.2)
        return self

    def stop(self, timeout: float | None = None) -> None:
        raise NotLaunched(
            f"{self.name} at {self.address()} comes from {self.variable}: the stack cannot stop "
            f"or restart a service it did not start; unset {self.variable} to launch one"
        )

    def close(self) -> None:
        """End of use: nothing to do, the service belongs to someone else."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ExternalKafka(External):
    """A Kafka cluster that runs elsewhere, at `bootstrap_servers`."""

    name = "Kafka"
    variable = KAFKA_VARIABLE

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def address(self) -> str:
        return self.bootstrap_servers

    def answers(self) -> bool:
        return kafka_answers(self.bootstrap_servers)


class ExternalPostgres(External):
    """A PostgreSQL server that runs elsewhere, at `dsn` (a postgresql:// URL)."""

    name = "PostgreSQL"
    variable = DATABASE_VARIABLE

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"{DATABASE_VARIABLE} must be a postgresql:// URL, not {dsn!r}")
        self.dsn = dsn
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 5432
        self.user = unquote(parts.username or "postgres")
        self.dbname = unquote(parts.path.lstrip("/")) or self.user

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def answers(self) -> bool:
        return port_open(self.host, self.port)


class ExternalS3(External):
    """An S3 endpoint that runs elsewhere, at `endpoint_url`, where `bucket` already exists."""

    name = "S3"
    variable = S3_VARIABLE

    def __init__(self, endpoint_url: str, bucket: str | None = DEFAULT_BUCKET) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.bucket = bucket

    def address(self) -> str:
        return self.endpoint_url

    def answers(self) -> bool:
        return http_answers(self.endpoint_url + "/")


def _configured(variable: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(variable, "").strip()
    return value or None


def kafka_from_env(
    workdir: Path, env: Mapping[str, str] | None = None, **options: Any
) -> Kafka | ExternalKafka:
    """The Kafka of KAFKA_BOOTSTRAP_SERVERS, else a new `Kafka(workdir, **options)`."""
    address = _configured(KAFKA_VARIABLE, env)
    return ExternalKafka(address) if address else Kafka(workdir, **options)


def postgres_from_env(
    workdir: Path, env: Mapping[str, str] | None = None, **options: Any
) -> Postgres | ExternalPostgres:
    """The PostgreSQL of DATABASE_URL, else a new `Postgres(workdir, **options)`."""
    dsn = _configured(DATABASE_VARIABLE, env)
    return ExternalPostgres(dsn) if dsn else Postgres(workdir, **options)


def s3_from_env(
    workdir: Path, env: Mapping[str, str] | None = None, **options: Any
) -> S3Server | ExternalS3:
    """The S3 of S3_ENDPOINT_URL, else a new `S3Server(workdir, **options)`."""
    url = _configured(S3_VARIABLE, env)
    if url:
        return ExternalS3(url, options.get("bucket", DEFAULT_BUCKET))
    return S3Server(workdir, **options)
