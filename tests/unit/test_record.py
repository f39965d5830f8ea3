"""The capture record: encode/decode round trips and validation reasons."""

import base64

import orjson
import pytest

from capture import (
    CaptureRecord,
    InvalidRecord,
    Request,
    Response,
    UnknownVersion,
    canonical_ip,
    decode,
    decode_body,
    decode_json,
    encode,
    encode_body,
    format_time,
    parse_time,
    wire_text,
)
from capture.record import shrink
from stack import factories


def make_record(**changes) -> CaptureRecord:
    fields = dict(
        id="0190c1f2-0000-7000-8000-000000000000",
        app="app_a",
        started_at="2026-11-28T10:00:00.000001Z",
        ended_at="2026-11-28T10:00:00.002001Z",
        duration_ms=2.0,
        client_ip="192.0.2.7",
        client_port=40000,
        request=Request(
            method="POST", scheme="http", host="127.0.0.1:5000", port=5100, path="/jobs",
            query="a=1&a=2", params={"query": [["a", "1"], ["a", "2"]], "form": [], "json": []},
            http_version="HTTP/1.1", headers=[["Authorization", "mytoken"], ["X-A", "1"],
                                              ["x-a", "2"]],
        ),
        response=Response(
            status_code=200, reason="OK", http_version="HTTP/1.1",
            headers=[["Content-Type", "text/plain"]], body="Jobs:\n", body_size=6,
        ),
    )
    fields.update(changes)
    return CaptureRecord(**fields)


def test_round_trip_keeps_every_field():
    record = make_record()
    assert decode(encode(record)) == record


def test_failed_exchange_round_trips_without_response():
    record = make_record(response=None, error="Connection refused")
    again = decode(encode(record))
    assert again.response is None
    assert again.error == "Connection refused"


def test_wire_form_is_plain_json_with_version():
    obj = orjson.loads(encode(make_record()))
    assert obj["v"] == 2
    assert obj["request"]["headers"][0] == ["Authorization", "mytoken"]
    assert obj["response"]["status_code"] == 200


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.pop("id"), "id is missing"),
        (lambda o: o.update(v=3), "unknown schema version 3"),
        (lambda o: o.update(v=True), "unknown schema version True"),
        (lambda o: o["request"].update(body_withheld=5),
         "request.body_withheld has the wrong type"),
        (lambda o: o["response"].update(content_encoding=None),
         "response.content_encoding has the wrong type"),
        (lambda o: o.update(redacted="yes"), "redacted has the wrong type"),
        (lambda o: o.pop("v"), "unknown schema version None"),
        (lambda o: o.update(client_port="80"), "client_port has the wrong type"),
        (lambda o: o.update(client_port=True), "client_port is a boolean"),
        (lambda o: o.update(started_at="yesterday"), "not an ISO 8601 time"),
        (lambda o: o.update(started_at="2026-11-28T10:00:00"), "time without a zone"),
        (lambda o: o.update(duration_ms=-1), "negative duration_ms"),
        (lambda o: o.update(request=[]), "request is missing or not an object"),
        (lambda o: o["request"].pop("method"), "request.method is missing"),
        (lambda o: o["response"].update(status_code=42), "status code 42 is out of range"),
        (lambda o: o["response"].update(body_encoding="rot13"), "body_encoding 'rot13'"),
        (lambda o: o["request"].update(headers=[["a"]]), "not a [name, value] pair"),
        (lambda o: o.update(response=None), "without a response must say why"),
    ],
)
@pytest.mark.parametrize("decoder", [decode, decode_json])
def test_invalid_records_say_why(mutate, reason, decoder):
    obj = orjson.loads(encode(make_record()))
    mutate(obj)
    with pytest.raises(InvalidRecord, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decoder(orjson.dumps(obj))


def test_unknown_version_is_its_own_error():
    obj = orjson.loads(encode(make_record()))
    obj["v"] = 99
    with pytest.raises(UnknownVersion):
        decode(orjson.dumps(obj))


@pytest.mark.parametrize("decoder", [decode, decode_json])
@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b"", b'{"v": 1'])
def test_bytes_that_are_not_a_record_object(data, decoder):
    with pytest.raises(InvalidRecord):
        decoder(data)


# --- decode_json: the sinks' fast path, the same rules as decode ---------------------------


def test_decode_json_gives_the_plain_form_of_what_decode_gives():
    for record in (make_record(), make_record(response=None, error="Connection refused"),
                   factories.make(3, mixed=True, big_every=3), factories.make(199, mixed=True)):
        data = encode(record)
        assert decode_json(data) == orjson.loads(data)
        assert decode(data) == record


# Values of every JSON type, and of the edges the rules care about.
ODD_VALUES = [None, True, False, 0, -1, 1.5, -0.5, 99, 1000, 42, "", "x", "utf-8", "base64",
              "2026-11-28T10:00:00Z", "2026-11-28T10:00:00", "yesterday", [], ["a"], ["a", "b"],
              [["a", "b"]], [["a"]], [["a", 1]], {}, {"a": 1}]


def _paths(obj, prefix=()):
    """Every (path to a key) in a record's JSON form."""
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def test_decode_json_accepts_and_refuses_exactly_what_decode_does():
    """Every field of a record set to every odd value, and removed: both decoders agree on
    whether the record is valid, and on the reason when it is not."""
    base = orjson.loads(encode(make_record()))
    checked = 0
    for path in list(_paths(base)):
        for value in [*ODD_VALUES, KeyError]:
            obj = orjson.loads(encode(make_record()))
            parent = obj
            for key in path[:-1]:
                parent = parent[key]
            if value is KeyError:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
            data = orjson.dumps(obj)
            outcomes = []
            for decoder in (decode, decode_json):
                try:
                    decoder(data)
                    outcomes.append("valid")
                except InvalidRecord as e:
                    outcomes.append(str(e))
            assert outcomes[0] == outcomes[1], (path, value, outcomes)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize(
    ("data", "encoding"),
    [(b"", "utf-8"), (b"hello \xc3\xa9", "utf-8"), (b"\xff\xfe\x00binary", "base64")],
)
def test_bodies_round_trip_byte_for_byte(data, encoding):
    text, used = encode_body(data)
    assert used == encoding
    assert decode_body(text, used) == data


def test_base64_body_is_plain_base64():
    assert encode_body(b"\x89PNG\xff") == (base64.b64encode(b"\x89PNG\xff").decode(), "base64")


def test_bad_base64_is_an_invalid_record():
    with pytest.raises(InvalidRecord, match="base64"):
        decode_body("***", "base64")


def test_wire_text_keeps_every_byte():
    assert wire_text(b"caf\xc3\xa9") == "café"
    raw = b"caf\xe9 \xff"
    assert wire_text(raw).encode("latin-1") == raw


def test_time_format_is_utc_microseconds():
    text = format_time(1_700_000_000.123456)
    assert text == "2023-11-14T22:13:20.123456Z"
    assert parse_time(text).timestamp() == pytest.approx(1_700_000_000.123456)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:DB8::0:1", "2001:db8::1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("not-an-ip", None),
        ("../../etc", None),
        ("", None),
    ],
)
def test_canonical_ip(text, canonical):
    assert canonical_ip(text) == canonical


@pytest.mark.parametrize("decoder", [decode, decode_json])
def test_version_1_records_still_decode(decoder):
    # What the topic holds from before version 2: no content_encoding, body_withheld,
    # body_digest or redacted.
    obj = orjson.loads(encode(make_record()))
    obj["v"] = 1
    del obj["redacted"]
    for message in (obj["request"], obj["response"]):
        for name in ("content_encoding", "body_withheld", "body_digest"):
            del message[name]
    decoded = decoder(orjson.dumps(obj))
    if decoder is decode:
        assert decoded.v == 1 and decoded.redacted is False
        assert (decoded.request.content_encoding, decoded.request.body_withheld,
                decoded.response.body_digest) == ("", None, None)
    else:
        assert decoded["v"] == 1 and "redacted" not in decoded


def test_shrink_cuts_the_larger_body_until_the_record_fits():
    record = make_record()
    record.request.body = "a" * 50_000
    record.response.body = "b" * 10_000
    data = shrink(record, 20_000)
    assert len(data) <= 20_000
    again = decode(data)
    assert again.request.body_truncated and again.request.body == "a" * len(again.request.body)
    assert len(encode(record)) == len(data)


def test_shrink_keeps_base64_in_whole_quanta_then_withholds_the_longest_headers():
    record = make_record()
    record.request.body, record.request.body_encoding = "QUJD" * 10_000, "base64"
    again = decode(shrink(record, 10_000))
    assert len(again.request.body) % 4 == 0
    record = make_record()
    record.request.headers += [["X-Big", "x" * 30_000], ["X-Bigger", "y" * 40_000],
                               ["X-Small", "z" * 100]]
    again = decode(shrink(record, 40_000))
    headers = dict(map(tuple, again.request.headers))
    assert headers["X-Bigger"] == "[withheld: 40000 bytes]" and headers["X-Big"] == "x" * 30_000
    assert headers["X-Small"] == "z" * 100
    record = make_record()
    record.request.headers += [[f"X-{i}", "v" * 60] for i in range(1000)]
    assert len(shrink(record, 10_000)) > 10_000  # names alone: the caller drops it, counted
