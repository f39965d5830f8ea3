"""Sinks as their own processes, against the suite's Kafka and PostgreSQL."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from stack import free_port
from stack.support import Process, fresh_database, scrape


@pytest.fixture
def database(postgres) -> str:
    """A fresh database for one test."""
    return fresh_database(postgres.dsn)


class SinkProcess(Process):
    """`python -m sinks NAME` with its own metrics port."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.metrics_port = free_port()
        super().__init__(
            [sys.executable, "-m", "sinks", name],
            workdir / f"sink-{name}-{uuid.uuid4().hex[:6]}.log",
            {"SINK_METRICS_PORT": str(self.metrics_port), "LOG_LEVEL": "INFO", **env},
        )

    def start(self, timeout: float = 60.0) -> SinkProcess:  # type: ignore[override]
        return super().start(self.metrics_port, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last commit."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def count_rows(url: str, where: str = "true") -> int:
    """Rows of http_requests; 0 while the sink has not created the table yet."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('http_requests') IS NULL").fetchone()[0]:
            return 0
        return conn.execute(f"SELECT count(*) FROM http_requests WHERE {where}").fetchone()[0]
