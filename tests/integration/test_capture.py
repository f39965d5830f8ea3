"""End to end: clients -> proxy -> apps, and exactly one record per exchange on Kafka."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
import requests

from capture import decode, decode_body
from capture.redact import Redactor
from stack.support import metric, read_topic
from tests.integration import echo_app
from tests.integration.conftest import REDACT_KEY, start_pipeline

pytestmark = pytest.mark.integration

JOBS = "Jobs:\nTitle: Devops\nDescription: Awesome\n"
CAP = 64 * 1024


def fingerprint(value: str, cls: str = "header:authorization") -> str:
    return Redactor(REDACT_KEY).fingerprint(value, cls)


def token(value: str) -> str:
    return fingerprint(value, "field:token")


@pytest.fixture(scope="module")
def pipeline(kafka, tmp_path_factory):
    # These tests check that bytes pass whole and land as they were: binary bodies are kept
    # (by default they are withheld, tests/sinks/test_redaction_corpus.py).
    with start_pipeline(tmp_path_factory.mktemp("capture"), kafka.bootstrap_servers,
                        CAPTURE_BODY_MAX_BYTES=str(CAP),
                        CAPTURE_UNSCANNED_BODIES="keep") as started:
        yield started


def records_of(pipeline, expect, skip=0):
    """The records on the pipeline's topic, less the first `skip` (earlier tests' traffic)."""
    messages = read_topic(pipeline.bootstrap, pipeline.topic, expect=skip + expect)[skip:]
    records = [decode(value) for _key, value in messages]
    for (key, _value), record in zip(messages, records, strict=True):
        assert key == record.client_ip.encode()
    return records


def test_every_exchange_is_one_record_with_what_the_client_saw(pipeline):
    sent = []  # (app, method, path, status, request body, response body)

    def call(method, base, path, app, stored_body=None, **kwargs):
        response = requests.request(method, base + path, timeout=10, **kwargs)
        body = kwargs.get("data", b"") if stored_body is None else stored_body
        sent.append((app, method, path.partition("?")[0], response.status_code,
                     body, response.content))
        return response

    assert call("GET", pipeline.app_a, "/hello", "app_a").text == "Hello there"
    ok = call("POST", pipeline.app_a, "/jobs", "app_a", headers={"Authorization": "mytoken"})
    assert (ok.status_code, ok.text) == (200, JOBS)
    assert call("POST", pipeline.app_a, "/jobs", "app_a",
                headers={"Authorization": "bad"}).status_code == 401
    assert call("POST", pipeline.app_a, "/jobs", "app_a").status_code == 401  # no header
    assert call("GET", pipeline.app_a, "/jobs", "app_a").status_code == 405
    assert call("GET", pipeline.app_a, "/nope?x=1&x=2", "app_a").status_code == 404
    # The record keeps the form, with the credential fingerprinted.
    auth = call("POST", pipeline.app_b, "/auth", "app_b", data=b"token=token-alice",
                stored_body=f"token={token('token-alice')}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (auth.status_code, auth.text) == (200, "alice")

    # Two /jobs calls with a token made app_a ask app_b through the proxy: two more exchanges.
    records = records_of(pipeline, expect=len(sent) + 2)
    assert len(records) == len(sent) + 2
    assert len({r.id for r in records}) == len(records)

    alice = [["token", token("token-alice")]]
    internal = [r for r in records if r.app == "app_b" and r.request.path == "/auth"
                and r.request.params["form"] != alice]
    assert sorted(r.request.params["form"][0][1] for r in internal) == sorted(
        [token("bad"), token("mytoken")])
    assert sorted(r.response.status_code for r in internal) == [200, 401]

    client_side = [r for r in records if r not in internal]
    assert len(client_side) == len(sent)
    unmatched = list(client_side)
    for app, method, path, status, body, content in sent:
        record = next(
            (r for r in unmatched
             if (r.app, r.request.method, r.request.path, r.response.status_code)
             == (app, method, path, status)
             and decode_body(r.request.body, r.request.body_encoding) == body
             and decode_body(r.response.body, r.response.body_encoding) == content),
            None,
        )
        assert record is not None, f"no record of {method} {path} -> {status}"
        unmatched.remove(record)
        assert record.client_ip == "127.0.0.1"
        assert record.error is None
        assert record.duration_ms >= 0
    assert unmatched == []

    nope = next(r for r in client_side if r.request.path == "/nope")
    assert nope.request.query == "x=1&x=2"
    assert nope.request.params["query"] == [["x", "1"], ["x", "2"]]
    jobs = next(r for r in client_side if r.request.path == "/jobs"
                and ["Authorization", fingerprint("mytoken")] in r.request.headers)
    assert jobs.response.body == JOBS
    assert jobs.request.host == pipeline.app_a.removeprefix("http://")
    assert metric(pipeline.metrics, "tapline_proxy_captures_total") >= len(records)


def count_on_topic(pipeline) -> int:
    return len(read_topic(pipeline.bootstrap, pipeline.topic, expect=0, settle=0.5))


def test_bodies_over_the_cap_pass_whole_and_are_captured_in_part(pipeline):
    before = count_on_topic(pipeline)
    upload = echo_app.pattern(3_000_000)
    answer = requests.post(pipeline.echo + "/upload", data=upload, timeout=30)
    assert answer.text == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}"
    download = requests.get(pipeline.echo + "/bytes?n=2500000", timeout=30)
    assert download.content == echo_app.pattern(2_500_000)
    chunked = requests.post(pipeline.echo + "/upload", data=iter([b"ab"] * 1000), timeout=30)
    assert chunked.text.startswith("2000 ")

    records = records_of(pipeline, expect=3, skip=before)
    assert len(records) == 3 and {r.app for r in records} == {"echo"}
    up = next(r for r in records if r.request.body_size == 3_000_000)
    assert up.request.body_truncated
    assert decode_body(up.request.body, up.request.body_encoding) == upload[:CAP]
    down = next(r for r in records if r.request.path == "/bytes")
    assert (down.response.body_size, down.response.body_truncated) == (2_500_000, True)
    assert decode_body(down.response.body, "base64") == echo_app.pattern(CAP)
    small = next(r for r in records if r.request.body_size == 2000)
    assert (small.request.body, small.request.body_truncated) == ("ab" * 1000, False)


def test_the_seeds_ab_command_is_captured_one_to_one(pipeline):
    ab = shutil.which("ab")
    assert ab, "ab (apache2-utils) is needed; .ci/run installs it"
    before = count_on_topic(pipeline)
    result = subprocess.run(
        [ab, "-m", "POST", "-H", "Authorization: mytoken", "-n", "500", "-c", "4",
         pipeline.app_a + "/jobs"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "Complete requests:      500" in result.stdout
    assert "Failed requests:        0" in result.stdout
    assert "Non-2xx responses" not in result.stdout

    raw = [value for _k, value in read_topic(
        pipeline.bootstrap, pipeline.topic, expect=before + 1000)[before:]]
    records = records_of(pipeline, expect=1000, skip=before)
    assert len(records) == 1000
    assert len({r.id for r in records}) == 1000
    jobs = [r for r in records if r.app == "app_a"]
    auth = [r for r in records if r.app == "app_b"]
    assert len(jobs) == len(auth) == 500
    assert {(r.request.method, r.request.path, r.response.status_code) for r in jobs} == {
        ("POST", "/jobs", 200)}
    assert {r.response.body for r in jobs} == {JOBS}
    assert {r.response.body for r in auth} == {"density"}
    assert all(["Authorization", fingerprint("mytoken")] in r.request.headers for r in jobs)
    assert not any(b"mytoken" in value for value in raw)


def test_a_record_over_the_topic_cap_is_cut_to_fit_and_delivered(kafka, tmp_path):
    # Random bytes do not compress: the record's size on the wire is what Kafka checks.
    upload = os.urandom(400_000)
    with start_pipeline(tmp_path, kafka.bootstrap_servers,
                        CAPTURE_MAX_RECORD_BYTES=str(128 * 1024),
                        CAPTURE_QUEUE_MAX_BYTES=str(1 << 20),
                        CAPTURE_UNSCANNED_BODIES="keep") as small:
        answer = requests.post(small.echo + "/upload", data=upload, timeout=30)
        assert answer.text == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}"
        (message,) = read_topic(small.bootstrap, small.topic, expect=1)
        record = decode(message[1])
        assert len(message[1]) <= 128 * 1024
        assert (record.request.body_size, record.request.body_truncated) == (400_000, True)
        kept = decode_body(record.request.body, record.request.body_encoding)
        assert kept and upload.startswith(kept)
        assert metric(small.metrics, "tapline_proxy_produced_total") == 1
