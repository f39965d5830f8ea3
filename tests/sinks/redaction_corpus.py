"""The cases of the redaction corpus: realistic exchanges, each carrying secrets of its own.

A case is one exchange through the proxy: a request to the echo app's `/upload` (its answer
is only a size and a digest), or a request to `/canned/<id>` whose answer the test put there.
Every case has its own secrets (random, so no two cases share one, and none is in the code),
planted in one shape: a header, a cookie, the query, the path, or a body of some type, in
every content coding the proxy undoes, on the request side or on the response side. The test
then searches the topic, the database and the lake for every one of them.

`LOOK_ALIKES` are the other side: values under names that merely look like secrets' names,
which must be kept.
"""

from __future__ import annotations

import base64
import gzip
import secrets
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import brotlicffi
import orjson
import zstandard

CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda data: data,
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "deflate": zlib.compress,
    "br": brotlicffi.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@dataclass
class Case:
    name: str
    secrets: list[str]
    method: str = "POST"
    path: str = "/upload"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # The answer, for a case on the response side (served from /canned/<id>).
    response: tuple[int, list[tuple[str, str]], bytes] | None = None
    id: str = ""


def secret(prefix: str = "S3") -> str:
    """A value no one could guess or find by chance: letters and digits, 24 of them."""
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits)
                            for _ in range(22))


def hex_token(n: int = 32) -> str:
    return secrets.token_hex(n // 2)


def jwt() -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': secret()})}." \
           f"{base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b'=').decode()}"


def card() -> str:
    digits = [4] + [secrets.randbelow(10) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def aws_key() -> str:
    return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits)
                            for _ in range(16))


def email() -> str:
    return f"user.{hex_token(10)}@example.com"


def pem() -> str:
    lines = [base64.b64encode(secrets.token_bytes(48)).decode() for _ in range(4)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + \
        "\n-----END RSA PRIVATE KEY-----"


# --- headers, cookies, the query and the path -------------------------------------------------

REQUEST_HEADERS = [
    "X-Api-Key", "X-Auth-Token", "Private-Token", "X-Goog-Api-Key", "api-key",
    "X-Amz-Security-Token", "X-CSRF-Token", "X-XSRF-TOKEN", "X-Session-Id", "X-Access-Token",
    "X-Refresh-Token", "X-Hub-Signature-256", "X-Client-Secret", "X-Password",
    "X-Vault-Token", "Ocp-Apim-Subscription-Key", "DD-API-KEY", "X-Shopify-Hmac-Sha256",
    "X-Hasura-Admin-Secret", "Stripe-Signature", "X-Signature", "Authentication",
    "X-Upstream-Authorization", "X-Forwarded-Access-Token", "X-Functions-Key",
]


def header_cases() -> list[Case]:
    cases = []
    for name in REQUEST_HEADERS:
        value = secret()
        cases.append(Case(f"request header {name}", [value], headers={name: value}))
    for scheme in ("Bearer", "Token", "Basic", ""):
        value = secret()
        shown = base64.b64encode(f"alice:{value}".encode()).decode() if scheme == "Basic" \
            else value
        cases.append(Case(f"Authorization {scheme or 'without a scheme'}", [value, shown],
                          headers={"Authorization": f"{scheme} {shown}".strip()}))
    value = secret()
    cases.append(Case("Proxy-Authorization", [value],
                      headers={"Proxy-Authorization": f"Basic {value}"}))
    one, two, three = secret(), secret(), secret()
    cases.append(Case("cookies", [one, two, three],
                      headers={"Cookie": f"sessionid={one}; theme={two}; csrftoken={three}"}))
    for shape, make in (("JWT", jwt), ("AWS key", aws_key), ("e-mail", email),
                        ("GitHub token", lambda: "ghp_" + secret("x")[:36].ljust(36, "a"))):
        value = make()
        cases.append(Case(f"{shape} under a neutral header name", [value],
                          headers={"X-Debug-Info": f"seen {value} here"}))
    referer, frag = secret(), secret()
    cases.append(Case("Referer with a token in the query", [referer, frag],
                      headers={"Referer": f"https://app.test/cb?access_token={referer}"
                                          f"&page=2#id_token={frag}"}))
    code = secret()
    cases.append(Case("Referer with an OAuth code", [code],
                      headers={"Referer": f"https://app.test/cb?code={code}&state=x"}))
    token = secret()
    cases.append(Case("a token as a WebSocket subprotocol", [token],
                      headers={"Sec-WebSocket-Protocol": f"access_token, {token}"}))
    return cases


def response_header_cases() -> list[Case]:
    cases = []
    for name in ("X-Auth-Token", "X-Api-Key", "X-Session-Token", "X-Upstream-Secret",
                 "X-Amz-Security-Token"):
        value = secret()
        cases.append(Case(f"response header {name}", [value],
                          response=(200, [(name, value)], b"ok")))
    one, two = secret(), secret()
    cases.append(Case("Set-Cookie", [one, two], response=(200, [
        ("Set-Cookie", f"session={one}; Path=/; HttpOnly; Secure"),
        ("Set-Cookie", f"remember={two}; Max-Age=3600")], b"ok")))
    for name, template in (
            ("Location", "https://app.test/welcome?token={}&x=1"),
            ("Location", "https://app.test/cb?code={}&state=s"),
            ("Location", "https://files.test/k?X-Amz-Signature={}&X-Amz-Expires=60"),
            ("Content-Location", "/reset/{}"),
            ("Link", "<https://api.test/items?page=2&sig={}>; rel=next"),
            ("Refresh", "0; url=https://app.test/?session={}")):
        value = hex_token() if "reset" in template else secret()
        cases.append(Case(f"response {name} {template.split('?')[-1][:20]}", [value],
                          response=(302, [(name, template.format(value))], b"")))
    return cases


def query_cases() -> list[Case]:
    cases = []
    for name in ("token", "access_token", "api_key", "apiKey", "password", "client_secret",
                 "sig", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "code",
                 "session_id", "key", "PASSWORD", "refresh-token"):
        value = secret()
        cases.append(Case(f"query {name}", [value], query=f"page=1&{name}={value}&q=x"))
    value = secret()
    cases.append(Case("query name percent-encoded", [value], query=f"p%61ssword={value}"))
    for shape, make in (("JWT", jwt), ("e-mail", email), ("card", card), ("AWS key", aws_key)):
        value = make()
        cases.append(Case(f"query {shape} under a neutral name", [value],
                          query=f"q={value.replace('@', '%40')}&n=1"))
    value = secret()
    cases.append(Case("query redirect URL holding a token", [value],
                      query=f"redirect=https%3A%2F%2Fapp.test%2Fcb%3Ftoken%3D{value}"))
    value = secret()
    cases.append(Case("GraphQL GET variables", [value],
                      query="query=%7Bme%7D&variables=" +
                      f'%7B%22password%22%3A%22{value}%22%7D'))
    return cases


def path_cases() -> list[Case]:
    cases = []
    for shape, make in (("hex token", hex_token), ("JWT", jwt), ("AWS key", aws_key),
                        ("base64url token", lambda: base64.urlsafe_b64encode(
                            secrets.token_bytes(32)).rstrip(b"=").decode()),
                        ("e-mail", email)):
        value = make()
        cases.append(Case(f"path {shape}", [value], path=f"/upload/x/{value}/more"))
    value = secret()
    cases.append(Case("path matrix jsessionid", [value], path=f"/upload;jsessionid={value}"))
    return cases


# --- bodies ----------------------------------------------------------------------------------


def body_shapes() -> list[tuple[str, str, Callable[[], tuple[bytes, list[str]]]]]:
    """(name, content type, a function making a fresh body and its secrets)."""

    def json_flat():
        s = secret()
        return orjson.dumps({"user": "bob", "password": s, "remember": True}), [s]

    def json_nested():
        # A number, but long enough not to be found by chance among the digits of the
        # records' times, ports and digests (a 6-digit one once was, in 198989).
        a, b, c = secret(), secret(), 10**14 + secrets.randbelow(10**15)
        return orjson.dumps({"data": {"user": {"credentials": {"apiKey": a}},
                                      "items": [{"secret": {"v": [b]}}], "pin": c}}), \
            [a, b, str(c)]

    def json_escaped_key():
        s = secret()
        return ('{"pass\\u0077ord": "' + s + '", "TOKEN": "' + s + 'x"}').encode(), \
            [s, s + "x"]

    def json_shapes():
        values = [jwt(), aws_key(), email(), card(), pem()]
        return orjson.dumps({"notes": [f"see {v}" for v in values[:3]],
                             "n": int(values[3]), "key_material": values[4]}), values

    def graphql():
        a, b = secret(), secret()
        return orjson.dumps({
            "query": f'mutation {{ login(username: "bob", password: "{a}") {{ token }} }}',
            "variables": {"input": {"otp": b}}}), [a, b]

    def form():
        a, b = secret(), secret()
        return f"user=bob&password={a}&csrf_token={b}&lang=en".encode(), [a, b]

    def multipart():
        a, b, c, d, e = secret(), secret(), secret(), secret(), secret()
        parts = [('name="user"', b"bob"), ('name="password"', a.encode()),
                 ('name="note"', f"my token={b}".encode()),
                 ('name="file"; filename="notes.txt"\r\nContent-Type: text/plain',
                  f"api_key={c}".encode()),
                 # names as RFC 2231 continuations and RFC 5987, which servers join and decode
                 ('name*0="client_"; name*1="secret"', d.encode()),
                 ("name*=utf-8''access%5Ftoken", e.encode())]
        data = b"".join(b"--BoUnDaRy\r\nContent-Disposition: form-data; " + h.encode()
                        + b"\r\n\r\n" + content + b"\r\n" for h, content in parts)
        return data + b"--BoUnDaRy--\r\n", [a, b, c, d, e]

    def soap():
        a, b = secret(), secret()
        return (f'<?xml version="1.0"?><soap:Envelope xmlns:soap="urn:s"><soap:Header>'
                f'<wsse:Security><wsse:UsernameToken><wsse:Username>bob</wsse:Username>'
                f'<wsse:Password Type="PasswordText">{a}</wsse:Password></wsse:UsernameToken>'
                f'</wsse:Security></soap:Header><soap:Body><login apiKey="{b}"/></soap:Body>'
                f'</soap:Envelope>').encode(), [a, b]

    def html():
        a, b = secret(), secret()
        return (f'<html><head><meta name="csrf-token" content="{a}"></head><body><form>'
                f'<input type="hidden" name="authenticity_token" value="{b}">'
                f'</form></body></html>').encode(), [a, b]

    def text():
        a, b = secret(), secret()
        return f"config:\n  db_password: {a}\n  AWS_SECRET_ACCESS_KEY={b}\n  region: eu\n" \
            .encode(), [a, b]

    def latin1_form():
        s = secret()
        return f"name=Jos\xe9&password={s}".encode("latin-1"), [s]

    def ndjson():
        a, b = secret(), secret()
        return f'{{"token": "{a}"}}\n{{"event": "login", "secret": "{b}"}}\n'.encode(), [a, b]

    def kubernetes():
        a, b = secret(), secret()
        return orjson.dumps({"kind": "List", "items": [
            {"kind": "Secret", "data": {"db": base64.b64encode(a.encode()).decode()}},
            {"kind": "Deployment", "spec": {"containers": [{"env": [
                {"name": "DB_PASSWORD", "value": b}, {"name": "REGION", "value": "eu"}]}]}}]}), \
            [a, base64.b64encode(a.encode()).decode(), b]

    def yaml_env():
        a, b = secret(), secret()
        return (f"env:\n- name: API_TOKEN\n  value: {a}\n- name: REGION\n  value: eu\n"
                f"db:\n  password: &pw {b}\n").encode(), [a, b]

    def logs():
        a, b, c = secret(), secret(), secret()
        return (f"+ mysql -u root -p{a} -e 'select 1'\n"
                f"INSERT INTO users (email, password) VALUES ('x@example.com', '{b}');\n"
                f"curl -u admin:{c} https://api.example.com/\n").encode(), [a, b, c]

    def docker_config():
        a = secret()
        auth = base64.b64encode(f"bot:{a}".encode()).decode()
        return orjson.dumps({"auths": {"registry.example.com": {"auth": auth}}}), [a, auth]

    def keys_in_any_armour():
        # DER of a PKCS#8 private key in base64 with no armour; a PuTTY key file; a token
        # by an issuer's prefix; an Oracle connect string; a Netscape cookie jar line
        der = base64.b64encode(b"\x30\x82\x04\xbd\x02\x01\x00" + secrets.token_bytes(90)).decode()
        putty, token, oracle, cookie = secret(), "zq_" + secret(), secret(), secret()
        return (f"material: {der}\n"
                f"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPublic-Lines: 1\n"
                f"AAAAC3NzaC1lZDI1NTE5\nPrivate-Lines: 1\n{putty}\nPrivate-MAC: 00ff\n"
                f"deploy used {token} ok\n"
                f"url jdbc:oracle:thin:scott/{oracle}@10.0.4.7:1521:ORCL\n"
                f".example.com\tTRUE\t/\tTRUE\t1999999999\tli_at\t{cookie}\n").encode(), \
            [der, putty, token, oracle, cookie]

    def json_by_context():
        a, b, c, d, e = secret(), secret(), secret(), secret(), secret()
        return orjson.dumps({
            "variable": {"key": "DEPLOY", "value": a, "masked": True},
            "Cmd": ["mysql", "-u", "root", "-p", b],
            "active_sessions": {hex_token(32) + c[-8:]: {"user": "bob"}},
            "queryString": [{"name": "code", "value": d}],
            "proxy_auth": f"bob:{e}"}), [a, b, c[-8:], d, e]

    return [
        ("keys in any armour, tokens by prefix", "text/plain", keys_in_any_armour),
        ("JSON secret by its context", "application/json", json_by_context),
        ("Kubernetes objects", "application/json", kubernetes),
        ("YAML config", "application/yaml", yaml_env),
        ("shell and SQL log", "text/plain", logs),
        ("Docker config", "application/json", docker_config),
        ("JSON", "application/json", json_flat),
        ("nested JSON, non-string values", "application/json", json_nested),
        ("JSON with escaped and upper-case keys", "application/json", json_escaped_key),
        ("JSON with secrets by shape", "application/json", json_shapes),
        ("GraphQL", "application/json", graphql),
        ("urlencoded form", "application/x-www-form-urlencoded", form),
        ("form sent as JSON", "application/json", form),
        ("form without a content type", "", form),
        ("multipart form", "multipart/form-data; boundary=BoUnDaRy", multipart),
        ("SOAP", "text/xml; charset=utf-8", soap),
        ("HTML form", "text/html", html),
        ("plain-text config", "text/plain", text),
        ("latin-1 form", "application/x-www-form-urlencoded", latin1_form),
        ("NDJSON", "application/x-ndjson", ndjson),
    ]


def body_cases() -> list[Case]:
    cases = []
    for shape, content_type, make in body_shapes():
        for coding, compress in CODINGS.items():
            for side in ("request", "response"):
                data, planted = make()
                headers = [("Content-Type", content_type)] if content_type else []
                if coding != "identity":
                    headers.append(("Content-Encoding", coding))
                name = f"{side} body: {shape}, {coding}"
                if side == "request":
                    cases.append(Case(name, planted, headers=dict(headers),
                                      body=compress(data)))
                else:
                    cases.append(Case(name, planted, method="GET",
                                      response=(200, headers, compress(data))))
    return cases


def edge_cases(cap: int) -> list[Case]:
    """Bodies cut at the cap (`cap` bytes), binary bodies, charsets."""
    cases = []
    for offset in (-6, -1, 0, 3):
        s = secret()
        head = b'{"filler": "' + b"x" * (cap - 40 + offset) + b'", "password": "'
        cases.append(Case(f"JSON cut at the cap ({offset:+d})", [s[:8]],
                          headers={"Content-Type": "application/json"},
                          body=head + s.encode() + b'", "more": "' + b"y" * 5000 + b'"}'))
    s = jwt()
    cut_text = b"x " * ((cap - len(s) // 2) // 2) + s.encode() + b" tail" * 2000
    cases.append(Case("JWT cut at the cap", [s[: len(s) // 2 - 4]],
                      headers={"Content-Type": "text/plain"}, body=cut_text))
    s = secret()
    cases.append(Case("cut inside a multi-byte character", [s],
                      headers={"Content-Type": "text/plain; charset=utf-8"},
                      body=("é" * (cap // 2 + 100) + f" token={s}").encode()))
    s = secret()
    cases.append(Case("binary octet-stream", [s],
                      headers={"Content-Type": "application/octet-stream"},
                      body=b"\x00\x01\x02" + f"password={s}".encode() + bytes(range(256))))
    s = secret()
    cases.append(Case("binary without a content type", [s],
                      body=b"\xff\xfe\x00" + s.encode() + b"\x00" * 50))
    s = secret()
    cases.append(Case("UTF-16 JSON with its charset", [s],
                      headers={"Content-Type": "application/json; charset=utf-16"},
                      body=orjson.dumps({"secret": s}).decode().encode("utf-16")))
    s = secret()
    cases.append(Case("gzip declared but not gzip", [s],
                      headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
                      body=f"password={s}".encode()))
    s = "hmac:" + hex_token(16)
    cases.append(Case("value shaped like a fingerprint", [s], headers={"Authorization": s}))
    return cases


def corpus(cap: int) -> list[Case]:
    cases = (header_cases() + response_header_cases() + query_cases() + path_cases()
             + body_cases() + edge_cases(cap))
    for i, case in enumerate(cases):
        case.id = f"c{i:03d}"
    return cases


# --- what must be kept -------------------------------------------------------------------------

LOOK_ALIKES = ["monkey", "keyboard", "passenger", "author", "compass", "sidebar", "design",
               "signal", "spinner", "pinned", "bypass", "passport", "hotkey", "turkey",
               "authority", "opinion", "shipping", "tokenizer", "secretary", "inside",
               "max_tokens", "token_type", "public_key", "sort_key", "zip_code",
               "status_code", "keynote", "hockey", "considered", "lesson"]


def look_alike_cases() -> list[Case]:
    """The same names in a query, a form, a JSON body and headers, each with a value of its
    own that must come through."""
    cases = []
    values = {name: f"kept{i:02d}{hex_token(8)}" for i, name in enumerate(LOOK_ALIKES)}
    cases.append(Case("look-alikes in the query", list(values.values()), method="GET",
                      query="&".join(f"{k}={v}" for k, v in values.items())))
    cases.append(Case("look-alikes in a form", list(values.values()),
                      headers={"Content-Type": "application/x-www-form-urlencoded"},
                      body="&".join(f"{k}={v}" for k, v in values.items()).encode()))
    cases.append(Case("look-alikes in JSON", list(values.values()),
                      headers={"Content-Type": "application/json"},
                      body=orjson.dumps(values)))
    cases.append(Case("look-alikes in headers", list(values.values()),
                      headers={f"X-{k.replace('_', '-')}": v for k, v in values.items()}))
    for i, case in enumerate(cases):
        case.id = f"k{i:03d}"
    return cases
