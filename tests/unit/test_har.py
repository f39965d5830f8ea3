"""`tapline export --har`'s entries (tapline/har.py), one capture at a time: what each HAR field
holds for the record's cases (text, binary, form and withheld bodies, cookies, a failed
exchange), and that the streamed document is one JSON value with every entry."""

from __future__ import annotations

import base64
import io

import orjson

from capture import CaptureRecord, Request, Response, encode
from stack.factories import make
from tapline.har import entry, write_har


def record(**changes) -> CaptureRecord:
    base = CaptureRecord(
        id="0190a1b2-0000-7000-8000-000000000001", app="app_a",
        started_at="2026-11-28T10:12:44.123456Z", ended_at="2026-11-28T10:12:44.127556Z",
        duration_ms=4.1, client_ip="10.0.0.7", client_port=40123,
        request=Request(method="POST", scheme="http", host="127.0.0.1:5000", path="/jobs",
                        query="page=2&q=a%20b", params={"query": [["page", "2"], ["q", "a b"]],
                                                        "form": [["token", "t1"]], "json": []},
                        http_version="HTTP/1.1",
                        headers=[["Host", "127.0.0.1:5000"],
                                 ["Content-Type", "application/x-www-form-urlencoded"],
                                 ["Cookie", "sid=hmac:0123456789abcdef; theme=dark"],
                                 ["X-Dup", "1"], ["X-Dup", "2"]],
                        body="token=t1", body_size=8, port=5100),
        response=Response(status_code=200, reason="OK", http_version="HTTP/1.1",
                          headers=[["Content-Type", "text/plain"],
                                   ["Set-Cookie", "sid=hmac:fedcba9876543210; Path=/; HttpOnly"]],
                          body="Jobs:\n", body_size=6),
        redacted=True)
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def as_entry(r: CaptureRecord) -> dict:
    return entry(orjson.loads(encode(r)))


def test_an_exchange_becomes_an_entry_with_every_part():
    e = as_entry(record())
    assert e["startedDateTime"] == "2026-11-28T10:12:44.123456Z" and e["time"] == 4.1
    assert e["timings"]["wait"] == 4.1 and e["timings"]["send"] == 0
    req = e["request"]
    assert req["url"] == "http://127.0.0.1:5000/jobs?page=2&q=a%20b"
    assert req["headers"][-2:] == [{"name": "X-Dup", "value": "1"},
                                   {"name": "X-Dup", "value": "2"}]
    assert req["queryString"] == [{"name": "page", "value": "2"}, {"name": "q", "value": "a b"}]
    assert req["cookies"] == [{"name": "sid", "value": "hmac:0123456789abcdef"},
                              {"name": "theme", "value": "dark"}]
    assert req["postData"] == {"mimeType": "application/x-www-form-urlencoded",
                               "text": "token=t1", "params": [{"name": "token", "value": "t1"}]}
    assert req["bodySize"] == 8
    res = e["response"]
    assert (res["status"], res["statusText"], res["content"]["text"]) == (200, "OK", "Jobs:\n")
    assert res["content"] == {"size": 6, "mimeType": "text/plain", "text": "Jobs:\n"}
    assert res["cookies"] == [{"name": "sid", "value": "hmac:fedcba9876543210", "path": "/",
                               "httpOnly": True}]
    assert e["_tapline"] == {"id": record().id, "app": "app_a", "client_ip": "10.0.0.7",
                             "redacted": True}
    assert "comment" not in e


def test_binary_withheld_and_truncated_bodies_say_so():
    r = record()
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    r.response.body, r.response.body_encoding = base64.b64encode(png).decode(), "base64"
    r.response.body_size = len(png)
    r.request.body, r.request.body_withheld, r.request.body_digest = "", "binary", "hmac:1"
    r.request.body_size = 300
    content = as_entry(r)["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == png
    assert content["size"] == len(png)
    e = as_entry(r)
    assert "withheld" in e["request"]["postData"]["comment"] and "300 bytes" in e["comment"]
    r.response.body_truncated, r.response.body_size = True, 10_000
    e = as_entry(r)
    assert e["response"]["content"]["size"] == 10_000
    assert "truncated" in e["response"]["content"]["comment"] and "truncated" in e["comment"]


def test_an_exchange_without_response_has_status_0_and_the_error():
    e = as_entry(record(response=None, error="Connection refused"))
    assert e["response"]["status"] == 0 and e["_error"] == "Connection refused"
    assert e["response"]["content"] == {"size": 0, "mimeType": "x-unknown"}


def test_the_document_streams_every_record_and_skips_what_is_no_record():
    lines = [encode(make(i, mixed=True)) for i in range(50)] + [b"not json"]
    out = io.BytesIO()
    assert write_har(lines, out) == (50, 1)
    har = orjson.loads(out.getvalue())
    assert har["log"]["version"] == "1.2" and har["log"]["creator"]["name"] == "tapline"
    assert [e["_tapline"]["id"] for e in har["log"]["entries"]] == [
        make(i, mixed=True).id for i in range(50)]
    empty = io.BytesIO()
    assert write_har([], empty) == (0, 0) and orjson.loads(empty.getvalue())["log"]["entries"] == []
