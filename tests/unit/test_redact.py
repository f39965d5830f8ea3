"""Redaction: credentials become stable keyed fingerprints, everywhere in a record."""

import orjson

from capture import encode
from capture.redact import Redactor
from tests.unit.test_record import make_record

SECRETS = ["mytoken", "s3cr3t-cookie", "hunter2", "k-123", "jsonpass", "set-me"]


def redacted(**changes):
    record = make_record(**changes)
    record.request.headers += [["Cookie", "session=s3cr3t-cookie"], ["X-Api-Key", "k-123"],
                               ["Content-Type", "application/json"]]
    record.request.query = "page=2&api_key=k-123&Password=hunter2"
    record.request.params = {
        "query": [["page", "2"], ["api_key", "k-123"], ["Password", "hunter2"]],
        "form": [], "json": [["user", "u"], ["password", "jsonpass"], ["n", 7]]}
    record.request.body = '{"user": "u", "password": "jsonpass", "nested": {"token": "mytoken"}}'
    record.response.headers.append(["Set-Cookie", "id=set-me; HttpOnly"])
    return Redactor(b"key").redact(record)


def test_no_secret_is_left_anywhere_in_the_record():
    data = encode(redacted())
    for secret in SECRETS:
        assert secret.encode() not in data, secret


def test_what_is_not_secret_stays():
    record = redacted()
    assert record.request.params["query"][0] == ["page", "2"]
    assert record.request.params["json"][0] == ["user", "u"]
    assert record.request.params["json"][2] == ["n", 7]
    assert record.request.query.startswith("page=2&api_key=hmac%3A")
    body = orjson.loads(record.request.body)
    assert body["user"] == "u" and body["password"].startswith("hmac:")
    assert body["nested"]["token"].startswith("hmac:")
    assert ["Content-Type", "application/json"] in record.request.headers


def test_fingerprints_are_stable_per_key_and_differ_between_keys():
    one, two, other = Redactor(b"key"), Redactor(b"key"), Redactor(b"another")
    assert one.fingerprint("mytoken") == two.fingerprint("mytoken")
    assert one.fingerprint("mytoken") != other.fingerprint("mytoken")
    assert one.fingerprint("mytoken") != one.fingerprint("mytoken2")
    assert one.fingerprint("mytoken").startswith("hmac:") and len(one.fingerprint("x")) == 21
    record = redacted()
    assert ["Authorization", one.fingerprint("mytoken")] in record.request.headers


def test_form_bodies_and_extra_names():
    record = make_record()
    record.request.headers.append(["Content-Type", "application/x-www-form-urlencoded"])
    record.request.body = "token=mytoken&who=me&pin=1234"
    redactor = Redactor(b"key", fields=("token", "pin"))
    redactor.redact(record)
    assert record.request.body.startswith("token=hmac%3A")
    assert "who=me" in record.request.body and "1234" not in record.request.body


def test_redacting_twice_changes_nothing_more():
    redactor = Redactor(b"key")
    once = encode(redactor.redact(make_record()))
    again = encode(redactor.redact(make_record()))
    assert once == again
    record = redactor.redact(make_record())
    assert encode(redactor.redact(record)) == once
