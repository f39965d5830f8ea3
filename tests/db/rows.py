"""Rows of http_requests for the schema's tests, and what http_requests_5m must say about them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

COLUMNS = (
    "time", "capture_id", "app", "client_ip", "client_port", "method", "scheme", "host", "path",
    "query", "params", "status_code", "reason", "http_version", "duration_ms", "ended_at",
    "request_size", "response_size", "user_agent", "error", "request_headers",
    "response_headers", "request_body", "request_body_encoding", "request_body_truncated",
    "response_body", "response_body_encoding", "response_body_truncated",
)
INSERT = (
    f"INSERT INTO http_requests ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'%({name})s' for name in COLUMNS)}) "
    "ON CONFLICT (capture_id, time) DO NOTHING"
)
SUMMARY = """
SELECT bucket, app, method, path, status_code, requests, errors, avg_duration_ms,
       max_duration_ms, bytes_in, bytes_out
FROM http_requests_5m WHERE app = %s
"""
BUCKET = timedelta(minutes=5)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# A bucket's start; the rows below fall into it and the next.
BASE = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


def row(app: str, at: datetime, status_code: int | None = 200, *, method: str = "GET",
        path: str = "/items", duration_ms: float = 10.0, request_size: int = 0,
        response_size: int | None = 100, **changes: Any) -> dict[str, Any]:
    """One captured exchange, as a sink would write it; `changes` sets any other column."""
    answered = status_code is not None
    values: dict[str, Any] = {
        "time": at,
        "capture_id": uuid.uuid4(),
        "app": app,
        "client_ip": "10.0.0.7",
        "client_port": 51234,
        "method": method,
        "scheme": "http",
        "host": "shop.internal",
        "path": path,
        "query": "page=2&tag=a&tag=b",
        "params": Jsonb({"page": "2", "tag": ["a", "b"]}),
        "status_code": status_code,
        "reason": "OK" if answered else None,
        "http_version": "HTTP/1.1",
        "duration_ms": duration_ms,
        "ended_at": at + timedelta(milliseconds=duration_ms),
        "request_size": request_size,
        "response_size": response_size if answered else None,
        "user_agent": "curl/8.5.0",
        "error": None if answered else "connection reset by upstream",
        "request_headers": Jsonb([["Host", "shop.internal"], ["Accept", "*/*"]]),
        "response_headers": Jsonb([["Content-Type", "application/json"]]) if answered else None,
        "request_body": None,
        "request_body_encoding": None,
        "request_body_truncated": False,
        "response_body": '{"items": []}' if answered else None,
        "response_body_encoding": "utf-8" if answered else None,
        "response_body_truncated": False,
    }
    values.update(changes)
    return values


def sample(app: str, base: datetime = BASE) -> list[dict[str, Any]]:
    """Rows over two 5-minute buckets: successes, an error status, no response, another method."""
    second = timedelta(seconds=1)
    return [
        row(app, base + 10 * second, 200, duration_ms=10.0, response_size=1000),
        row(app, base + 70 * second, 200, duration_ms=30.0, response_size=3000),
        row(app, base + 130 * second, 500, duration_ms=50.0, response_size=200),
        row(app, base + 200 * second, None, duration_ms=5000.0, request_size=10),
        row(app, base + 299 * second, 201, method="POST", duration_ms=20.0, request_size=500,
            response_size=40),
        row(app, base + 300 * second, 200, duration_ms=12.0, response_size=1200),
        row(app, base + 310 * second, 200, duration_ms=4.0, response_size=800),
        row(app, base + 599 * second, 404, duration_ms=8.0, response_size=0),
    ]


def insert(conn: Any, rows: Iterable[dict[str, Any]]) -> int:
    """Insert with ON CONFLICT DO NOTHING, in one transaction; return how many rows were new."""
    added = 0
    with conn.transaction(), conn.cursor() as cursor:
        for values in rows:
            cursor.execute(INSERT, values)
            added += cursor.rowcount
    return added


def bucket_of(at: datetime) -> datetime:
    return EPOCH + (at - EPOCH) // BUCKET * BUCKET


def _order(line: Sequence[Any]) -> tuple[Any, ...]:
    bucket, app, method, path, status_code = line[:5]
    return bucket, app, method, path, status_code is None, status_code or 0


def expected_summary(rows: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """http_requests_5m's rows for `rows`, computed here, in a stable order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for values in rows:
        key = (bucket_of(values["time"]), values["app"], values["method"], values["path"],
               values["status_code"])
        groups.setdefault(key, []).append(values)
    lines = []
    for key, members in groups.items():
        durations = [m["duration_ms"] for m in members]
        sizes_in = [m["request_size"] for m in members if m["request_size"] is not None]
        sizes_out = [m["response_size"] for m in members if m["response_size"] is not None]
        lines.append((
            *key,
            len(members),
            sum(1 for m in members if m["status_code"] is None or m["status_code"] >= 400),
            sum(durations) / len(durations),
            max(durations),
            sum(sizes_in) if sizes_in else None,
            sum(sizes_out) if sizes_out else None,
        ))
    return sorted(lines, key=_order)


def summary(conn: Any, app: str) -> list[tuple[Any, ...]]:
    """http_requests_5m's rows for `app`, in the same order as expected_summary."""
    return sorted((tuple(line) for line in conn.execute(SUMMARY, (app,))), key=_order)
