"""Helpers the tests and the benches share: real processes, metrics, topics, databases."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests
from aiokafka import AIOKafkaConsumer

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{tail(log)}")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        except OSError:
            time.sleep(0.05)
            continue
        # A port in the ephemeral range with nothing on it can connect to itself (TCP's
        # simultaneous open, when the kernel picks the same port as the source): that is no
        # listener, and while the socket lives the process cannot bind the port.
        self_connected = sock.getsockname() == sock.getpeername()
        sock.close()
        if not self_connected:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Process:
    """A subprocess with its output in a log file, stopped with SIGTERM (SIGKILL if it hangs)."""

    def __init__(self, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        self.cmd = list(cmd)
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, *ports: int, timeout: float = 30.0) -> Process:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        for port in ports:
            wait_for_port(port, self.proc, self.log, timeout)
        if ports and self.proc.poll() is not None:  # another process answered on a port
            raise RuntimeError(f"process exited with {self.proc.returncode}:\n{tail(self.log)}")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text endpoint, by its name and labels as written."""
    samples = {}
    for line in requests.get(url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            samples[sample] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                  if labels else "")
    return samples.get(key, 0.0)


def accounted(metrics_url: str) -> tuple[float, float, dict[str, float]]:
    """The proxy's accounting from its metrics: (captured + recovered, produced + dropped +
    queued + spooled + in flight, the samples), once the two agree. The endpoint's thread
    reads the counters while the proxy updates them, so one scrape can land between two
    counters of one record; a few tries rule that out (proxy/backlog.py)."""
    from proxy.metrics import DROP_REASONS

    for _ in range(50):
        s = scrape(metrics_url)
        left = (sample(s, "tapline_proxy_captures_total")
                + sample(s, "tapline_proxy_spool_recovered_total"))
        right = (sample(s, "tapline_proxy_produced_total")
                 + sum(sample(s, "tapline_proxy_dropped_total", reason=r) for r in DROP_REASONS)
                 + sample(s, "tapline_proxy_queue_records")
                 + sample(s, "tapline_proxy_spool_records")
                 + sample(s, "tapline_proxy_in_flight_records"))
        if left == right:
            break
        time.sleep(0.1)
    return left, right, s


def metric(url: str, name: str, **labels: str) -> float:
    """One sample from a Prometheus text endpoint (0 when absent)."""
    return sample(scrape(url), name, **labels)


def read_topic(
    bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0, settle: float = 1.0
) -> list[tuple[bytes, bytes]]:
    """Every message of `topic` from the start: waits for `expect` of them, then `settle`
    seconds more, so that a duplicate arriving late is seen too."""
    return asyncio.run(_read_topic(bootstrap, topic, expect, timeout, settle))


async def _read_topic(bootstrap, topic, expect, timeout, settle):
    # No group: the consumer takes every partition and starts at the oldest record.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=16 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        messages: list[tuple[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle_until = None
        while loop.time() < (settle_until or deadline):
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                messages += [(r.key, r.value) for r in records]
            if settle_until is None and len(messages) >= expect:
                settle_until = loop.time() + settle
        return messages
    finally:
        await consumer.stop()


def topic_exists(bootstrap: str, topic: str) -> bool:
    """Whether Kafka knows `topic` and at least one partition of it."""
    from capture.topics import partitions

    return bool(asyncio.run(partitions(bootstrap, topic)))


def topic_size(bootstrap: str, topic: str) -> int:
    """Records on the topic: the sum of its partitions' end offsets (0 when it has none)."""
    return asyncio.run(_topic_size(bootstrap, topic))


async def _topic_size(bootstrap, topic):
    from aiokafka.structs import TopicPartition

    from capture.topics import partitions

    numbers = await partitions(bootstrap, topic)
    if not numbers:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(
            [TopicPartition(topic, n) for n in numbers])).values())
    finally:
        await consumer.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]],
            partitions: int = 3, headers=None) -> None:
    """Put messages on a topic (created with `partitions` when absent), acknowledged."""
    asyncio.run(_produce(bootstrap, topic, messages, partitions, headers))


async def _produce(bootstrap, topic, messages, partitions, headers):
    from aiokafka import AIOKafkaProducer

    from capture.topics import ensure_topic

    await ensure_topic(bootstrap, topic, partitions=partitions, max_record_bytes=4 << 20)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers)
                   for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def read_topic_with_headers(bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0):
    """Like read_topic, with each message's headers as a dict: (key, value, headers)."""
    return asyncio.run(_read_with_headers(bootstrap, topic, expect, timeout))


async def _read_with_headers(bootstrap, topic, expect, timeout):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and len(out) < expect:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out += [(r.key, r.value, {k: v.decode() for k, v in r.headers})
                        for r in records]
        return out
    finally:
        await consumer.stop()


def fresh_database(url: str) -> str:
    """A new, empty database on the server of `url` (postgresql://...); its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def wait_until(check, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll `check()` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
