"""The lake sink on real Kafka and S3 (moto): every capture in the lake and read once, through
SIGKILLs at random moments, an S3 outage, a missing bucket and poison records."""

from __future__ import annotations

import random
import time
import uuid
from urllib.parse import urlsplit

import orjson
import pytest

from capture import decode
from stack import factories
from stack.support import produce, read_topic_with_headers, sample, wait_until
from tests.sinks.conftest import SinkProcess
from tests.sinks.lake_fixtures import (  # noqa: F401 - fixtures s3 and bucket
    TcpForwarder,
    check_lake,
    client,
    committed,
    committed_offsets,
    copy_group,
    etags,
    fresh_bucket,
    lake_env,
    lake_rows,
    read_lake,
    s3_service,
    uncommitted_objects,
)

pytestmark = pytest.mark.integration


def written(sink: SinkProcess) -> float:
    return sample(sink.metrics(), "tapline_sink_written_total", sink="lake")


def test_sigkill_at_random_moments_loses_nothing_and_reads_once(kafka, s3, bucket, tmp_path):
    # Enough that the sink, which starts each write as soon as the last one is committed,
    # cannot drain the topic in the few attempts before the kills have landed.
    n = 6000
    topic = f"lake-kill-{uuid.uuid4().hex[:8]}"
    # 14 clients over 4 hours: about 20 objects for each batch of 200 records of a partition
    messages = factories.encoded(n, clients=14, spread_s=4 * 3600)
    produce(kafka.bootstrap_servers, topic, messages)
    target = urlsplit(s3.endpoint_url)
    forwarder = TcpForwarder(target.hostname, target.port)
    env = lake_env(kafka.bootstrap_servers, topic, forwarder.url, bucket,
                   SINK_BATCH_MAX_RECORDS="200", SINK_BATCH_MAX_AGE_MS="200")
    group = env["SINK_GROUP_ID"]
    rng = random.Random(5)
    between_put_and_commit = []  # kills that left objects of an uncommitted batch behind
    seen: dict[str, set[str]] = {}  # what each object held right after a kill
    sink = None
    try:
        for attempt in range(8):
            if attempt >= 2:
                # Only the first restart waits for Kafka to expire the killed member (its
                # session timeout, 10 s); later ones resume from the same commits in a copy
                # of the group.
                group = env["SINK_GROUP_ID"] = copy_group(kafka.bootstrap_servers, group, topic)
            # Batches cut differently on each start, as a restart may cut them anyway.
            env["SINK_BATCH_MAX_RECORDS"] = str(rng.choice([90, 140, 200, 260]))
            forwarder.set("up")
            sink = SinkProcess("lake", tmp_path, env).start()
            wait_until(lambda s=sink, g=group: written(s) > 0 or committed(
                kafka.bootstrap_servers, g, topic) >= n, timeout=60, interval=0.05,
                what="the sink to write")
            time.sleep(rng.uniform(0.05, 0.5))
            # At a random moment, S3 keeps taking PUTs but its answers stop reaching the
            # sink: the batch in flight lands in the bucket and is never committed. Kill then.
            forwarder.set("hold")
            time.sleep(0.5)
            sink.kill()
            lake = etags(s3.endpoint_url, bucket)
            for key, etag in lake.items():
                seen.setdefault(key, set()).add(etag)
            offsets = committed_offsets(kafka.bootstrap_servers, group, topic)
            if sum(offsets.values()) >= n:
                break
            if uncommitted_objects(lake, offsets):
                between_put_and_commit.append(sum(offsets.values()))
                if len(between_put_and_commit) >= 4:
                    break
        # The kills must have landed between the PUTs and the commit of a batch, with work
        # left, or the test proves nothing.
        assert len(between_put_and_commit) >= 3, between_put_and_commit
        forwarder.set("up")
        group = env["SINK_GROUP_ID"] = copy_group(kafka.bootstrap_servers, group, topic)
        sink = SinkProcess("lake", tmp_path, env).start()
        wait_until(lambda: committed(kafka.bootstrap_servers, group, topic) >= n,
                   timeout=120, what=f"{n} records committed")
        assert sink.stop() == 0
    finally:
        if sink is not None and sink.proc.poll() is None:  # a failure half-way
            sink.kill()
        forwarder.close()
    lake = read_lake(s3.endpoint_url, bucket)
    check_lake(lake, topic, [value for _k, value in messages], copies=True)
    # Readers see each capture once, although killed attempts cut differently left copies:
    # the case the reader's deduplication exists for.
    rows = lake_rows(s3.endpoint_url, bucket)
    assert set(rows) == {decode(value).id for _k, value in messages}
    assert set(rows.values()) == {1}
    copies = lake.ids()
    assert sum(copies.values()) > len(copies), between_put_and_commit
    # No name ever changed its bytes: a rewrite, by whoever, puts the same object back.
    final = etags(s3.endpoint_url, bucket)
    assert set(seen) <= set(final)
    assert all(tags == {final[key]} for key, tags in seen.items())


def test_s3_down_for_a_while_the_sink_waits_and_loses_nothing(kafka, s3, bucket, tmp_path):
    target = urlsplit(s3.endpoint_url)
    forwarder = TcpForwarder(target.hostname, target.port)
    topic = f"lake-outage-{uuid.uuid4().hex[:8]}"
    parts = [factories.encoded(n, clients=7, seed=seed) for seed, n in ((1, 300), (2, 500),
                                                                        (3, 400))]
    env = lake_env(kafka.bootstrap_servers, topic, forwarder.url, bucket,
                   SINK_BATCH_MAX_AGE_MS="200", SINK_RETRY_MAX_BACKOFF_S="0.5",
                   S3_TIMEOUT_S="1")
    produce(kafka.bootstrap_servers, topic, parts[0])
    sink = SinkProcess("lake", tmp_path, env).start()
    try:
        wait_until(lambda: written(sink) == 300, what="the first 300 records")

        def retries() -> float:
            return sample(sink.metrics(), "tapline_sink_write_retries_total", sink="lake")

        forwarder.set("reset")  # S3 gone: connections reset
        produce(kafka.bootstrap_servers, topic, parts[1])
        wait_until(lambda: retries() >= 2, what="retries while S3 resets connections")
        forwarder.set("503")  # S3 back but overloaded: 503 Slow Down
        produce(kafka.bootstrap_servers, topic, parts[2])
        before = retries()
        wait_until(lambda: retries() >= before + 2, what="retries while S3 answers 503")
        forwarder.set("hold")  # S3 takes the PUTs but never answers: timeouts
        before = retries()
        wait_until(lambda: retries() >= before + 2, what="retries while S3 does not answer")
        assert written(sink) == 300  # nothing was committed while S3 was down
        assert all(forwarder.accepted[mode] > 0 for mode in ("reset", "503", "hold"))
        forwarder.set("up")
        wait_until(lambda: written(sink) == 1200, timeout=60, what="all 1200 records")
    finally:
        assert sink.stop() == 0
        forwarder.close()
    log = sink.log.read_text()
    assert "could not write" in log
    assert "Task exception was never retrieved" not in log  # aiohttp's, see _no_expect_continue
    check_lake(read_lake(s3.endpoint_url, bucket), topic,
               [value for part in parts for _k, value in part])


def test_a_missing_bucket_is_waited_for_and_said_clearly(kafka, s3, tmp_path):
    topic = f"lake-nobucket-{uuid.uuid4().hex[:8]}"
    name = f"later-{uuid.uuid4().hex[:8]}"
    messages = factories.encoded(50, clients=3)
    produce(kafka.bootstrap_servers, topic, messages)
    env = lake_env(kafka.bootstrap_servers, topic, s3.endpoint_url, name,
                   SINK_RETRY_MAX_BACKOFF_S="0.5", SINK_BATCH_MAX_AGE_MS="200")
    sink = SinkProcess("lake", tmp_path, env)
    sink.start(timeout=60)
    try:
        wait_until(lambda: f"bucket '{name}' does not exist" in sink.log.read_text(),
                   what="the sink to say the bucket is missing")
        assert f"aws s3 mb s3://{name}" in sink.log.read_text()
        client(s3.endpoint_url).create_bucket(Bucket=name)
        wait_until(lambda: written(sink) == 50, timeout=60, what="the records, once it exists")
    finally:
        assert sink.stop() == 0
    check_lake(read_lake(s3.endpoint_url, name), topic, [value for _k, value in messages])


def test_poison_records_go_to_the_dead_letter_topic(kafka, s3, bucket, tmp_path):
    topic = f"lake-poison-{uuid.uuid4().hex[:8]}"
    good = factories.encoded(20, clients=3)
    wrong_version = orjson.loads(good[0][1]) | {"v": 99}
    missing = orjson.loads(good[1][1])
    del missing["request"]["method"]
    bad_time = orjson.loads(good[2][1]) | {"started_at": "yesterday"}
    poison = [
        (b"k1", b"this is not json"),
        (b"k2", orjson.dumps(wrong_version)),
        (b"k3", orjson.dumps(missing)),
        (b"k4", orjson.dumps(bad_time)),
        (b"k5", b'{"truncated": '),
        (b"k6", orjson.dumps(orjson.loads(good[3][1]), option=orjson.OPT_INDENT_2)),
    ]
    # Valid records whose client_ip is hostile: kept, under `unknown`, never outside the prefix
    hostile = [(b"h", orjson.dumps(orjson.loads(value) | {"client_ip": ip}))
               for (_k, value), ip in zip(good[4:8], ["../../x", "a/b", "fe80::1%eth0/../x",
                                                      "\x00\u202e"], strict=True)]
    produce(kafka.bootstrap_servers, topic, good[8:] + hostile + poison)
    sink = SinkProcess("lake", tmp_path,
                       lake_env(kafka.bootstrap_servers, topic, s3.endpoint_url, bucket,
                                SINK_BATCH_MAX_AGE_MS="200")).start()
    try:
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=6)
        assert sorted(value for _k, value, _h in dead) == sorted(v for _k, v in poison)
        reasons = {key: headers["reason"] for key, _v, headers in dead}
        assert "not JSON" in reasons[b"k1"]
        assert "unknown schema version 99" in reasons[b"k2"]
        assert "request.method is missing" in reasons[b"k3"]
        assert "not an ISO 8601 time" in reasons[b"k4"]
        assert "line break" in reasons[b"k6"]
        assert all(h["sink"] == "lake" and h["source_topic"] == topic for _k, _v, h in dead)
        wait_until(lambda: written(sink) == 16, what="the good records")
        assert sample(sink.metrics(), "tapline_sink_dead_lettered_total", sink="lake") == 6
    finally:
        assert sink.stop() == 0
    lake = read_lake(s3.endpoint_url, bucket)
    check_lake(lake, topic, [v for _k, v in good[8:] + hostile])
    unknown = [key for key in lake.objects if key.split("/")[2] == "unknown"]
    assert sum(len(lake.objects[key]) for key in unknown) == 4


def test_oversized_records_go_to_the_dead_letter_topic(kafka, s3, bucket, tmp_path):
    topic = f"lake-oversized-{uuid.uuid4().hex[:8]}"
    good = factories.encoded(12, clients=3)
    big = orjson.loads(good[0][1]) | {"id": str(uuid.uuid4())}
    big["request"] |= {"body": "x" * 300_000, "body_size": 300_000}
    poison = [(b"big-valid", orjson.dumps(big)), (b"big-junk", b"junk" * 75_000)]
    produce(kafka.bootstrap_servers, topic, good[1:6] + poison + good[6:])
    sink = SinkProcess("lake", tmp_path,
                       lake_env(kafka.bootstrap_servers, topic, s3.endpoint_url, bucket,
                                SINK_BATCH_MAX_AGE_MS="200",
                                CAPTURE_MAX_RECORD_BYTES="65536")).start()
    try:
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=2,
                                       timeout=15)
        assert sorted(value for _k, value, _h in dead) == sorted(v for _k, v in poison)
        reasons = {key: headers["reason"] for key, _v, headers in dead}
        assert "oversized" in reasons[b"big-valid"] and "65536" in reasons[b"big-valid"]
        assert "oversized" in reasons[b"big-junk"]
        # Nothing wedged: the records after the poison are in the lake too.
        wait_until(lambda: written(sink) == 11, timeout=15, what="the good records")
    finally:
        assert sink.stop() == 0
    check_lake(read_lake(s3.endpoint_url, bucket), topic, [v for _k, v in good[1:]])
