"""Realistic capture records made in bulk, for sink tests and benchmarks."""

from __future__ import annotations

import random
import uuid

from capture import CaptureRecord, Request, Response, encode, format_time

PATHS = [("GET", "/hello", 200, "Hello there"), ("POST", "/jobs", 200,
         "Jobs:\nTitle: Devops\nDescription: Awesome\n"), ("POST", "/jobs", 401,
         "unknown token\n"), ("POST", "/auth", 200, "density"), ("GET", "/nope", 404, "")]


def make(i: int, *, start: float = 1_795_000_000.0, spread_s: float = 3 * 3600,
         clients: int = 50, big_every: int = 0, seed: int = 0) -> CaptureRecord:
    """The i-th record of a deterministic series: many clients, several hours, a mix of paths
    and statuses; every `big_every`-th record carries a 20 KB body."""
    rng = random.Random(seed * 1_000_003 + i)
    method, path, status, body = PATHS[i % len(PATHS)]
    began = start + rng.random() * spread_s
    took = rng.random() * 0.05
    ip = f"10.{(i % clients) // 250}.{(i % clients) % 250}.{1 + (i % 7)}"
    request_body = "x" * 20_000 if big_every and i % big_every == 0 else f"token=t{i % 9}"
    return CaptureRecord(
        id=str(uuid.UUID(int=(seed << 64) + i + 1, version=4)),
        app="app_b" if path == "/auth" else "app_a",
        started_at=format_time(began),
        ended_at=format_time(began + took),
        duration_ms=round(took * 1000, 3),
        client_ip=ip,
        client_port=40_000 + i % 20_000,
        request=Request(
            method=method, scheme="http", host="127.0.0.1:5000", port=5100, path=path,
            query=f"page={i % 3}", params={"query": [["page", str(i % 3)]],
                                           "form": [["token", f"t{i % 9}"]], "json": []},
            http_version="HTTP/1.1",
            headers=[["Host", "127.0.0.1:5000"], ["User-Agent", "ab/2.3"],
                     ["Authorization", "mytoken"]],
            body=request_body, body_size=len(request_body),
        ),
        response=Response(status_code=status, reason="OK", http_version="HTTP/1.1",
                          headers=[["Content-Type", "text/plain"]], body=body,
                          body_size=len(body)),
    )


def encoded(n: int, **options) -> list[tuple[bytes, bytes]]:
    """n records as (key, value) Kafka messages."""
    out = []
    for i in range(n):
        record = make(i, **options)
        out.append((record.client_ip.encode(), encode(record)))
    return out
