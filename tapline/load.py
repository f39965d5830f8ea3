"""`tapline load`: realistic traffic through the proxy, with a tally to check the stores by.

Several simulated clients, each with its own IP (sent as X-Forwarded-For, which the proxy
believes only from peers in PROXY_TRUSTED_PROXIES: without that trust every request is
stored under the load generator's own address), good and bad tokens, unknown paths, wrong
methods, small and large bodies, at a chosen rate for a chosen time. The tally counts what was
sent and what came back, per status code and per client, so it can be compared with what the
report and the lake find.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

# (weight, method, app, path, token, body size): what a day of users does.
MIX = [
    (30, "POST", "a", "/jobs", "mytoken", 0),
    (20, "GET", "a", "/hello", None, 0),
    (8, "POST", "a", "/jobs", "token-alice", 0),
    (8, "POST", "a", "/jobs", "stolen-token", 0),
    (5, "POST", "a", "/jobs", None, 0),
    (4, "GET", "a", "/jobs", None, 0),  # wrong method
    (4, "GET", "a", "/admin", None, 0),  # unknown path
    (6, "POST", "b", "/auth", "token-bob", 0),
    (3, "POST", "b", "/auth", "nope", 0),
    (2, "POST", "a", "/jobs", "mytoken", 200_000),  # a large body
]


@dataclass
class Tally:
    """What the generator sent and saw, per status code and per client."""

    sent: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_client: Counter = field(default_factory=Counter)
    by_client_status: Counter = field(default_factory=Counter)
    failures: int = 0  # no answer at all (connection refused, timeout)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, client: str, status: int | None) -> None:
        with self.lock:
            self.sent += 1
            self.by_client[client] += 1
            if status is None:
                self.failures += 1
            else:
                self.by_status[status] += 1
                self.by_client_status[(client, status)] += 1


def client_ips(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"198.51.100.{rng.randrange(1, 255)}" if i % 3 else f"203.0.113.{i % 250 + 1}"
            for i in range(count)]


def run_load(app_a: str, app_b: str, *, rate: float, duration_s: float, clients: int = 8,
             concurrency: int = 4, seed: int = 1, progress=None) -> Tally:
    """Send about rate x duration requests (fewer if the apps are slower) and tally them."""
    rng = random.Random(seed)
    ips = list(dict.fromkeys(client_ips(clients, seed)))
    weights = [w for w, *_ in MIX]
    total = max(1, int(rate * duration_s))
    tally = Tally()
    local = threading.local()

    def one(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        _, method, app, path, token, size = MIX[plan[i][0]]
        client = plan[i][1]
        headers = {"X-Forwarded-For": client}
        if token and app == "a":
            headers["Authorization"] = token
        data = {"token": token} if app == "b" else (b"x" * size if size else None)
        base = app_a if app == "a" else app_b
        try:
            status = session.request(method, base + path, headers=headers, data=data,
                                     timeout=30).status_code
        except requests.RequestException:
            status = None
        tally.add(client, status)
        if progress is not None:
            progress()

    plan = [(rng.choices(range(len(MIX)), weights)[0], rng.choice(ips)) for _ in range(total)]
    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = []
        for i in range(total):
            # Pace the submissions: request i leaves at i / rate seconds, or later.
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
        for future in futures:
            future.result()
    return tally


def summary_rows(tally: Tally) -> list[tuple]:
    rows = [(status, count) for status, count in sorted(tally.by_status.items())]
    if tally.failures:
        rows.append(("no answer", tally.failures))
    return rows
