"""The redactor: headers, the request target, and fingerprints that are no oracle."""

import random
import string

import pytest

from capture.redact import MARKER, PREFIX, Policy, Redactor
from capture.redact.redactor import is_token

# The budget is wall-clock time, and these tests are not about it (its own test sets it): a
# loaded machine must not turn a scan into "over the redaction budget".
R = Redactor(b"test-key", Policy(budget_ms=60_000.0))
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"


def headers(*pairs):
    return dict(map(tuple, R.headers([list(p) for p in pairs])))


def test_credential_headers_by_name_keep_their_scheme():
    out = headers(("Authorization", "Bearer abc.def"), ("Proxy-Authorization", "Basic dTpw"),
                  ("X-Auth-Token", "t1"), ("Private-Token", "t2"), ("X-Goog-Api-Key", "t3"),
                  ("api-key", "t4"), ("X-Amz-Security-Token", "t5"), ("X-Password", "t6"))
    assert out["Authorization"] == "Bearer " + R.fingerprint("abc.def", "header:authorization")
    assert out["Proxy-Authorization"].startswith("Basic hmac:")
    for name in ("X-Auth-Token", "Private-Token", "X-Goog-Api-Key", "api-key",
                 "X-Amz-Security-Token"):
        assert out[name].startswith(PREFIX), name
    assert out["X-Password"] == MARKER


def test_every_cookie_value_goes_and_names_and_attributes_stay():
    out = headers(("Cookie", "sid=abc; theme=dark; flag"),
                  ("Set-Cookie", "id=xyz; Path=/; HttpOnly; SameSite=Lax"))
    names = [part.split("=")[0].strip() for part in out["Cookie"].split(";")]
    assert names == ["sid", "theme", "hmac:" + out["Cookie"].split("hmac:")[-1]]
    assert "abc" not in out["Cookie"] and "dark" not in out["Cookie"]
    assert out["Set-Cookie"].startswith("id=hmac:") and out["Set-Cookie"].endswith(
        "; Path=/; HttpOnly; SameSite=Lax")


def test_url_bearing_headers_and_values_by_shape_under_any_name():
    out = headers(("Referer", "https://app.test/cb?code=c0de&state=s#access_token=frag"),
                  ("Location", "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc123&x=1"),
                  ("Content-Location", "/reset/8f14e45fceea167a5a36dedd4bea2543"),
                  ("X-Debug", JWT), ("X-Owner", "bob@example.com"), ("User-Agent", "curl/8"),
                  ("Link", "<https://api.test/p?page=2&token=t0k>; rel=next"))
    assert "c0de" not in out["Referer"] and "frag" not in out["Referer"]
    assert "state=s" in out["Referer"]
    assert "abc123" not in out["Location"] and "x=1" in out["Location"]
    assert "8f14e45f" not in out["Content-Location"]
    assert out["X-Debug"].startswith(PREFIX) and out["X-Owner"] == MARKER
    assert out["User-Agent"] == "curl/8" and "t0k" not in out["Link"]


def test_look_alike_headers_stay():
    pairs = [("Keep-Alive", "timeout=5"), ("Author", "me"), ("X-Keyboard", "qwerty"),
             ("WWW-Authenticate", 'Bearer realm="x"'), ("Idempotency-Key", "k-1")]
    assert headers(*pairs) == dict(pairs)


def test_the_target():
    path, query, pairs = R.target(
        f"/files/{JWT}/reset/8f14e45fceea167a5a36dedd4bea2543/a-normal-article-slug-2024",
        "page=2&api_key=k1&Password=p1&p%61ssw%6Frd=p2&sig=s1&redirect=https%3A%2F%2Fx%2F%3F"
        "token%3Dt1&q=hello+world")
    for secret in (JWT, "8f14e45f", "k1", "p1", "p2", "s1", "t1"):
        assert secret not in path + query + str(pairs), secret
    assert path.endswith("/a-normal-article-slug-2024")
    assert query.startswith("page=2&api_key=hmac:") and "q=hello+world" in query
    assert pairs[0] == ["page", "2"] and pairs[2] == ["Password", MARKER]
    assert pairs[-1] == ["q", "hello world"]


def test_a_plain_target_is_left_as_it_came():
    assert R.target("/jobs", "page=1&x=%20y") == ("/jobs", "page=1&x=%20y",
                                                   [["page", "1"], ["x", " y"]])


@pytest.mark.parametrize(("segment", "token"), [
    ("8f14e45fceea167a5a36dedd4bea2543", True),
    ("9b2f1c1e-3d4a-4b7e-8f6a-2c1d0e9f8a7b", True),
    ("AbC123dEf456GhI789jKl0", True),
    ("xJ4kLmN9pQ2rS7tUvW0yZa3bC", True),
    ("a-normal-article-slug-2024", False),
    ("ControllerNameForThings", False),
    ("20261201123000000000", False),
    ("short1", False),
    ("hmac:0011223344556677", False),
])
def test_is_token(segment, token):
    assert is_token(segment) is token


def test_hex_tokens_are_tokens_whatever_the_order_of_their_digits():
    # Random hex changes between digit and letter less often than base62 does: about one in
    # a hundred used to read as a word. Any run of 32 hex digits or more is a token.
    rng = random.Random(13)
    for _ in range(20_000):
        hex_part = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        if not (set(hex_part) & set("abcdef") and set(hex_part) & set("0123456789")):
            continue
        tail = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(8))
        for segment in (hex_part, hex_part.upper(), hex_part + tail):
            assert is_token(segment), segment
    assert is_token("0" * 40) is False  # no letter: a number, not a token


def test_fingerprints_are_keyed_by_deployment_and_by_field_class():
    assert R.fingerprint("x", "field:token") == Redactor(b"test-key").fingerprint(
        "x", "field:token")
    assert R.fingerprint("x", "field:token") != Redactor(b"other").fingerprint("x",
                                                                              "field:token")
    # A guess sent in one field cannot be matched against another field's fingerprints.
    assert R.fingerprint("guess", "field:token") != R.fingerprint("guess", "header:x-auth-token")
    assert len(R.fingerprint("x", "c")) == len(PREFIX) + 16


def test_password_class_values_have_no_fingerprint_at_all():
    _, query, _ = R.target("/login", "password=guess1&pin=0000&otp=123456")
    assert query == "password=[redacted]&pin=[redacted]&otp=[redacted]"


def test_values_shaped_like_fingerprints_are_fingerprinted_again():
    forged = R.fingerprint("victim", "header:authorization")
    out = headers(("Authorization", forged), ("X-Api-Key", forged))
    assert out["Authorization"] != forged and out["X-Api-Key"] != forged
    _, query, _ = R.target("/", f"token={forged}")
    assert forged not in query


def test_scrub_many_maps_hits_back_to_each_string():
    strings = ["plain", "token=abc", "", "mail bob@example.com", "x\x00password=y"]
    out = R.scrub_many(strings)
    assert out[0] == "plain" and out[1].startswith("token=hmac:") and out[2] == ""
    assert out[3] == "mail " + MARKER and out[4] == "x\x00password=" + MARKER
    assert R.scrub_many(["nothing", "here"]) is None


def test_emails_can_be_kept():
    keep = Redactor(b"k", Policy(emails=False))
    assert keep.scrub("write to bob@example.com") == "write to bob@example.com"


def test_a_url_header_seen_clean_does_not_let_the_same_path_through():
    redactor = Redactor(b"k")
    token = "AbC123xYz789QwE456rTy0"
    out = dict(map(tuple, redactor.headers([["Location", f"/password/reset/{token}"]])))
    assert token not in out["Location"]
    path, _, _ = redactor.target(f"/password/reset/{token}", "")
    assert token not in path
    again, _, _ = redactor.target(f"/password/reset/{token}", "")
    assert again == path  # the second time from the cache of clean paths: still redacted


def test_basic_credentials_keep_the_user_and_lose_the_password():
    import base64 as b64

    value = "Basic " + b64.b64encode(b"alice:guess1").decode()
    out = headers(("Authorization", value))["Authorization"]
    assert out == f"Basic {R.fingerprint('alice', 'header:authorization:user')}:{MARKER}"
    other = "Basic " + b64.b64encode(b"alice:guess2").decode()
    assert headers(("Authorization", other))["Authorization"] == out  # no oracle


def test_settings_named_in_query_style_parameters_and_tokens_under_any_name():
    query = ("Action=CreateStack&Parameters.member.1.ParameterKey=DbPassword"
             "&Parameters.member.1.ParameterValue=qpw1&Tags.member.1.Key=env"
             "&Tags.member.1.Value=prod")
    _, redacted, pairs = R.target("/", query)
    assert "qpw1" not in redacted and "Tags.member.1.Value=prod" in redacted
    assert ["Parameters.member.1.ParameterKey", "DbPassword"] in pairs
    _, redacted, _ = R.target("/unsubscribe", "t=gtfGePOPvul9cMWE9p50UiWxwagzEvqM")
    assert "gtfGe" not in redacted
    _, redacted, _ = R.target("/magic", "zMHkvsfysXcOCG5t3fLMOQmNh1i1781K")
    assert redacted.startswith("hmac:") and "hmac:hmac" not in redacted
    assert R.target("/x", "q=internationalization")[1] == "q=internationalization"


def test_e_mail_addresses_under_a_fingerprinted_name_get_the_marker():
    assert headers(("X-Auth-Email", "alice@example.com"))["X-Auth-Email"] == MARKER


def test_websocket_subprotocols_carrying_a_token():
    out = headers(("Sec-WebSocket-Protocol", "access_token, opaque-tok1"))
    assert "opaque-tok1" not in out["Sec-WebSocket-Protocol"]
    out = headers(("Sec-WebSocket-Protocol", "graphql-ws, Q9vT2mXk4LpR8sWz1YbN6cJd"))
    assert out["Sec-WebSocket-Protocol"].startswith("graphql-ws, hmac:")
    kept = "graphql-transport-ws, v4.channel.k8s.io"
    assert headers(("Sec-WebSocket-Protocol", kept))["Sec-WebSocket-Protocol"] == kept


def test_a_user_and_password_in_the_clear_is_no_fingerprint():
    # A fingerprint of "user:password" would let anyone test a guess of the password.
    out = headers(("Authorization", "bob:hunter2"), ("Cookie", "remember=bob|hunter2"))
    assert out["Authorization"] == MARKER and out["Cookie"] == "remember=" + MARKER
    token = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert headers(("X-Auth-Token", token))["X-Auth-Token"].startswith(PREFIX)


def test_secrets_behind_more_layers_of_a_target():
    from urllib.parse import quote
    inner = "https://b.example/cb?token=deepTok3n"
    for _ in range(3):
        inner = quote(inner, safe="")
    _path, query, _pairs = R.target("/login", "next=" + inner)
    assert "deepTok3n" not in query
    path, _q, _p = R.target("/api/otp/verify/834201", "")
    assert path == "/api/otp/verify/" + MARKER
    assert R.target("/users/1234/password/reset", "")[0] == "/users/1234/password/reset"
    _path, query, pairs = R.target("/vars", "variable[key]=DB_PASSWORD&variable[value]=vpw1")
    assert "vpw1" not in query and pairs[0] == ["variable[key]", "DB_PASSWORD"]
