"""What the lake tests share: an S3 server (fixture `s3`), a fresh bucket per test (`bucket`),
reading the lake back, and a TCP forwarder that can play an S3 outage (moto keeps its data in
memory, so it is never restarted; the sink talks to it through the forwarder instead).

Test modules import the fixture functions (`s3_service`, `fresh_bucket`): tests/sinks/conftest.py
belongs to the other sinks' tests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import socket
import struct
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import boto3
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from capture import decode
from capture.lake_layout import key_prefix
from stack import s3_from_env

KEYS = {"S3_ACCESS_KEY_ID": "tapline", "S3_SECRET_ACCESS_KEY": "tapline-secret"}
# prefix, topic, partition, first offset, last offset
KEY = re.compile(
    r"(\d{4}-\d{2}-\d{2}/\d{2}/[^/]+)/([A-Za-z0-9._-]+)-(\d+)-(\d+)-(\d+)\.jsonl\.gz")


@pytest.fixture(scope="session", name="s3")
def s3_service(tmp_path_factory):
    """The suite's S3: S3_ENDPOINT_URL if set, else a moto server of its own."""
    service = s3_from_env(tmp_path_factory.mktemp("s3"), bucket=None)
    service.start()
    yield service
    service.close()


def client(endpoint_url: str):
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id=KEYS["S3_ACCESS_KEY_ID"],
                        aws_secret_access_key=KEYS["S3_SECRET_ACCESS_KEY"])


@pytest.fixture(name="bucket")
def fresh_bucket(s3) -> str:
    """A new, empty bucket for one test."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client(s3.endpoint_url).create_bucket(Bucket=name)
    return name


def lake_env(bootstrap: str, topic: str, endpoint_url: str, bucket: str,
             **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CAPTURE_TOPIC": topic,
        "S3_ENDPOINT_URL": endpoint_url,
        "S3_BUCKET": bucket,
        "SINK_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        **KEYS,
        **extra,
    }


@dataclass
class Lake:
    """Everything in a bucket, read back: each object's key and lines."""

    objects: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def lines(self) -> list[bytes]:
        return [line for lines in self.objects.values() for line in lines]

    def ids(self) -> Counter:
        return Counter(decode(line).id for line in self.lines)


def read_lake(endpoint_url: str, bucket: str) -> Lake:
    """Every object, gunzipped (a truncated gzip raises) and split into lines."""
    s3 = client(endpoint_url)
    keys = [entry["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for entry in page.get("Contents", [])]

    def get(key: str) -> list[bytes]:
        text = gzip.decompress(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert text.endswith(b"\n"), key
        return text[:-1].split(b"\n")

    with ThreadPoolExecutor(8) as pool:
        return Lake(dict(zip(keys, pool.map(get, keys), strict=True)))


def etags(endpoint_url: str, bucket: str) -> dict[str, str]:
    """Each object's ETag (the MD5 of its bytes, for a single PUT), by key."""
    s3 = client(endpoint_url)
    return {entry["Key"]: entry["ETag"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for entry in page.get("Contents", [])}


def check_lake(lake: Lake, topic: str, originals: list[bytes], *, copies: bool = False) -> None:
    """The lake holds each original exactly once (with `copies`, at least once: a crash or a
    stalled sink may leave a second, identical copy, which readers count once), byte for
    byte, under its own date, hour and IP, in an object named after this topic."""
    if copies:
        assert set(lake.lines) == set(originals)
    else:
        assert sorted(lake.lines) == sorted(originals)
        ids = lake.ids()
        assert len(ids) == len(originals) and max(ids.values()) == 1
    for key, lines in lake.objects.items():
        match = KEY.fullmatch(key)
        assert match and match.group(2) == topic, key
        for line in lines:
            record = decode(line)
            assert match.group(1) == key_prefix(record.started_at, record.client_ip), key


def lake_rows(endpoint_url: str, bucket: str) -> Counter:
    """Each capture id as a reader of the lake sees it (the DuckDB view `captures` of
    `tapline lake query`), with the number of rows it has there."""
    from sinks.lake import LakeSettings
    from tapline import lake

    settings = LakeSettings.from_env({"S3_ENDPOINT_URL": endpoint_url, "S3_BUCKET": bucket,
                                      **KEYS})
    return Counter(dict(lake.query(settings, "SELECT id, count(*) FROM captures GROUP BY id")
                        .rows))


def committed_offsets(bootstrap: str, group: str, topic: str,
                      timeout: float = 15.0) -> dict[int, int]:
    """The offsets consumer group `group` has committed for `topic`, by partition (retried
    while the group's coordinator is not ready, as on a fresh broker)."""
    async def fetch() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    offsets = await admin.list_consumer_group_offsets(group)
                    break
                except KafkaError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items()
                if tp.topic == topic and meta.offset >= 0}

    return asyncio.run(fetch())


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Records of `topic` that consumer group `group` has committed, over all partitions."""
    return sum(committed_offsets(bootstrap, group, topic).values())


def uncommitted_objects(keys, offsets: dict[int, int]) -> list[str]:
    """Objects whose first record lies at or past its partition's committed offset: written
    by a batch that was not (yet) committed."""
    found = []
    for key in keys:
        match = KEY.fullmatch(key)
        if match and int(match.group(4)) >= offsets.get(int(match.group(3)), 0):
            found.append(key)
    return found


def copy_group(bootstrap: str, group: str, topic: str) -> str:
    """A new consumer group holding `group`'s committed offsets of `topic`, for a restart that
    need not wait for the group to expire a killed member (its 10 s session timeout)."""
    async def copy() -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        offsets = {tp: meta.offset for tp, meta in offsets.items()
                   if tp.topic == topic and meta.offset >= 0}
        new = f"{group}-{uuid.uuid4().hex[:4]}"
        if offsets:
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=new,
                                        enable_auto_commit=False)
            await consumer.start()
            try:
                consumer.assign(list(offsets))
                await consumer.commit(offsets)
            finally:
                await consumer.stop()
        return new

    return asyncio.run(copy())


class TcpForwarder:
    """A loopback TCP port that forwards to `target`, or plays an outage.

    Modes: "up" forwards; "reset" resets every open connection and each new one (a server
    gone, a load balancer dropping traffic); "503" answers every request with S3's own
    503 Slow Down and closes; "hold" passes requests on but holds the answers back, so S3
    does the work and the client never hears of it (the window between a write and its
    commit, held open); "pause" holds the bytes both ways, requests too, on the connections
    it has and on new ones, and lets them all go on when it is set "up" again: a request
    stuck in the network that S3 only gets, and does, much later. `held` counts the chunks of
    requests held back. Switching to "reset" or "503" cuts the open connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "up"
        self.accepted = Counter()
        self._answers = threading.Event()  # set: answers flow back to the client
        self._answers.set()
        self._requests = threading.Event()  # set: requests flow on to the target
        self._requests.set()
        self.held = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        assert mode in ("up", "hold", "pause", "reset", "503")
        self.mode = mode
        if mode in ("reset", "503"):
            with self._lock:
                doomed, self._open = list(self._open), set()
            for sock in doomed:
                _reset(sock)
        if mode in ("hold", "pause"):
            self._answers.clear()
        else:
            self._answers.set()
        if mode == "pause":
            self._requests.clear()
        else:
            self._requests.set()

    def close(self) -> None:
        self._closed = True
        self.set("reset")
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            mode = self.mode
            self.accepted[mode] += 1
            if mode == "reset":
                _reset(conn)
            elif mode == "503":
                threading.Thread(target=self._slow_down, args=(conn,), daemon=True).start()
            else:  # up, hold or pause
                threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(conn)
            return
        upstream.settimeout(None)
        with self._lock:
            self._open |= {conn, upstream}
        for src, dst, answers in ((conn, upstream, False), (upstream, conn, True)):
            threading.Thread(target=self._pump, args=(src, dst, answers), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers:
                    self._answers.wait()
                elif not self._requests.is_set():
                    with self._lock:
                        self.held += 1
                    self._requests.wait()
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _slow_down(self, conn: socket.socket) -> None:
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
        with contextlib.suppress(OSError):
            conn.settimeout(5)
            seen = b""
            while b"\r\n\r\n" not in seen:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                seen += chunk
            conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
        conn.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
