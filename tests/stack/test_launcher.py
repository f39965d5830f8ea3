"""The launcher's services answer real clients, and come back with their data after a restart.

No test here skips: a service that cannot start is an error of the run, with its log quoted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stack import (
    ExternalKafka,
    Kafka,
    NotLaunched,
    Postgres,
    S3Server,
    StartupFailed,
    kafka_from_env,
)
from stack.service import port_open

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


# Kafka


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kafka]:
    with Kafka(tmp_path_factory.mktemp("kafka")) as kafka:
        yield kafka


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=len(value) + 4096
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 20) -> list[bytes]:
    """Read the first `count` messages of partition 0, without a consumer group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(partition, timeout_ms=500)
            values += [message.value for message in batches.get(partition, [])]
        return values
    finally:
        await consumer.stop()


def test_kafka_keeps_messages_across_a_restart_on_the_same_port(kafka: Kafka) -> None:
    address = kafka.bootstrap_servers
    asyncio.run(create_topic(address, "stack-restart"))
    asyncio.run(produce(address, "stack-restart", b"before the restart"))
    assert asyncio.run(consume(address, "stack-restart", 1)) == [b"before the restart"]

    kafka.stop()
    kafka.stop()  # idempotent
    assert not kafka.running
    assert not port_open("127.0.0.1", kafka.port)

    kafka.start()
    assert kafka.bootstrap_servers == address
    asyncio.run(produce(address, "stack-restart", b"after the restart"))
    assert asyncio.run(consume(address, "stack-restart", 2)) == [
        b"before the restart",
        b"after the restart",
    ]


def test_kafka_takes_messages_of_several_mebibytes(kafka: Kafka) -> None:
    value = os.urandom(6 * 1024 * 1024)
    asyncio.run(create_topic(kafka.bootstrap_servers, "stack-large"))
    asyncio.run(produce(kafka.bootstrap_servers, "stack-large", value))
    assert asyncio.run(consume(kafka.bootstrap_servers, "stack-large", 1)) == [value]


def test_kafka_that_cannot_listen_fails_quoting_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:  # the controller's port: it binds first, so this fails fast
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        kafka = Kafka(tmp_path, controller_port=taken.getsockname()[1])
        with pytest.raises(StartupFailed, match=r"(?s)Kafka exited .*kafka\.log.*already in use"):
            kafka.start(timeout=60)
    assert not kafka.running


def test_an_outside_kafka_is_used_but_not_stopped(kafka: Kafka, tmp_path: Path) -> None:
    outside = kafka_from_env(tmp_path, env={"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    assert isinstance(outside, ExternalKafka)
    assert outside.start(timeout=10).bootstrap_servers == kafka.bootstrap_servers
    with pytest.raises(NotLaunched, match="KAFKA_BOOTSTRAP_SERVERS"):
        outside.stop()
    outside.close()
    assert kafka.running


# PostgreSQL


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    with Postgres(tmp_path_factory.mktemp("postgres")) as postgres:
        yield postgres


def psql(dsn: str, sql: str) -> str:
    done = subprocess.run(["psql", dsn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                           "-c", sql], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_postgres_answers_and_keeps_rows_across_a_restart(postgres: Postgres) -> None:
    assert postgres.dsn == f"postgresql://postgres@127.0.0.1:{postgres.port}/tapline"
    assert psql(postgres.dsn, "SELECT 1") == "1"
    psql(postgres.dsn, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")

    postgres.stop()
    postgres.stop()  # idempotent
    assert not port_open("127.0.0.1", postgres.port)

    postgres.start()
    assert psql(postgres.dsn, "SELECT n FROM kept") == "42"


# S3


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


def test_s3_stores_objects_and_forgets_them_on_restart(s3: S3Server) -> None:
    client = boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.put_object(Bucket="captures", Key="2026/11/28/10/a.ndjson.gz", Body=b"payload")
    read = client.get_object(Bucket="captures", Key="2026/11/28/10/a.ndjson.gz")
    assert read["Body"].read() == b"payload"

    s3.stop()
    s3.start()
    # moto keeps state in memory only: the bucket is made again, the object is gone.
    assert client.list_objects_v2(Bucket="captures")["KeyCount"] == 0


# The command line


def test_command_line_prints_addresses_and_stops_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "stack", "s3", "--workdir", str(tmp_path)]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        name, _, url = line.partition("=")
        assert name == "S3_ENDPOINT_URL"
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        assert port_open("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, errors
    assert "stack: stopped" in errors
    assert not port_open("127.0.0.1", port)
