"""The TimescaleDB sink on real Kafka and PostgreSQL: rows equal requests, nothing lost, nothing
doubled, poison to the dead-letter topic."""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import psycopg
import pytest
import requests

from capture import decode
from capture.redact import Redactor
from sinks.rows import merged_params
from stack import Postgres, factories
from stack.support import (
    fresh_database,
    produce,
    read_topic,
    read_topic_with_headers,
    sample,
    wait_until,
)
from tests.integration.conftest import REDACT_KEY, start_pipeline
from tests.sinks.conftest import SinkProcess, count_rows

pytestmark = pytest.mark.integration


def sink_env(bootstrap: str, topic: str, database: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CAPTURE_TOPIC": topic,
        "DATABASE_URL": database,
        "SINK_GROUP_ID": f"g-{uuid.uuid4().hex[:8]}",
        **extra,
    }


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_rows_equal_requests_one_to_one(kafka, database, tmp_path):
    with start_pipeline(tmp_path, kafka.bootstrap_servers) as pipeline:
        sink = SinkProcess("timescale", tmp_path,
                           sink_env(kafka.bootstrap_servers, pipeline.topic, database)).start()
        try:
            sent = []

            def call(method, base, path, **kwargs):
                answer = requests.request(method, base + path, timeout=10, **kwargs)
                sent.append((method, path.partition("?")[0], answer.status_code))

            call("GET", pipeline.app_a, "/hello?lang=en&lang=fr")
            call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "mytoken"})
            call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "nope"})
            call("GET", pipeline.app_a, "/missing")
            call("POST", pipeline.app_b, "/auth", data={"token": "token-bob"})
            # app_a's two calls to app_b are captured as well
            expected = len(sent) + 2
            wait_until(lambda: count_rows(database) >= expected, what=f"{expected} rows")
            time.sleep(1)
            assert count_rows(database) == expected

            records = [decode(v) for _k, v in read_topic(
                pipeline.bootstrap, pipeline.topic, expect=expected)]
            table = {str(r[0]): r[1:] for r in rows(database, """
                SELECT capture_id, app, host(client_ip), method, path, status_code, params,
                       request_body, response_body, user_agent
                FROM http_requests""")}
            assert len(table) == len(records) == expected
            for record in records:
                app, ip, method, path, status, params, request_body, response_body, ua = \
                    table[record.id]
                assert (app, ip, method, path, status) == (
                    record.app, record.client_ip, record.request.method, record.request.path,
                    record.response.status_code)
                assert request_body == record.request.body
                assert response_body == record.response.body
                assert ua == next((v for k, v in record.request.headers
                                   if k.lower() == "user-agent"), None)
                assert params == orjson.loads(
                    orjson.dumps(merged_params(record.request.params)))

            assert sorted((m, p, s) for _a, _i, m, p, s, *_ in table.values()) == sorted(
                [*sent, ("POST", "/auth", 200), ("POST", "/auth", 401)])
            hello = next(v for v in table.values() if v[3] == "/hello")
            assert hello[5] == {"lang": ["en", "fr"]}
            bob_token = Redactor(REDACT_KEY).fingerprint("token-bob", "field:token")
            bob = next(v for v in table.values() if v[5] == {"token": bob_token})
            assert (bob[0], bob[4], bob[7]) == ("app_b", 200, "bob")

            # The 5-minute view counts every row, with errors where status >= 400.
            (total, errors), = rows(database,
                                    "SELECT sum(requests), sum(errors) FROM http_requests_5m")
            assert total == expected
            assert errors == sum(1 for *_x, s in sent if s >= 400) + 1  # app_b's 401

            metrics = sink.metrics()
            assert sample(metrics, "tapline_sink_written_total", sink="timescale") == expected
            assert sample(metrics, "tapline_sink_consumer_lag", sink="timescale",
                          partition="0") == 0
        finally:
            assert sink.stop() == 0
        assert "batches" in sink.log.read_text()


def test_redelivery_adds_no_row(kafka, database, tmp_path):
    topic = f"redeliver-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, topic, factories.encoded(300))
    first = SinkProcess("timescale", tmp_path,
                        sink_env(kafka.bootstrap_servers, topic, database)).start()
    wait_until(lambda: count_rows(database) == 300, what="300 rows")
    first.stop()
    # A new group starts from the oldest record: every record is delivered a second time.
    again = SinkProcess("timescale", tmp_path,
                        sink_env(kafka.bootstrap_servers, topic, database)).start()
    try:
        wait_until(lambda: sample(again.metrics(), "tapline_sink_written_total",
                                  sink="timescale") == 300, what="the second pass")
        assert count_rows(database) == 300
    finally:
        again.stop()


def test_sigkill_in_the_middle_of_batches_loses_and_doubles_nothing(kafka, database, tmp_path):
    n = 20_000
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, topic, factories.encoded(n, big_every=50))
    env = sink_env(kafka.bootstrap_servers, topic, database, SINK_BATCH_MAX_RECORDS="500")
    rng = random.Random(7)
    killed_mid_way = []
    for kill in range(4):
        # Each kill lands once the sink has written a random few batches more: the sink
        # writes 20,000 records in about a second, so a kill timed by the clock can miss it.
        target = min(n, count_rows(database) + rng.randint(1, 3000))
        sink = SinkProcess("timescale", tmp_path, env).start()
        wait_until(lambda t=target: count_rows(database) >= t, timeout=60, interval=0.01,
                   what=f"{target} rows before kill {kill + 1}")
        sink.kill()
        done = count_rows(database)
        if 0 < done < n:
            killed_mid_way.append(done)
        if done >= n:
            break
    # The kills must have landed while there was work left, or the test proves nothing.
    assert len(killed_mid_way) >= 2, killed_mid_way
    sink = SinkProcess("timescale", tmp_path, env).start()
    try:
        wait_until(lambda: count_rows(database) >= n, timeout=120, what=f"{n} rows")
        time.sleep(1)
        (count, distinct), = rows(database,
                                  "SELECT count(*), count(DISTINCT capture_id) FROM http_requests")
        assert count == distinct == n
    finally:
        sink.stop()


def test_database_down_for_a_while_the_sink_waits(kafka, tmp_path):
    own = Postgres(tmp_path / "pg")
    own.start()
    try:
        database = fresh_database(own.dsn)
        with start_pipeline(tmp_path, kafka.bootstrap_servers) as pipeline:
            sink = SinkProcess("timescale", tmp_path,
                               sink_env(kafka.bootstrap_servers, pipeline.topic, database,
                                        SINK_RETRY_MAX_BACKOFF_S="1")).start()
            try:
                def burst(n):
                    with ThreadPoolExecutor(4) as pool:
                        return list(pool.map(lambda _: requests.get(
                            pipeline.app_a + "/hello", timeout=10).status_code, range(n)))

                assert burst(50) == [200] * 50
                wait_until(lambda: count_rows(database) == 50, what="50 rows")
                own.stop()
                assert burst(150) == [200] * 150  # captured while the database is down
                wait_until(lambda: sample(sink.metrics(), "tapline_sink_write_retries_total",
                                          sink="timescale") >= 2, what="retries")
                own.start()
                wait_until(lambda: count_rows(database) >= 200, timeout=60, what="200 rows")
                time.sleep(1)
                assert count_rows(database) == 200
                (distinct,), = rows(database,
                                    "SELECT count(DISTINCT capture_id) FROM http_requests")
                assert distinct == 200
            finally:
                sink.stop()
    finally:
        own.close()


def test_poison_records_go_to_the_dead_letter_topic(kafka, database, tmp_path):
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    good = factories.encoded(20)
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
    ]
    produce(kafka.bootstrap_servers, topic, good[3:] + poison)
    sink = SinkProcess("timescale", tmp_path,
                       sink_env(kafka.bootstrap_servers, topic, database)).start()
    try:
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=5)
        assert sorted(value for _k, value, _h in dead) == sorted(v for _k, v in poison)
        reasons = {key: headers["reason"] for key, _v, headers in dead}
        assert "not JSON" in reasons[b"k1"]
        assert "unknown schema version 99" in reasons[b"k2"]
        assert "request.method is missing" in reasons[b"k3"]
        assert "not an ISO 8601 time" in reasons[b"k4"]
        assert all(h["sink"] == "timescale" and h["source_topic"] == topic
                   for _k, _v, h in dead)
        wait_until(lambda: count_rows(database) == 17, what="the good rows")
        # The counters move after the commit, which follows the rows becoming visible.
        wait_until(lambda: sample(sink.metrics(), "tapline_sink_dead_lettered_total",
                                  sink="timescale") == 5, timeout=10, what="5 dead letters")
        time.sleep(0.5)
        assert sample(sink.metrics(), "tapline_sink_dead_lettered_total",
                      sink="timescale") == 5
    finally:
        sink.stop()


def test_two_sinks_in_one_group_share_the_partitions(kafka, database, tmp_path):
    n = 10_000
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, topic, factories.encoded(n, clients=200), partitions=4)
    env = sink_env(kafka.bootstrap_servers, topic, database, SINK_BATCH_MAX_RECORDS="100")
    first = SinkProcess("timescale", tmp_path, env).start()
    wait_until(lambda: count_rows(database) > 0, what="first rows")
    # The second member makes the group rebalance: the first commits what it wrote for the
    # partitions it gives up, and the second goes on from there.
    second = SinkProcess("timescale", tmp_path, env).start()
    try:
        wait_until(lambda: "assigned" in second.log.read_text(), what="the rebalance")
        # Records that arrive now spread over partitions that both members hold.
        produce(kafka.bootstrap_servers, topic,
                factories.encoded(n, clients=200, seed=1), partitions=4)
        wait_until(lambda: count_rows(database) >= 2 * n, timeout=90, what=f"{2 * n} rows")
        time.sleep(1)
        assert count_rows(database) == 2 * n
        written = [sample(s.metrics(), "tapline_sink_written_total", sink="timescale")
                   for s in (first, second)]
        assert all(w > 0 for w in written), written
    finally:
        second.stop()
        first.stop()


def oversized_poison(good: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Records too big for a sink whose CAPTURE_MAX_RECORD_BYTES is 64 KiB, and one that
    PostgreSQL refuses as data: a client port beyond its integer, which the record's own
    checks let through (they do not bound the port)."""
    big = orjson.loads(good[0][1]) | {"id": str(uuid.uuid4())}
    big["request"] |= {"body": "x" * 300_000, "body_size": 300_000}
    wide_port = orjson.loads(good[1][1]) | {"id": str(uuid.uuid4()), "client_port": 1 << 40}
    return [(b"big-valid", orjson.dumps(big)), (b"big-junk", b"junk" * 75_000),
            (b"wide-port", orjson.dumps(wide_port))]


def test_oversized_records_go_to_the_dead_letter_topic(kafka, database, tmp_path):
    topic = f"oversized-{uuid.uuid4().hex[:8]}"
    good = factories.encoded(12)
    poison = oversized_poison(good[:2])
    # A long incompressible path: PostgreSQL refused it while a B-tree index held the path
    # (an index entry has a size limit); no index does since migration 0005, so it is stored.
    long_path = orjson.loads(good[2][1]) | {"id": str(uuid.uuid4())}
    long_path["request"]["path"] = "/" + random.Random(7).randbytes(30_000).hex()
    produce(kafka.bootstrap_servers, topic,
            good[3:7] + poison + [(b"long-path", orjson.dumps(long_path))] + good[7:])
    sink = SinkProcess("timescale", tmp_path, sink_env(
        kafka.bootstrap_servers, topic, database, CAPTURE_MAX_RECORD_BYTES="65536")).start()
    try:
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=3,
                                       timeout=15)
        assert sorted(value for _k, value, _h in dead) == sorted(v for _k, v in poison)
        reasons = {key: headers["reason"] for key, _v, headers in dead}
        assert "oversized" in reasons[b"big-valid"] and "65536" in reasons[b"big-valid"]
        assert "oversized" in reasons[b"big-junk"]
        assert "refused by timescale" in reasons[b"wide-port"]
        # Nothing wedged: the records after the poison are written too, the long path with them.
        wait_until(lambda: count_rows(database) == 10, timeout=15, what="the good rows")
        with psycopg.connect(database) as conn:
            (stored,), = conn.execute("SELECT path FROM http_requests WHERE capture_id = %s",
                                      (long_path["id"],)).fetchall()
        assert stored == long_path["request"]["path"]
    finally:
        sink.stop()


def test_an_ipv6_client_with_a_zone_id_is_stored(kafka, database, tmp_path):
    # inet refuses `fe80::1%eth0`: such a record went to the dead-letter topic, not the table.
    topic = f"zone-{uuid.uuid4().hex[:8]}"
    records = [(b"fe80::1", orjson.dumps(orjson.loads(value) | {"client_ip": "fe80::1%eth0"}))
               for _key, value in factories.encoded(3)]
    produce(kafka.bootstrap_servers, topic, records)
    sink = SinkProcess("timescale", tmp_path,
                       sink_env(kafka.bootstrap_servers, topic, database)).start()
    try:
        wait_until(lambda: count_rows(database) == 3, timeout=15, what="the rows")
        assert rows(database, "SELECT DISTINCT host(client_ip) FROM http_requests") == [
            ("fe80::1",)]
    finally:
        sink.stop()


def _dlq_limit(bootstrap: str, topic: str, max_message_bytes: int, *, create: bool) -> None:
    """Make the dead-letter topic with a small max.message.bytes, or shrink it."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from capture.topics import topic_message_limit

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            configs = {"max.message.bytes": str(max_message_bytes)}
            if create:
                await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
            else:
                await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
        finally:
            await admin.close()
        for _ in range(100):
            if await topic_message_limit(bootstrap, topic) == max_message_bytes:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{topic}: max.message.bytes is not {max_message_bytes}")

    asyncio.run(go())


def test_a_dead_letter_too_big_for_the_dead_letter_topic_is_cut(kafka, database, tmp_path):
    # An existing dead-letter topic that takes less than the record: the sink retried the
    # dead letter forever and the partition stopped there.
    import hashlib

    topic = f"small-dlq-{uuid.uuid4().hex[:8]}"
    _dlq_limit(kafka.bootstrap_servers, f"{topic}.dlq", 20_000, create=True)
    good = factories.encoded(14)
    junk = random.Random(3).randbytes(150_000)
    produce(kafka.bootstrap_servers, topic, [*good[:5], (b"junk", junk), *good[5:10]],
            partitions=1)
    sink = SinkProcess("timescale", tmp_path, sink_env(
        kafka.bootstrap_servers, topic, database, CAPTURE_MAX_RECORD_BYTES="65536",
        SINK_BATCH_MAX_RECORDS="2")).start()  # the records after it come in later batches
    try:
        wait_until(lambda: count_rows(database) == 10, timeout=20, what="the rows after it")
        [(key, value, headers)] = read_topic_with_headers(
            kafka.bootstrap_servers, f"{topic}.dlq", expect=1, timeout=10)
        assert key == b"junk" and "oversized" in headers["reason"]
        assert 0 < len(value) < 20_000 and junk.startswith(value)
        assert (headers["truncated"], headers["original_size"], headers["original_sha256"],
                headers["source_offset"]) == (
            "true", str(len(junk)), hashlib.sha256(junk).hexdigest(), "5")

        # The topic takes less still than the sink learnt: the reference alone goes.
        _dlq_limit(kafka.bootstrap_servers, f"{topic}.dlq", 2_000, create=False)
        produce(kafka.bootstrap_servers, topic, [(b"junk2", junk), *good[10:]], partitions=1)
        wait_until(lambda: count_rows(database) == 14, timeout=20, what="the rows after it")
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=2,
                                       timeout=10)
        [(value, headers)] = [(v, h) for k, v, h in dead if k == b"junk2"]
        assert value == b"" and headers["truncated"] == "reference"
        assert (headers["original_size"], headers["source_offset"]) == (str(len(junk)), "11")
    finally:
        sink.stop()
