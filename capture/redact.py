"""Credentials out of a record before it leaves the proxy: pure, no I/O.

Each secret is replaced by a keyed fingerprint (HMAC-SHA256, shortened: `hmac:3f9a...`), so
analysts can group by user without ever seeing a credential. Covered: credential headers
(both ways), and query, form and JSON body fields whose names look like secrets, in the parsed
parameters and in the raw query string and bodies alike.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from urllib.parse import quote_plus, unquote_plus

import orjson

from capture.record import CaptureRecord

DEFAULT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")
DEFAULT_FIELDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "api-key",
                  "credential")
PREFIX = "hmac:"


class Redactor:
    def __init__(self, key: bytes, *, headers: Iterable[str] = DEFAULT_HEADERS,
                 fields: Iterable[str] = DEFAULT_FIELDS) -> None:
        self.key = key
        self.headers = frozenset(h.strip().lower() for h in headers if h.strip())
        self.fields = tuple(f.strip().lower() for f in fields if f.strip())
        names = "|".join(re.escape(f) for f in self.fields) or r"(?!)"
        # A JSON member whose name holds a secret word, with a string value: "name": "value"
        self._json_member = re.compile(
            rf'("(?:[^"\\]|\\.)*?(?i:{names})(?:[^"\\]|\\.)*"\s*:\s*)"((?:[^"\\]|\\.)*)"')

    def fingerprint(self, value: str) -> str:
        digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return PREFIX + digest.hexdigest()[:16]

    def is_secret(self, name: str) -> bool:
        lowered = name.lower()
        return any(field in lowered for field in self.fields)

    def redact(self, record: CaptureRecord) -> CaptureRecord:
        """Replace every credential in `record`, in place; returns it."""
        request, response = record.request, record.response
        request.headers = self._headers(request.headers)
        request.query = self._urlencoded(request.query)
        for source, pairs in request.params.items():
            request.params[source] = [
                [name, self._value(value) if self.is_secret(name) else value]
                for name, value in pairs
            ]
        request.body = self._body(request.body, request.body_encoding, request.headers)
        if response is not None:
            response.headers = self._headers(response.headers)
            response.body = self._body(response.body, response.body_encoding, response.headers)
        return record

    def _headers(self, headers: list[list[str]]) -> list[list[str]]:
        return [[name, self.fingerprint(value)] if name.lower() in self.headers
                and not value.startswith(PREFIX) else [name, value] for name, value in headers]

    def _value(self, value) -> str:
        if isinstance(value, str):
            return value if value.startswith(PREFIX) else self.fingerprint(value)
        return self.fingerprint(orjson.dumps(value).decode())

    def _urlencoded(self, text: str) -> str:
        if not text or not any(field in text.lower() for field in self.fields):
            return text
        parts = []
        for part in text.split("&"):
            name, sep, value = part.partition("=")
            if sep and self.is_secret(unquote_plus(name)):
                part = f"{name}={quote_plus(self._value(unquote_plus(value)))}"
            parts.append(part)
        return "&".join(parts)

    def _body(self, body: str, encoding: str, headers: list[list[str]]) -> str:
        if encoding != "utf-8" or not body:
            return body
        lowered = body.lower()
        if not any(field in lowered for field in self.fields):
            return body
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
        if "x-www-form-urlencoded" in content_type:
            return self._urlencoded(body)
        # JSON, or anything else that holds JSON-looking members: redact those members.
        return self._json_member.sub(
            lambda m: f'{m.group(1)}"{self._value(m.group(2))}"', body)
