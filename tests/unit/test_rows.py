"""Record -> http_requests row: parameters, bodies cut at the cap, NUL characters, failures."""

import base64
from datetime import UTC, datetime

import orjson
import pytest

from capture import InvalidRecord, decode, decode_body, encode
from sinks.rows import COLUMNS, cut_body, jsonb, merged_params, row_of, row_of_json
from stack import factories
from tests.unit.test_record import make_record


def as_dict(row):
    assert len(row) == len(COLUMNS)
    return dict(zip(COLUMNS, row, strict=True))


def test_row_of_a_finished_exchange():
    row = as_dict(row_of(make_record(), 64 * 1024))
    assert row["time"] == datetime(2026, 11, 28, 10, 0, 0, 1, tzinfo=UTC)
    assert row["ended_at"] == datetime(2026, 11, 28, 10, 0, 0, 2001, tzinfo=UTC)
    assert row["capture_id"] == "0190c1f2-0000-7000-8000-000000000000"
    assert (row["app"], row["client_ip"], row["method"], row["path"]) == (
        "app_a", "192.0.2.7", "POST", "/jobs")
    assert row["status_code"] == 200
    assert orjson.loads(row["params"]) == {"a": ["1", "2"]}
    assert orjson.loads(row["request_headers"])[0] == ["Authorization", "mytoken"]
    assert (row["response_body"], row["response_body_truncated"]) == ("Jobs:\n", False)
    assert row["response_size"] == 6
    assert row["error"] is None


def test_row_of_a_failed_exchange():
    row = as_dict(row_of(make_record(response=None, error="Connection refused"), 1024))
    assert row["status_code"] is None
    assert row["response_headers"] is None and row["response_size"] is None
    assert row["response_body"] is None and row["response_body_truncated"] is False
    assert row["error"] == "Connection refused"


def test_user_agent_is_found_whatever_its_case():
    record = make_record()
    record.request.headers.append(["user-AGENT", "curl/8"])
    assert as_dict(row_of(record, 1024))["user_agent"] == "curl/8"


def test_client_ip_that_is_not_an_ip_becomes_null():
    assert as_dict(row_of(make_record(client_ip="unknown"), 1024))["client_ip"] is None


def test_params_merge_sources_and_keep_repeats():
    params = {"query": [["a", "1"], ["b", "2"], ["a", "3"]], "form": [["a", "4"]],
              "json": [["n", 5], ["obj", {"x": 1}]]}
    assert merged_params(params) == {"a": ["1", "3", "4"], "b": "2", "n": 5, "obj": {"x": 1}}
    assert merged_params({"query": [], "form": [], "json": []}) == {}


@pytest.mark.parametrize(
    ("text", "limit", "kept", "cut"),
    [
        ("hello", 10, "hello", False),
        ("hello", 5, "hello", False),
        ("hello", 3, "hel", True),
        ("héllo", 2, "h", True),  # never half a character
        ("ééé", 4, "éé", True),
        ("", 0, "", False),
    ],
)
def test_utf8_bodies_are_cut_by_bytes_at_character_boundaries(text, limit, kept, cut):
    assert cut_body(text, "utf-8", limit) == (kept, "utf-8", cut)


def test_base64_bodies_are_cut_to_whole_quanta():
    data = bytes(range(256)) * 4
    text = base64.b64encode(data).decode()
    kept, encoding, cut = cut_body(text, "base64", 100)
    assert cut and encoding == "base64"
    assert decode_body(kept, "base64") == data[:99]  # 33 quanta of 3 bytes


def test_body_with_nul_is_stored_as_base64_losslessly():
    kept, encoding, cut = cut_body("a\x00b", "utf-8", 1024)
    assert (encoding, cut) == ("base64", False)
    assert decode_body(kept, encoding) == b"a\x00b"


def test_nul_never_reaches_text_or_jsonb_columns():
    record = make_record(app="app\x00x")
    record.request.headers.append(["X-Nul", "a\x00b"])
    record.request.params["query"].append(["k\x00", "v"])
    row = row_of(record, 1024)
    for value in row:
        if isinstance(value, str):
            assert "\x00" not in value and "\\u0000" not in value
    assert as_dict(row)["app"] == "app\ufffdx"
    assert jsonb(["a\x00"]) == '["a\\ufffd"]'


# --- row_of_json: the sink's path, straight from the bytes -----------------------------------


def _records():
    yield make_record()
    yield make_record(response=None, error="Connection refused")
    yield make_record(client_ip="unknown")
    nul = make_record(app="app\x00x")
    nul.request.headers.append(["X-Nul", "a\x00b"])
    nul.request.body = "a\x00b"
    yield nul
    cased = make_record()
    cased.request.headers[:0] = [["AUTHORIZATION", "hmac:1234"], ["user-AGENT", "curl/8"],
                                 ["User-Agent", "second"], ["Authorization", "hmac:second"]]
    yield cased
    binary = make_record()
    binary.response.body, binary.response.body_encoding = "////" * 300, "base64"
    yield binary
    yield make_record(client_ip="::ffff:10.1.2.3", duration_ms=3)


@pytest.mark.parametrize("limit", [0, 100, 64 * 1024])
def test_row_of_json_is_row_of_the_decoded_record(limit):
    values = [encode(record) for record in _records()]
    values += [value for _key, value in factories.realistic(400)]
    values += [value for _key, value in factories.encoded(100, big_every=7)]
    for value in values:
        assert row_of_json(value, limit) == row_of(decode(value), limit)


def test_row_of_json_keeps_the_first_user_agent_and_fingerprint():
    cased = make_record()
    cased.request.headers[:0] = [["AUTHORIZATION", "hmac:1234"], ["user-AGENT", "curl/8"],
                                 ["User-Agent", "second"]]
    row = as_dict(row_of_json(encode(cased), 1024))
    assert (row["user_agent"], row["principal"]) == ("curl/8", "hmac:1234")


@pytest.mark.parametrize("params", [
    {"query": 5}, {"query": [["a"]]}, {"form": [[1, "x"]]}, {"json": [[["a"], 1]]},
])
def test_malformed_params_are_an_invalid_record(params):
    record = make_record()
    record.request.params = params
    with pytest.raises(InvalidRecord, match=r"request\.params"):
        row_of_json(encode(record), 1024)
    with pytest.raises(InvalidRecord, match=r"request\.params"):
        row_of(record, 1024)


def test_row_of_json_refuses_what_decode_refuses():
    obj = orjson.loads(encode(make_record()))
    obj["response"]["status_code"] = 42
    with pytest.raises(InvalidRecord, match="status code 42"):
        row_of_json(orjson.dumps(obj), 1024)


def test_a_withheld_body_says_why_in_its_column():
    record = make_record()
    record.request.body, record.request.body_withheld = "", "binary"
    record.request.body_digest = "hmac:0011223344556677"
    row = as_dict(row_of(record, 1 << 20))
    assert (row["request_body"], row["request_body_withheld"]) == ("", "binary")
    assert row["response_body_withheld"] is None
    assert row_of_json(encode(record), 1 << 20) == row_of(record, 1 << 20)


@pytest.mark.parametrize(("client_ip", "stored"), [
    ("fe80::1%eth0", "fe80::1"),
    ("FE80::0001%25", "fe80::1"),
    ("fe80::1%", None),  # an empty zone is no address
    ("10.0.0.1%eth0", None),  # IPv4 has no zones
])
def test_ipv6_zone_id_is_dropped_for_inet(client_ip, stored):
    # PostgreSQL's inet refuses `%zone`: the record went to the dead-letter topic.
    record = make_record(client_ip=client_ip)
    assert as_dict(row_of(record, 1024))["client_ip"] == stored
    assert as_dict(row_of_json(encode(record), 1024))["client_ip"] == stored
