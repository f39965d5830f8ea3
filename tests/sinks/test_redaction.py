"""No credential leaves the proxy: after traffic carrying known secrets in headers, cookies,
query strings and bodies, none of them is anywhere in the topic, the database or the lake."""

from __future__ import annotations

import uuid

import orjson
import psycopg
import pytest
import requests

from capture.redact import Redactor
from stack import factories
from stack.support import fresh_database, produce, read_topic, sample, wait_until
from tests.integration.conftest import REDACT_KEY, start_pipeline
from tests.sinks.conftest import SinkProcess, count_rows
from tests.sinks.lake_fixtures import (  # noqa: F401 - fixtures s3 and bucket
    fresh_bucket,
    lake_env,
    read_lake,
    s3_service,
)
from tests.sinks.test_timescale import sink_env

pytestmark = pytest.mark.integration

SECRETS = ["mytoken", "token-bob", "cookie-s3cr3t", "apikey-777", "pass-w0rd", "hdr-k3y"]


def test_no_secret_reaches_topic_database_or_lake(kafka, postgres, s3, bucket, tmp_path):
    database = fresh_database(postgres.dsn)
    with start_pipeline(tmp_path, kafka.bootstrap_servers) as pipeline:
        timescale = SinkProcess("timescale", tmp_path, sink_env(
            kafka.bootstrap_servers, pipeline.topic, database)).start()
        lake = SinkProcess("lake", tmp_path, lake_env(
            kafka.bootstrap_servers, pipeline.topic, s3.endpoint_url, bucket,
            SINK_BATCH_MAX_AGE_MS="200")).start()
        try:
            session = requests.Session()
            for _ in range(2):
                assert session.post(pipeline.app_a + "/jobs?api_key=apikey-777",
                                    headers={"Authorization": "mytoken",
                                             "Cookie": "sid=cookie-s3cr3t",
                                             "X-Api-Key": "hdr-k3y"}, timeout=10).ok
            assert session.post(pipeline.app_b + "/auth", data={"token": "token-bob"},
                                timeout=10).text == "bob"
            assert session.post(pipeline.echo + "/upload", json={"user": "u",
                                                                 "password": "pass-w0rd"},
                                timeout=10).ok
            expected = 2 * 2 + 1 + 1  # two /jobs with their /auth calls, one /auth, one upload
            wait_until(lambda: count_rows(database) == expected, what=f"{expected} rows")
            wait_until(lambda: sample(lake.metrics(), "tapline_sink_written_total",
                                      sink="lake") >= expected, what="the lake")
        finally:
            lake.stop()
            timescale.stop()

    topic = b"\n".join(v for _k, v in read_topic(kafka.bootstrap_servers, pipeline.topic,
                                                  expect=expected))
    with psycopg.connect(database) as conn:
        table = "\n".join(r[0] for r in conn.execute(
            "SELECT row_to_json(h)::text FROM http_requests h").fetchall())
        principals = conn.execute(
            "SELECT principal, count(*) FROM http_requests WHERE app = 'app_a' "
            "GROUP BY principal").fetchall()
    lake_bytes = b"\n".join(read_lake(s3.endpoint_url, bucket).lines)
    for secret in SECRETS:
        assert secret.encode() not in topic, f"{secret} on the topic"
        assert secret not in table, f"{secret} in the database"
        assert secret.encode() not in lake_bytes, f"{secret} in the lake"
    # The same credential gives the same fingerprint every time: one principal, two requests.
    redactor = Redactor(REDACT_KEY)
    assert principals == [(redactor.fingerprint("mytoken", "header:authorization"), 2)]
    assert redactor.fingerprint("token-bob", "field:token").encode() in topic


def version_1(i: int) -> bytes:
    """A record as the proxy wrote them before version 2 (no content_encoding, body_withheld,
    body_digest, redacted), its credential fingerprinted the old way."""
    obj = orjson.loads(factories.encoded(1, first=i)[0][1])
    obj["v"] = 1
    del obj["redacted"]
    for message in (obj["request"], obj["response"]):
        if message:
            for name in ("content_encoding", "body_withheld", "body_digest"):
                del message[name]
    obj["request"]["headers"] = [["Authorization", "hmac:00112233deadbeef"]]
    return orjson.dumps(obj)


def test_version_1_records_still_load_in_both_sinks(kafka, postgres, s3, bucket, tmp_path):
    database = fresh_database(postgres.dsn)
    topic = f"v1-{uuid.uuid4().hex[:8]}"
    records = [version_1(i) for i in range(40)]
    produce(kafka.bootstrap_servers, topic, [(None, r) for r in records])
    timescale = SinkProcess("timescale", tmp_path, sink_env(
        kafka.bootstrap_servers, topic, database)).start()
    lake = SinkProcess("lake", tmp_path, lake_env(
        kafka.bootstrap_servers, topic, s3.endpoint_url, bucket,
        SINK_BATCH_MAX_AGE_MS="200")).start()
    try:
        wait_until(lambda: count_rows(database) == 40, what="40 rows")
        wait_until(lambda: len(read_lake(s3.endpoint_url, bucket).lines) == 40, what="the lake")
    finally:
        lake.stop()
        timescale.stop()
    with psycopg.connect(database) as conn:
        principals = conn.execute("SELECT DISTINCT principal, request_body_withheld "
                                  "FROM http_requests").fetchall()
    assert principals == [("hmac:00112233deadbeef", None)]
    assert sorted(read_lake(s3.endpoint_url, bucket).lines) == sorted(records)
