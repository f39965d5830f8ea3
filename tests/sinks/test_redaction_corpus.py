"""The redaction corpus through the real proxy, Kafka, both sinks, PostgreSQL and S3.

More than 250 cases (tests/sinks/redaction_corpus.py), each with secrets of its own, on the
request and the response side, in every content coding: after they went through, every
message on the topic, every row and every lake object is searched for every planted secret,
as it is, with base64 bodies decoded and any compression inside them undone. Nothing may be
found, every case must have its record, and the values of look-alike names must be there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import brotlicffi
import orjson
import psycopg
import pytest
import requests
import zstandard

from stack.support import fresh_database, metric, read_topic, sample, wait_until
from tests.integration import echo_app
from tests.integration.conftest import start_pipeline
from tests.sinks.conftest import SinkProcess, count_rows
from tests.sinks.lake_fixtures import (  # noqa: F401 - fixtures s3 and bucket
    fresh_bucket,
    lake_env,
    read_lake,
    s3_service,
)
from tests.sinks.redaction_corpus import Case, corpus, look_alike_cases
from tests.sinks.test_timescale import sink_env

pytestmark = pytest.mark.integration

CAP = 64 * 1024  # the proxy's body cap here, so that bodies cut at it stay small


def send(pipeline, case: Case) -> None:
    url = pipeline.echo + (f"/canned/{case.id}" if case.response else case.path)
    query = f"case={case.id}" + (f"&{case.query}" if case.query else "")
    if case.response:
        echo_app.CANNED[case.id] = case.response
    answer = requests.request(case.method, f"{url}?{query}", headers=case.headers,
                              data=case.body or None, timeout=30, allow_redirects=False)
    assert answer.status_code < 500, (case.name, answer.status_code)


def decoded_variants(data: bytes) -> list[bytes]:
    """`data`, and what it decodes to: base64, then gzip, zlib, raw deflate, brotli, zstd."""
    out = [data]
    try:
        raw = base64.b64decode(data, validate=True)
        out.append(raw)
    except (binascii.Error, ValueError):
        raw = data
    for undo in (gzip.decompress, zlib.decompress, lambda d: zlib.decompress(d, -15),
                 brotlicffi.decompress, lambda d: zstandard.ZstdDecompressor().decompress(
                     d, max_output_size=64 << 20)):
        with contextlib.suppress(Exception):  # not that coding: nothing to add
            out.append(undo(raw))
    return out


def searchable(record_bytes: bytes) -> bytes:
    """A record's bytes and its bodies in every form they could hide a secret in."""
    parts = [record_bytes]
    record = orjson.loads(record_bytes)
    for message in (record["request"], record.get("response")):
        if message and message.get("body"):
            parts += decoded_variants(message["body"].encode())
    return b"\n".join(parts)


def found_in(haystack: bytes, needle: str) -> bool:
    data = needle.encode()
    return data in haystack or data.lower() in haystack.lower()


def test_no_planted_secret_anywhere_and_look_alikes_kept(kafka, postgres, s3, bucket,
                                                         tmp_path):
    cases = corpus(CAP)
    kept = look_alike_cases()
    assert len(cases) >= 150
    database = fresh_database(postgres.dsn)
    with start_pipeline(tmp_path, kafka.bootstrap_servers,
                        CAPTURE_BODY_MAX_BYTES=str(CAP)) as pipeline:
        timescale = SinkProcess("timescale", tmp_path, sink_env(
            kafka.bootstrap_servers, pipeline.topic, database)).start()
        lake = SinkProcess("lake", tmp_path, lake_env(
            kafka.bootstrap_servers, pipeline.topic, s3.endpoint_url, bucket,
            SINK_BATCH_MAX_AGE_MS="200")).start()
        try:
            for case in cases + kept:
                send(pipeline, case)
            total = len(cases) + len(kept)
            wait_until(lambda: metric(pipeline.metrics, "tapline_proxy_produced_total")
                       >= total, timeout=60, what="every case on the topic")
            assert metric(pipeline.metrics, "tapline_proxy_captures_total") == total
            wait_until(lambda: count_rows(database) == total, timeout=60,
                       what=f"{total} rows")
            wait_until(lambda: sample(lake.metrics(), "tapline_sink_written_total",
                                      sink="lake") >= total, timeout=60, what="the lake")
        finally:
            lake.stop()
            timescale.stop()

    messages = [value for _k, value in read_topic(kafka.bootstrap_servers, pipeline.topic,
                                                  expect=total)]
    by_case: dict[str, list[dict]] = {}
    for value in messages:
        record = orjson.loads(value)
        case_id = next((p[1] for p in record["request"]["params"]["query"] if p[0] == "case"),
                       None)
        by_case.setdefault(case_id, []).append(record)
    missing = [c.name for c in cases + kept if len(by_case.get(c.id, [])) != 1]
    assert missing == [], f"cases without exactly one record: {missing}"

    topic = b"\n".join(searchable(v) for v in messages)
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT row_to_json(h)::text, request_body, request_body_encoding,"
                            " response_body, response_body_encoding FROM http_requests h"
                            ).fetchall()
    table = b"\n".join(
        b"\n".join([row[0].encode()] + [v for body, encoding in ((row[1], row[2]),
                                                                  (row[3], row[4]))
                                        if body for v in decoded_variants(body.encode())])
        for row in rows)
    lake_records = read_lake(s3.endpoint_url, bucket).lines
    assert len(lake_records) == total
    lake_bytes = b"\n".join(searchable(line) for line in lake_records)

    leaks = [(case.name, where, value) for case in cases for value in case.secrets
             for where, haystack in (("topic", topic), ("database", table),
                                     ("lake", lake_bytes)) if found_in(haystack, value)]
    assert leaks == [], f"{len(leaks)} planted secrets found: {leaks[:20]}"

    # Over-redaction: the look-alikes' values are all there, in the record of their case.
    for case in kept:
        record = searchable(orjson.dumps(by_case[case.id][0]))
        lost = [v for v in case.secrets if v.encode() not in record]
        assert lost == [], f"{case.name}: {len(lost)} of {len(case.secrets)} values redacted"

    # What could not be scanned is withheld, and says so.
    for name in ("binary octet-stream", "binary without a content type",
                 "gzip declared but not gzip"):
        case = next(c for c in cases if c.name == name)
        request = by_case[case.id][0]["request"]
        assert request["body"] == "" and request["body_withheld"], name
        assert request["body_digest"].startswith("hmac:"), name


ADVERSARIAL = {
    "form of secrets": ("application/x-www-form-urlencoded", b"password=x&"),
    "name=value text": ("text/plain", b"token=a "),
    "unterminated quotes": ("text/plain", b'secret: "'),
    "@ signs": ("text/plain", b"a@b."),
    "card-like digits": ("text/plain", b"4111 "),
    "secret elements": ("application/xml", b"<password>"),
    "inputs with values": ("text/html", b"<input name=pin value=1>"),
    "deep JSON": ("application/json", b"["),
}


def test_bodies_built_to_be_slow_do_not_hold_up_other_clients(kafka, tmp_path):
    cap = 1 << 20
    with start_pipeline(tmp_path, kafka.bootstrap_servers,
                        CAPTURE_BODY_MAX_BYTES=str(cap)) as pipeline:
        stop = threading.Event()
        normal: list[tuple[float, int]] = []

        def other_client() -> None:
            session = requests.Session()
            while not stop.is_set():
                began = time.monotonic()
                answer = session.get(pipeline.echo + f"/echo/normal-{len(normal)}",
                                     timeout=10)
                normal.append((time.monotonic() - began, answer.status_code))

        def adversary(name: str, content_type: str, unit: bytes) -> int:
            body = (unit * (cap // len(unit) + 1))[:cap]
            return requests.post(f"{pipeline.echo}/upload?adversary={name.replace(' ', '-')}",
                                 data=body, headers={"Content-Type": content_type},
                                 timeout=60).status_code

        thread = threading.Thread(target=other_client)
        thread.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(lambda item: adversary(item[0], *item[1]),
                                         ADVERSARIAL.items()))
        finally:
            stop.set()
            thread.join()
        assert statuses == [200] * len(ADVERSARIAL)
        assert normal and all(status == 200 for _took, status in normal)
        expected = len(ADVERSARIAL) + len(normal)
        wait_until(lambda: metric(pipeline.metrics, "tapline_proxy_produced_total")
                   >= expected, timeout=60, what="every exchange captured")
        records = [orjson.loads(v) for _k, v in read_topic(
            pipeline.bootstrap, pipeline.topic, expect=expected)]
    adversarial = [r for r in records if r["request"]["query"].startswith("adversary=")]
    assert len(adversarial) == len(ADVERSARIAL)
    for record in adversarial:
        request = record["request"]
        # Redacted or withheld, never kept with what it held.
        assert request["body_withheld"] or b"password=x&password=x" not in \
            request["body"].encode()
    assert len([r for r in records if r["request"]["path"].startswith("/echo/normal-")]) \
        == len(normal)
    print(f"\nother client: {len(normal)} requests while the adversaries were sent, slowest "
          f"{max(t for t, _s in normal) * 1000:.0f} ms")
