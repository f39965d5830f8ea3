"""Steady traffic through the proxy: a few threads, each at a fixed pace, every answer tallied.

The mix covers the three listeners: app_a's /hello and /jobs (which calls app_b through the
proxy, so one request makes two captures), app_b's /auth, and the echo app's /upload and
/bytes. A request counts as answered OK when the status is the one that route gives when all
is well; anything else, a timeout or a refused connection included, is a failure, by kind.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from tests.integration.conftest import Pipeline

BODY = bytes(range(256)) * 4  # 1 KiB, not UTF-8: the record carries it as base64


@dataclass
class Tally:
    """What the clients saw."""

    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # by status code or exception name


class Load:
    """`threads` clients sending `rate` requests a second in all until `stop()`.

    Each thread keeps its own pace (no bursts to catch up), so the rate holds while the proxy
    answers quickly and falls, rather than piling up, when it does not.
    """

    def __init__(self, pipeline: Pipeline, rate: float = 60.0, threads: int = 4) -> None:
        self.calls = [
            ("GET", pipeline.app_a + "/hello", {}),
            ("POST", pipeline.app_a + "/jobs", {"headers": {"Authorization": "mytoken"}}),
            ("POST", pipeline.app_b + "/auth", {"data": {"token": "token-alice"}}),
            ("POST", pipeline.echo + "/upload", {"data": BODY}),
            ("GET", pipeline.echo + "/bytes?n=2000", {}),
        ]
        self.interval = threads / rate
        self.tallies = [Tally() for _ in range(threads)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(threads)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Tally:
        """Stop sending; wait for the requests in flight; the sum of every client's tally."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)
        return self.tally()

    def tally(self) -> Tally:
        total = Tally()
        with self._lock:
            for tally in self.tallies:
                total.sent += tally.sent
                total.ok += tally.ok
                total.failed += tally.failed
        return total

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _client(self, n: int) -> None:
        tally = self.tallies[n]
        session = requests.Session()
        step = n  # the clients start at different calls of the mix
        due = time.monotonic() + self.interval * n / len(self.tallies)
        while not self._stopping.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            method, url, kwargs = self.calls[step % len(self.calls)]
            step += 1
            try:
                status = session.request(method, url, timeout=10, **kwargs).status_code
                outcome = "ok" if status == 200 else str(status)
            except requests.RequestException as e:
                outcome = type(e).__name__
                session.close()
                session = requests.Session()  # a broken pooled connection is not reused
            with self._lock:
                tally.sent += 1
                if outcome == "ok":
                    tally.ok += 1
                else:
                    tally.failed[outcome] += 1
        session.close()
