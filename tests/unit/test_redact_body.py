"""Bodies through the redactor: decoded within bounds, read by structure, or withheld."""

import base64
import gzip
import zlib

import brotlicffi
import orjson
import pytest
import zstandard

from capture.redact import MARKER, Policy, Redactor, redact_body
from capture.redact import decode as dec

# The budget is wall-clock time, and these tests are not about it (its own test sets it): a
# loaded machine must not turn a scan into "over the redaction budget".
R = Redactor(b"test-key", Policy(budget_ms=60_000.0))
SECRET = "s3cr3t-Value-99"


def body(data: bytes, content_type: str = "", encoding=(), *, cut=False, redactor=R,
         params=True):
    return redact_body(redactor, data, cut=cut, content_type=content_type,
                       content_encoding=list(encoding), params=params)


def raw(b) -> bytes:
    return base64.b64decode(b.text) if b.encoding == "base64" else b.text.encode()


# --- content codings -------------------------------------------------------------------------

COMPRESS = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "x-gzip": lambda d: gzip.compress(d, mtime=0),
    "deflate": zlib.compress,
    "br": brotlicffi.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


@pytest.mark.parametrize("coding", sorted(COMPRESS))
@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded",
                                          "text/plain"])
def test_every_coding_is_undone_before_the_scan(coding, content_type):
    data = (b'{"password": "%s"}' if "json" in content_type else b"a=1&password=%s") \
        % SECRET.encode()
    b = body(COMPRESS[coding](data), content_type, [coding])
    assert SECRET not in b.text and MARKER in b.text
    assert b.content_encoding == coding and b.withheld is None


def test_raw_deflate_gzip_members_and_stacked_codings():
    raw_deflate = zlib.compressobj(wbits=-15)
    data = raw_deflate.compress(b"token=" + SECRET.encode()) + raw_deflate.flush()
    assert SECRET not in body(data, "text/plain", ["deflate"]).text
    two = gzip.compress(b"x=1&", mtime=0) + gzip.compress(b"password=" + SECRET.encode(), mtime=0)
    assert body(two, "text/plain", ["gzip"]).text == "x=1&password=" + MARKER
    stacked = gzip.compress(zlib.compress(b"secret=" + SECRET.encode()), mtime=0)
    b = body(stacked, "text/plain", ["deflate, gzip"])
    assert SECRET not in b.text and b.content_encoding == "deflate, gzip"


BOMBS = {  # the fastest settings: the output is what matters
    "gzip": lambda d: gzip.compress(d, compresslevel=1, mtime=0),
    "deflate": lambda d: zlib.compress(d, 1),
    "br": lambda d: brotlicffi.compress(d, quality=0),
    "zstd": lambda d: zstandard.ZstdCompressor(level=1).compress(d),
}


@pytest.mark.parametrize("coding", sorted(BOMBS))
def test_a_decompression_bomb_stops_at_the_cap(coding):
    bomb = BOMBS[coding](b"A" * (64 << 20))
    small = Redactor(b"k", Policy(body_max_bytes=1 << 20))
    b = body(bomb, "text/plain", [coding], redactor=small)
    assert b.truncated and len(b.text) <= 1 << 20 and b.withheld is None


def test_a_compressed_body_cut_at_the_cap_is_decoded_as_far_as_it_goes():
    data = gzip.compress(("&".join(f"x{i}={i * 7919 % 10007}" for i in range(3000))
                          + "&password=" + SECRET).encode(), mtime=0)
    b = body(data[: len(data) // 2], "text/plain", ["gzip"], cut=True)
    assert b.truncated and b.text.startswith("x0=0&x1=7919&") and SECRET not in b.text


def test_corrupt_or_unknown_coding_is_withheld_with_a_digest():
    for coding, data in (("gzip", b"not gzip at all"), ("compress", b"LZW?"), ("br", b"\xff" * 9)):
        b = body(data, "text/plain", [coding])
        assert b.text == "" and b.withheld and b.digest.startswith("hmac:"), coding


# --- charsets and binary ---------------------------------------------------------------------


def test_declared_charsets_are_honoured():
    text = f"name=José&password={SECRET}"
    for charset in ("iso-8859-1", "utf-16", "cp1252", "iso-8859-15"):
        b = body(text.encode(charset), f"application/x-www-form-urlencoded; charset={charset}")
        assert SECRET not in b.text and "José" in b.text, charset


def test_latin1_without_charset_is_text_for_a_text_type():
    b = body(f"name=Jos\xe9&token={SECRET}".encode("latin-1"), "application/x-www-form-urlencoded")
    assert b.text.startswith("name=José&token=hmac:") and SECRET not in b.text


def test_a_body_cut_inside_a_character_loses_only_that_character():
    data = ("café " * 10 + "token=" + SECRET).encode()
    b = body(data[:-len(SECRET) - 1] + "é".encode()[:1], "text/plain", cut=True)
    assert b.truncated and b.text.startswith("café") and b.withheld is None


@pytest.mark.parametrize(("data", "content_type"), [
    (bytes(range(256)) * 4, "application/octet-stream"),
    (b"\x00\x01password=" + SECRET.encode(), ""),
    (b"PK\x03\x04" + bytes(200), "application/zip"),
    (b"\x89PNG but not really " + SECRET.encode(), "application/octet-stream"),
    (SECRET.encode() + b"\x00" * 10, "image/png"),  # not a PNG's bytes
])
def test_binary_is_withheld(data, content_type):
    b = body(data, content_type)
    assert (b.text, b.withheld) == ("", "binary")
    assert b.digest == R.fingerprint(data, "body")


def test_unknown_or_refused_charset_is_withheld():
    for charset in ("no-such-charset", "idna", "unicode_escape"):
        b = body(b"password=x", f"text/plain; charset={charset}")
        assert b.withheld and "charset" in b.withheld, charset
    assert body(b"\xff\xfe\xfd", "text/plain; charset=utf-8").withheld == \
        "body is not valid utf-8"


def test_inert_media_is_kept_by_its_bytes():
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    b = body(png, "image/png")
    assert b.withheld is None and raw(b) == png


def test_the_keep_policy_keeps_what_cannot_be_scanned():
    keep = Redactor(b"k", Policy(unscanned="keep"))
    data = bytes(range(256))
    b = body(data, "application/octet-stream", redactor=keep)
    assert b.withheld is None and raw(b) == data


def test_textual_bodies_under_a_binary_type_are_scanned():
    b = body(b"plain text token=" + SECRET.encode(), "application/octet-stream")
    assert b.withheld is None and SECRET not in b.text


# --- JSON ------------------------------------------------------------------------------------


def test_json_is_walked_whole():
    doc = {"user": {"name": "bob", "password": SECRET, "profile": {"pin": 1234}},
           "items": [{"token": SECRET + "1"}, {"secret": {"deep": [SECRET + "2"]}}],
           "PassWord": 42, "apiKey": None, "enabled": True, "note": f"ghp_{'a' * 36}",
           "big": 4111111111111111, "pass\\u0077ord": "x"}
    text = orjson.dumps(doc).decode().replace("pass\\\\u0077ord", "pass\\u0077ord")
    b = body(text.encode(), "application/json")
    out = orjson.loads(b.text)
    assert SECRET not in b.text and "1234" not in b.text and "aaaa" not in b.text
    assert out["user"]["password"] == MARKER and out["user"]["name"] == "bob"
    assert out["user"]["profile"]["pin"] == MARKER and out["PassWord"] == MARKER
    assert out["items"][0]["token"].startswith("hmac:") and out["items"][1]["secret"] == MARKER
    assert out["apiKey"] is None and out["enabled"] is True and out["big"] == MARKER
    assert out["password"] == MARKER  # the escaped key, decoded


def test_params_and_body_never_disagree():
    data = orjson.dumps({"user": "bob", "password": SECRET, "nested": {"token": "t"}})
    b = body(data, "application/json")
    assert dict(b.json) == orjson.loads(b.text)
    form = body(b"user=bob&password=" + SECRET.encode() + b"&t=eyJhbGciOi.eyJzdWIi.sig",
                "application/x-www-form-urlencoded")
    assert [v for _n, v in form.form] == [p.partition("=")[2] for p in form.text.split("&")]


def test_json_nested_past_the_parsers_depth_is_withheld():
    b = body(b"[" * 5000 + b"]" * 5000, "application/json")
    assert b.withheld and "depth" in b.withheld


def test_json_with_nothing_to_redact_is_kept_byte_for_byte():
    text = '{ "a" : 1,\n  "b": ["x", "y"] }'
    b = body(text.encode(), "application/json")
    assert b.text == text and b.json == [["a", 1], ["b", ["x", "y"]]]


def test_ndjson_lines_and_graphql():
    lines = b'{"password": "a1"}\n{"ok": 1}\nnot json token=b2\n'
    b = body(lines, "application/x-ndjson")
    assert "a1" not in b.text and "b2" not in b.text and '{"ok":1}' in b.text
    gql = orjson.dumps({"query": 'mutation { login(password: "gq1") { token } }',
                        "variables": {"input": {"password": "gq2", "otp": 123456}}})
    b = body(gql, "application/json")
    assert "gq1" not in b.text and "gq2" not in b.text and "123456" not in b.text
    b = body(b'query { me(token: "gq3") { id } }', "application/graphql")
    assert "gq3" not in b.text


def test_json_cut_at_the_cap_keeps_no_prefix_of_a_secret():
    data = orjson.dumps({"a": "x" * 100, "password": SECRET, "b": "eyJ" + "A" * 40})
    for end in range(100, len(data), 7):
        b = body(data[:end], "application/json", cut=True)
        assert SECRET[:4] not in b.text and "eyJA" not in b.text, end


# --- forms and multipart -----------------------------------------------------------------------


def test_forms_under_a_wrong_or_missing_content_type():
    for content_type in ("application/json", "text/plain", "", "application/octet-stream"):
        b = body(b"user=bob&password=" + SECRET.encode(), content_type)
        assert b.text == "user=bob&password=" + MARKER, content_type


def multipart(*parts: tuple[str, bytes], boundary="XyZ") -> bytes:
    out = b""
    for head, content in parts:
        out += f"--{boundary}\r\n{head}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_fields_files_and_nesting():
    data = multipart(
        ('Content-Disposition: form-data; name="user"', b"bob"),
        ('Content-Disposition: form-data; name="password"', SECRET.encode()),
        ('Content-Disposition: form-data; name="note"', b"see token=" + SECRET.encode() + b"1"),
        ('Content-Disposition: form-data; name="doc"; filename="a.txt"\r\n'
         'Content-Type: text/plain', b"file says token=" + SECRET.encode() + b"2"),
        ('Content-Disposition: form-data; name="meta"\r\nContent-Type: application/json',
         orjson.dumps({"apiKey": SECRET + "3"})),
    )
    b = body(data, "multipart/form-data; boundary=XyZ")
    assert SECRET not in b.text and "bob" in b.text and "[withheld: " in b.text
    assert b.form[0] == ["user", "bob"] and b.form[1] == ["password", MARKER]
    kept = body(data, "multipart/form-data; boundary=XyZ",
                redactor=Redactor(b"k", Policy(form_files="keep")))
    assert "file says" in kept.text and SECRET not in kept.text
    guessed = body(data, "multipart/form-data")  # no boundary parameter: read off the body
    assert SECRET not in guessed.text and "bob" in guessed.text


@pytest.mark.parametrize("disposition", [
    'form-data; name*0="pass"; name*1="word"',  # RFC 2231 continuations
    "form-data; name*0=pa; name*1=ss; name*2=wd",
    "form-data; name*1=\"word\"; name*0=\"pass\"",  # pieces out of order
    "form-data; name*0*=utf-8''pass; name*1*=w%6Frd",  # continuations, percent-encoded
    "form-data; name*=utf-8''%70assword",  # RFC 5987
    "form-data; name*=UTF-8'en'api%5Fkey",
    'form-data; name="note"; name*=utf-8\'\'password',  # spellings that disagree
    'form-data; name="pass\\word"',  # a quoted pair
    'form-data; NAME*0="to"; Name*1="ken"',
])
def test_multipart_names_in_every_spelling(disposition):
    data = multipart(("Content-Disposition: " + disposition, SECRET.encode()),
                     ('Content-Disposition: form-data; name="user"', b"bob"))
    b = body(data, "multipart/form-data; boundary=XyZ")
    assert SECRET not in b.text and "bob" in b.text
    assert SECRET not in str(b.form) and ["user", "bob"] in b.form


def test_multipart_names_that_are_not_secrets_are_kept_whole():
    data = multipart(("Content-Disposition: form-data; name*0=\"comp\"; name*1=\"ass\"",
                      b"north"),
                     ("Content-Disposition: form-data; name*=utf-8''na%C3%AFve", b"yes"))
    b = body(data, "multipart/form-data; boundary=XyZ")
    assert b.form == [["compass", "north"], ["na\u00efve", "yes"]]


def test_multipart_cut_in_a_part():
    data = multipart(('Content-Disposition: form-data; name="user"', b"bob"),
                     ('Content-Disposition: form-data; name="token"', SECRET.encode()))
    for end in range(20, len(data)):
        assert SECRET[:5] not in body(data[:end], "multipart/form-data; boundary=XyZ",
                                      cut=True).text


# --- bounded time ------------------------------------------------------------------------------


def test_over_the_budget_is_withheld_not_waited_for():
    slow = Redactor(b"k", Policy(budget_ms=0.0))
    data = orjson.dumps({"password": "x", "list": ["a"] * 100_000})
    b = body(data, "application/json", redactor=slow)
    assert b.withheld == "over the redaction budget" and b.text == ""


def test_withheld_bodies_digest_the_wire_bytes_per_deployment_key():
    data = b"\x00binary"
    assert body(data).digest != body(data, redactor=Redactor(b"other")).digest
    assert dec.codings(["gzip, identity", "br"]) == ["gzip", "br"]


def test_a_password_inside_a_tokens_object_gets_the_marker_not_a_fingerprint():
    # A fingerprint of the whole object would let anyone test a guess of the password in it.
    doc = {"AuthParameters": {"USERNAME": "alice", "PASSWORD": "pw1"},
           "auth": {"type": "bearer", "value": "tok1", "nested": ["tok2", 7]},
           "auths": {"registry": {"auth": "dXNlcjpwdzI="}},
           "session": {"owner": "bob@example.com"}}
    out = orjson.loads(body(orjson.dumps(doc), "application/json").text)
    assert out["AuthParameters"]["PASSWORD"] == MARKER
    assert out["AuthParameters"]["USERNAME"].startswith("hmac:")
    assert out["auth"]["value"].startswith("hmac:") and out["auth"]["nested"][0] != "tok2"
    assert out["auths"]["registry"]["auth"] == MARKER  # base64 of user:password
    assert out["session"]["owner"] == MARKER  # an e-mail address: guessable, no fingerprint


def test_json_inside_a_string_and_settings_named_by_a_sibling():
    manifest = {"metadata": {"annotations": {"last-applied": orjson.dumps(
        {"env": [{"name": "DB_PASSWORD", "value": "pw3"}]}).decode()}},
        "variables": [{"key": "DEPLOY_TOKEN", "value": "tok4", "protected": True, "masked": True,
                       "raw": False, "environment_scope": "*", "description": None,
                       "variable_type": "env_var", "hidden": False}],
        "Parameters": [{"ParameterKey": "DbPassword", "ParameterValue": "pw5"}],
        "Parameter": {"Name": "/prod/x", "Type": "SecureString", "Value": "pw6"},
        "plain": [{"name": "REGION", "value": "eu-west-1"}]}
    text = body(orjson.dumps(manifest), "application/json").text
    for secret in ("pw3", "tok4", "pw5", "pw6"):
        assert secret not in text, secret
    assert "eu-west-1" in text


def test_ndjson_served_as_json_is_read_line_by_line():
    data = b'{"a": 1}\n{"name": "DB_PASSWORD", "value": "pw7"}\n'
    assert "pw7" not in body(data, "application/json").text


def test_kubernetes_secrets_csv_exports_and_base64_wrapped_values():
    secret = {"apiVersion": "v1", "kind": "Secret",
              "data": {"db": base64.b64encode(b"kpw1").decode()}}
    assert "a3B3MQ" not in body(orjson.dumps(secret), "application/json").text
    listed = {"kind": "SecretList", "items": [secret]}
    assert "a3B3MQ" not in body(orjson.dumps(listed), "application/json").text
    yaml = b"apiVersion: v1\nkind: Secret\ndata:\n  db: a3B3MQ==\n"
    assert body(yaml, "application/yaml").withheld == "a Kubernetes Secret manifest"
    csv_out = body(b"id,email,password\n1,a@x.org,cpw2\n", "text/csv").text
    assert "cpw2" not in csv_out and "a@x.org" not in csv_out and csv_out.startswith("id,")
    wrapped = base64.b64encode(b'{"user": "u", "password": "bpw3"}').decode()
    out = orjson.loads(body(orjson.dumps({"principal": wrapped, "id": "0123456789abcdef0123"}),
                            "application/json").text)
    assert out == {"principal": MARKER, "id": "0123456789abcdef0123"}


def test_json_web_keys_keep_their_public_members():
    jwks = {"keys": [{"kty": "RSA", "kid": "k1", "n": "0vx7agoebG", "e": "AQAB"},
                     {"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg"}]}
    out = orjson.loads(body(orjson.dumps(jwks), "application/json").text)
    assert out["keys"][0] == jwks["keys"][0] and out["keys"][1]["k"] == MARKER


def test_grpc_web_text_is_binary_and_card_floats_are_cards():
    assert body(b"AAAAACAKBWFsaWNl", "application/grpc-web-text").withheld
    assert body(b'{"pan": 4111111111111111.0}', "application/json").text == \
        '{"pan":"[redacted]"}'


@pytest.mark.parametrize(("doc", "secret"), [
    ({"args": ["--password", "jpw1", "--user", "bob"]}, "jpw1"),
    ({"name": "db_password", "sensitive": True, "value": "jpw2"}, "jpw2"),
    ({"key": "TOKEN", "value": "jpw3", "masked": True}, "jpw3"),
    ({"label": "Login", "type": "concealed", "value": "jpw4"}, "jpw4"),
    ({"items": [{"kind": "Secret", "stringData": {"x": "jpw5"}}]}, "jpw5"),
    ({"config": "apiVersion: v1\nkind: Secret\nstringData:\n  db: jpw6\n"}, "jpw6"),
    ({"chain": ["-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B",
                "jpw7AgEAAoIBAQC7\n-----END PRIVATE KEY-----"]}, "MIIEvQIBADANBgkqhkiG9w0B"),
    ({"jwk": {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vu", "d": "jpw8"},
      "note": {"password": "jpw9"}}, "jpw8"),
    ({"jwk": {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vu", "d": "jpw8"},
      "note": {"password": "jpw9"}}, "jpw9"),
])
def test_json_that_says_a_value_is_secret(doc, secret):
    assert secret not in body(orjson.dumps(doc), "application/json").text


def test_json_names_keys_and_lists_that_hold_a_secret():
    doc = {"active_sessions": {"433f3cc02954e1f342ceb3af81c447a1": {"user": "u"}},
           "queryString": [{"name": "code", "value": "oauthcode1"}],
           "Cmd": ["mysql", "-u", "root", "-p", "mpw1", "-h", "db"],
           "password_policy": "strong", "pin_length": 6, "pass_through": True}
    out = orjson.loads(body(orjson.dumps(doc), "application/json").text)
    assert "433f3cc02954e1f342ceb3af81c447a1" not in out["active_sessions"]
    assert out["queryString"][0]["value"] == MARKER and out["Cmd"][4] == MARKER
    assert (out["password_policy"], out["pin_length"], out["pass_through"]) == ("strong", 6, True)


def test_private_keys_in_any_armour_or_none():
    der = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + "A" * 40
    cert = "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTESMBAGA1UE"
    out = orjson.loads(body(orjson.dumps({"material": der, "cert": cert}),
                            "application/json").text)
    assert out == {"material": MARKER, "cert": cert}
    ppk = (b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 1\nAAAA\n"
           b"Private-Lines: 1\nppk1secretline\nPrivate-MAC: 00ff\n")
    assert b"ppk1secretline" not in body(ppk, "text/plain").text.encode()
    ssh2 = (b"---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nssh2secretline\n"
            b"---- END SSH2 ENCRYPTED PRIVATE KEY ----\n")
    assert "ssh2secretline" not in body(ssh2, "text/plain").text


@pytest.mark.parametrize(("text", "secret"), [
    ("jdbc:oracle:thin:scott/opw1@10.0.4.7:1521:ORCL", "opw1"),
    ("sqlplus system/opw2@//db.internal:1521/XEPDB1", "opw2"),
    ("# Netscape HTTP Cookie File\n.example.com\tTRUE\t/\tTRUE\t1999999999\tli_at\tcjar3\n",
     "cjar3"),
    ("C: AUTH PLAIN AGJvYgBzbXRwNA==\n", "AGJvYgBzbXRwNA=="),
    ("S: 334 UGFzc3dvcmQ6\nC: c210cDU=\n", "c210cDU="),
    ("htpasswd -b /etc/nginx/.htpasswd bob hpw6\n", "hpw6"),
    ("smbclient //fs/share -U bob%spw7\n", "spw7"),
    ('$p = ConvertTo-SecureString "cpw8" -AsPlainText -Force', "cpw8"),
    ("aws configure set aws_secret_access_key apw9xyz\n", "apw9xyz"),
    ('password = <<EOT\nhpw10\nEOT\n', "hpw10"),
    ("<p><strong>Temporary password</strong>: spw11</p>", "spw11"),
    ("passwords:\n- lpw12\n- lpw13\nnext: 1\n", "lpw13"),
    ("secrets:\n  db: ypw14\n  cache: ypw15\nreplicas: 2\n", "ypw15"),
    ('<a href="data:text/plain;base64,cGFzc3dvcmQ9ZHB3MTY=">x</a>', "cGFzc3dvcmQ9ZHB3MTY="),
])
def test_secrets_told_by_their_place_in_text(text, secret):
    assert secret not in body(text.encode(), "text/plain").text


def test_a_cut_form_keeps_no_part_of_its_last_value_in_its_parameters():
    b = body(b"a=1&to=alice@exam", "application/x-www-form-urlencoded", cut=True)
    assert b.form == [["a", "1"]] and "alice" not in b.text
