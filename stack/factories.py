"""Realistic capture records made in bulk, for the tests and the benches."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from capture import CaptureRecord, Request, Response, encode, format_time

PATHS = [("GET", "/hello", 200, "Hello there"), ("POST", "/jobs", 200,
         "Jobs:\nTitle: Devops\nDescription: Awesome\n"), ("POST", "/jobs", 401,
         "unknown token\n"), ("POST", "/auth", 200, "density"), ("GET", "/nope", 404, "")]

AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
          "curl/8.5.0", "python-requests/2.32.3", "ab/2.3"]
# A listing page of about 4 KB: the medium-sized response of the mixed series.
LISTING = "".join(f'<li><a href="/jobs/{n}">Job {n}: Devops engineer</a></li>\n'
                  for n in range(80))


def make(i: int, *, start: float = 1_795_000_000.0, spread_s: float = 3 * 3600,
         clients: int = 50, big_every: int = 0, seed: int = 0,
         mixed: bool = False, in_order: int = 0) -> CaptureRecord:
    """The i-th record of a deterministic series: many clients, several hours, a mix of paths
    and statuses; every `big_every`-th record carries a 20 KB body. Times are random over
    `spread_s`, or with `in_order` (the series' length) grow with i, as real traffic reaches
    the topic, with a few milliseconds of jitter.

    `mixed` makes the series closer to real traffic: exactly `clients` client IPs, varied user
    agents and headers,
    fingerprinted credentials (as the proxy leaves them), JSON bodies with their parameters,
    a 4 KB response one time in 10, the 20 KB bodies on the response half of the time, and
    one exchange in 200 that failed without a response."""
    rng = random.Random(seed * 1_000_003 + i)
    method, path, status, body = PATHS[i % len(PATHS)]
    if in_order:
        began = start + spread_s * i / in_order + rng.random() * 0.005
    else:
        began = start + rng.random() * spread_s
    took = rng.random() * 0.05
    if mixed:  # exactly `clients` addresses
        client = i % clients
        ip = f"10.{client // 62_500}.{client // 250 % 250}.{1 + client % 250}"
    else:  # the first series' addresses: `clients` times 7 of them, when 7 does not divide it
        ip = f"10.{(i % clients) // 250}.{(i % clients) % 250}.{1 + (i % 7)}"
    big = bool(big_every) and i % big_every == 0
    request_body = "x" * 20_000 if big else f"token=t{i % 9}"
    params = {"query": [["page", str(i % 3)]], "form": [["token", f"t{i % 9}"]], "json": []}
    headers = [["Host", "127.0.0.1:5000"], ["User-Agent", "ab/2.3"], ["Authorization", "mytoken"]]
    response_headers = [["Content-Type", "text/plain"]]
    error = None
    if mixed:
        headers = [["Host", "127.0.0.1:5000"], ["User-Agent", AGENTS[i % len(AGENTS)]],
                   ["Accept", "*/*"], ["Accept-Encoding", "gzip, deflate"],
                   ["Authorization", f"hmac:{(i % clients) * 2654435761 % (1 << 32):08x}"],
                   ["X-Request-Id", str(uuid.UUID(int=rng.getrandbits(128), version=4))]]
        response_headers = [["Content-Type", "text/plain; charset=utf-8"],
                            ["Content-Length", "0"], ["Server", "gunicorn"],
                            ["Date", "Sat, 28 Nov 2026 10:12:44 GMT"]]
        if method == "POST" and i % 7 == 0:
            request_body = ('{"title": "Devops", "description": "Awesome", "tags": '
                            f'["ops", "ci"], "salary": {40_000 + i % 50_000}}}')
            params["form"] = []
            params["json"] = [["title", "Devops"], ["description", "Awesome"],
                              ["tags", ["ops", "ci"]], ["salary", 40_000 + i % 50_000]]
            headers.append(["Content-Type", "application/json"])
        elif method == "POST":
            headers.append(["Content-Type", "application/x-www-form-urlencoded"])
        if i % 10 == 3:
            body = LISTING
        if big and i % (2 * big_every) == 0:
            request_body, body = f"token=t{i % 9}", "y" * 20_000
        response_headers[1][1] = str(len(body))
    response = Response(status_code=status, reason="OK", http_version="HTTP/1.1",
                        headers=response_headers, body=body, body_size=len(body))
    if mixed and i % 200 == 199:
        response, error = None, "Connection refused"
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
            query=f"page={i % 3}", params=params, http_version="HTTP/1.1",
            headers=headers, body=request_body, body_size=len(request_body),
        ),
        response=response,
        error=error,
    )


def encoded(n: int, *, first: int = 0, **options) -> list[tuple[bytes, bytes]]:
    """n records (from the `first`-th on) as (key, value) Kafka messages."""
    return list(stream(n, first=first, **options))


def stream(n: int, *, first: int = 0, **options) -> Iterator[tuple[bytes, bytes]]:
    """Like `encoded`, one message at a time: a big series need not be in memory at once."""
    for i in range(first, first + n):
        record = make(i, **options)
        yield record.client_ip.encode(), encode(record)


def realistic(n: int, *, first: int = 0, total: int = 0, clients: int = 2000, seed: int = 0,
              spread_s: float = 6 * 3600) -> list[tuple[bytes, bytes]]:
    """The benches' mix: `clients` client IPs, in time order over `spread_s` seconds for a
    series of `total` records (default n; made in parts with `first`), one body in 20 of
    20 KB, a 4 KB listing one response in 10, and the `mixed` headers and failures."""
    return encoded(n, first=first, clients=clients, seed=seed, spread_s=spread_s,
                   big_every=20, mixed=True, in_order=total or first + n)
