"""The capture record, version 2: one HTTP exchange as it crossed the proxy.

This module is the contract between the proxy, which writes records, and the sinks, which read
them. It is pure (no I/O, nothing from mitmproxy) so that both sides can import it. A record is
JSON on the wire (see docs/record.md for the field table and an example).

With redaction on (`redacted`), a body is kept decoded (`content_encoding` says which coding
was undone) and redacted, or withheld (`body_withheld` says why, `body_digest` is a keyed digest
of its bytes); with it off, as it was on the wire. Either way as text when it is text (valid
UTF-8), otherwise base64, so a record is always valid JSON. Version 1 records (no
`content_encoding`, `body_withheld`, `body_digest`, `redacted`) still decode, with those
fields at their defaults.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal

import orjson

SCHEMA_VERSION = 2
# What redaction leaves in a value (docs/security.md), part of the record's contract: readers
# (the sinks' `principal` column) tell a fingerprint by it.
REDACTED_MARKER = "[redacted]"
FINGERPRINT_PREFIX = "hmac:"
VERSIONS = (1, 2)  # what `decode` reads

BodyEncoding = Literal["utf-8", "base64"]
Pair = list[Any]  # [name, value]: JSON has no tuples


class InvalidRecord(ValueError):
    """Bytes that are not a valid capture record; the message says what is wrong."""


class UnknownVersion(InvalidRecord):
    """A record written under a schema version this code does not know."""


@dataclass(slots=True)
class Request:
    """The request as the client sent it.

    `path` is the raw request path without the query string (percent-escapes kept), `query`
    the raw query string without the `?`. `headers` are `[name, value]` pairs in the order
    received, duplicates and case kept. `params` holds parsed parameters by source, each a list
    of `[name, value]` pairs with repeated names kept: `query` and `form` (urlencoded body)
    values are strings, `json` values are the members of a JSON object body, of any JSON type.
    `body` is text when `body_encoding` is "utf-8", base64 otherwise; it holds at most the
    proxy's body cap. `body_size` is the full size in bytes on the wire and `body_truncated`
    says whether the body was cut (at the cap, or to fit the record). `content_encoding` is
    the Content-Encoding undone before redaction ("" when none); `body_withheld` is why the
    body is not kept (None when it is) and `body_digest` then a keyed digest of its bytes.
    """

    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: str
    params: dict[str, list[Pair]]
    http_version: str
    headers: list[Pair]
    body: str = ""
    body_encoding: BodyEncoding = "utf-8"
    body_size: int = 0
    body_truncated: bool = False
    content_encoding: str = ""
    body_withheld: str | None = None
    body_digest: str | None = None


@dataclass(slots=True)
class Response:
    """The response as the client received it; body fields as in `Request`."""

    status_code: int
    reason: str
    http_version: str
    headers: list[Pair]
    body: str = ""
    body_encoding: BodyEncoding = "utf-8"
    body_size: int = 0
    body_truncated: bool = False
    content_encoding: str = ""
    body_withheld: str | None = None
    body_digest: str | None = None


@dataclass(slots=True)
class CaptureRecord:
    """One exchange. `response` is None and `error` says why when there was no response.

    `id` is a UUIDv7 (time-ordered, unique); `started_at` is when the request's first byte
    arrived and `ended_at` when the response's last byte left (or when the exchange failed),
    both UTC with microseconds; `duration_ms` is the difference. `app` names the proxy listener
    the request came in on. `client_ip` is the canonical text form of the client's address
    (the peer, or the X-Forwarded-For client when the peer is a trusted proxy). `redacted`
    says whether the proxy redacted the record (docs/security.md).
    """

    id: str
    app: str
    started_at: str
    ended_at: str
    duration_ms: float
    client_ip: str
    client_port: int
    request: Request
    response: Response | None = None
    error: str | None = None
    redacted: bool = False
    v: int = field(default=SCHEMA_VERSION)


# --- bodies and text -----------------------------------------------------------------------


def encode_body(data: bytes) -> tuple[str, BodyEncoding]:
    """Body bytes as JSON-safe text: the text itself when valid UTF-8, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_body(text: str, encoding: str) -> bytes:
    """The inverse of `encode_body`."""
    if encoding == "utf-8":
        return text.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise InvalidRecord(f"body is not valid base64: {e}") from None
    raise InvalidRecord(f"unknown body encoding {encoding!r}")


def wire_text(data: bytes) -> str:
    """Header names and values, paths, query strings: UTF-8 where valid, else ISO-8859-1.

    ISO-8859-1 maps every byte to one character, so nothing is lost and the original bytes are
    `text.encode("latin-1")`; it is also what HTTP historically specified for header values.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def format_time(epoch_s: float) -> str:
    """An epoch timestamp as ISO 8601 in UTC with microseconds, e.g. 2026-11-28T10:12:44.123456Z."""
    # isoformat is strftime("%Y-%m-%dT%H:%M:%S.%f") without its format parsing; minus "+00:00".
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """The inverse of `format_time` (accepts any ISO 8601 time with a zone)."""
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise InvalidRecord(f"not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise InvalidRecord(f"time without a zone: {text!r}")
    return parsed


@functools.lru_cache(maxsize=1 << 16)
def canonical_ip(text: str) -> str | None:
    """The canonical text form of an IP address, or None when `text` is not one.

    IPv4-mapped IPv6 addresses (what a dual-stack socket reports for IPv4 peers) become the
    IPv4 address, so one client has one spelling whatever socket it came in on. Cached: a
    proxy and a sink see the same few client addresses over and over, and `ipaddress` parses
    in Python.
    """
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


# --- encode and decode ---------------------------------------------------------------------


def encode(record: CaptureRecord) -> bytes:
    """The record as JSON bytes (orjson serialises dataclasses natively, and fast)."""
    return orjson.dumps(record)


def shrink(record: CaptureRecord, max_bytes: int) -> bytes:
    """The record encoded, cut until it fits `max_bytes`: its bodies first (a quarter at a
    time, the larger first; `body_truncated` says so), then the longest header values, which
    become `[withheld: N bytes]`. A record that cannot fit even so (its header names alone, or
    a request line, over the cap) comes back too big, for the caller to drop and count.

    Cutting a redacted body is safe: its secrets are gone already, so no prefix of it holds
    one."""
    data = encode(record)
    messages = [m for m in (record.request, record.response) if m is not None]
    while len(data) > max_bytes:
        message = max(messages, key=lambda m: len(m.body))
        if not message.body:
            break
        keep = len(message.body) // 4
        if message.body_encoding == "base64":
            keep -= keep % 4  # whole quanta: what is kept still decodes
        message.body = message.body[:keep]
        message.body_truncated = True
        data = encode(record)
    if len(data) > max_bytes:
        # Headers: the longest values go, as many as the excess needs, then a check.
        pairs = sorted((pair for m in messages for pair in m.headers),
                       key=lambda pair: len(pair[1]), reverse=True)
        excess = len(data) - max_bytes
        for pair in pairs:
            if len(data) <= max_bytes or len(pair[1]) <= 64:
                break
            marker = f"[withheld: {len(pair[1])} bytes]"
            excess -= len(pair[1]) - len(marker)
            pair[1] = marker
            if excess <= 0:
                data = encode(record)
                excess = len(data) - max_bytes
        data = encode(record)
    return data


def decode(data: bytes | str) -> CaptureRecord:
    """Bytes from the topic back into a validated record; raises `InvalidRecord` with a reason."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidRecord(f"not JSON: {e}") from None
    return from_dict(obj)


def decode_json(data: bytes | str) -> dict[str, Any]:
    """Bytes from the topic as a validated record in plain JSON form (dicts and lists, no
    dataclasses): what a sink that only reads fields wants. The same rules as `decode`, and
    `InvalidRecord` with the same reason for a record `decode` refuses.

    The check is one pass of exact type comparisons, several times faster than building the
    dataclasses; a record that fails it goes through `from_dict` for the reason."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidRecord(f"not JSON: {e}") from None
    if not _looks_valid(obj):
        from_dict(obj)  # raises with the reason (or accepts what the quick check was unsure of)
    return obj


def from_dict(obj: Any) -> CaptureRecord:
    """A decoded JSON object into a validated record; raises `InvalidRecord` with a reason."""
    if not isinstance(obj, dict):
        raise InvalidRecord("a record is a JSON object")
    version = obj.get("v")
    if type(version) is not int or version not in VERSIONS:
        raise UnknownVersion(
            f"unknown schema version {version!r} (this code reads {', '.join(map(str, VERSIONS))})"
        )
    request = _message(obj, "request", _REQUEST_FIELDS, Request)
    response = None if obj.get("response") is None else _message(
        obj, "response", _RESPONSE_FIELDS, Response
    )
    record = CaptureRecord(
        id=_get(obj, "id", str),
        app=_get(obj, "app", str),
        started_at=_get(obj, "started_at", str),
        ended_at=_get(obj, "ended_at", str),
        duration_ms=float(_get(obj, "duration_ms", (int, float))),
        client_ip=_get(obj, "client_ip", str),
        client_port=_get(obj, "client_port", int),
        request=request,
        response=response,
        error=_get(obj, "error", (str, type(None)), required=False),
        redacted=bool(_get(obj, "redacted", bool, required=False)),
        v=version,
    )
    validate(record)
    return record


def validate(record: CaptureRecord) -> None:
    """Checks the meaning of fields, beyond their types; raises `InvalidRecord`."""
    if not record.id:
        raise InvalidRecord("id is empty")
    parse_time(record.started_at)
    parse_time(record.ended_at)
    if record.duration_ms < 0:
        raise InvalidRecord(f"negative duration_ms {record.duration_ms}")
    if record.response is None and not record.error:
        raise InvalidRecord("a record without a response must say why in error")
    if record.response is not None and not 100 <= record.response.status_code <= 999:
        raise InvalidRecord(f"status code {record.response.status_code} is out of range")
    for name, message in (("request", record.request), ("response", record.response)):
        if message is None:
            continue
        if message.body_encoding not in ("utf-8", "base64"):
            raise InvalidRecord(f"{name}.body_encoding {message.body_encoding!r} is unknown")
        if message.body_size < 0:
            raise InvalidRecord(f"{name}.body_size is negative")
        for index, pair in enumerate(message.headers):
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(part, str) for part in pair
            )):
                # What it is, never what it holds: the reason is logged and may hold a secret.
                raise InvalidRecord(f"{name}.headers[{index}] is not a [name, value] pair of "
                                    f"strings ({_shape(pair)})")


def _shape(value: Any) -> str:
    """A value's type and size, none of its content: `a list of 3`, `a str`."""
    kind = type(value).__name__
    return f"a {kind} of {len(value)}" if isinstance(value, list | dict) else f"a {kind}"


_REQUEST_FIELDS: dict[str, Any] = {
    "method": str, "scheme": str, "host": str, "port": int, "path": str, "query": str,
    "params": dict, "http_version": str, "headers": list, "body": str, "body_encoding": str,
    "body_size": int, "body_truncated": bool,
}
_RESPONSE_FIELDS: dict[str, Any] = {
    "status_code": int, "reason": str, "http_version": str, "headers": list, "body": str,
    "body_encoding": str, "body_size": int, "body_truncated": bool,
}
# Version 2's fields of a message, absent from version 1 records: (types, default).
_V2_FIELDS: dict[str, tuple[Any, Any]] = {
    "content_encoding": (str, ""),
    "body_withheld": ((str, type(None)), None),
    "body_digest": ((str, type(None)), None),
}


# decode_json's quick check: the fields from_dict requires, and the exact types orjson gives
# them (exact: a JSON true is a bool, never an int).
_RECORD_VALUES = itemgetter("id", "app", "started_at", "ended_at", "client_ip", "client_port",
                            "request")
_RECORD_TYPES = (str, str, str, str, str, int, dict)
_REQUEST_VALUES = itemgetter(*_REQUEST_FIELDS)
_REQUEST_TYPES = tuple(_REQUEST_FIELDS.values())
_RESPONSE_VALUES = itemgetter(*_RESPONSE_FIELDS)
_RESPONSE_TYPES = tuple(_RESPONSE_FIELDS.values())
_NUMBER = (int, float)
_ERROR = (str, type(None))
_ENCODINGS = ("utf-8", "base64")


def _looks_valid(obj: Any) -> bool:
    """True when `obj` passes every check of `from_dict`; False when one fails or this quick
    check cannot tell (then from_dict decides). Must never be True where from_dict raises."""
    if type(obj) is not dict or obj.get("v") not in VERSIONS or type(obj["v"]) is not int:
        return False
    try:
        record = _RECORD_VALUES(obj)
        request = _REQUEST_VALUES(record[6])
        response = obj.get("response")
        if response is not None:
            response = _RESPONSE_VALUES(response)
    except (KeyError, TypeError):
        return False
    if (tuple(map(type, record)) != _RECORD_TYPES
            or tuple(map(type, request)) != _REQUEST_TYPES
            or type(obj.get("duration_ms")) not in _NUMBER
            or type(obj.get("error")) not in _ERROR
            or not record[0] or obj["duration_ms"] < 0
            or request[10] not in _ENCODINGS or request[11] < 0
            or not _pairs(request[8])):
        return False
    if type(obj.get("redacted", False)) is not bool or not _v2_fields(record[6]):
        return False
    if response is None:
        if not obj.get("error"):
            return False
    elif (tuple(map(type, response)) != _RESPONSE_TYPES
          or not 100 <= response[0] <= 999
          or response[5] not in _ENCODINGS or response[6] < 0
          or not _pairs(response[3]) or not _v2_fields(obj["response"])):
        return False
    for text in (record[2], record[3]):
        try:
            if datetime.fromisoformat(text).tzinfo is None:
                return False
        except ValueError:
            return False
    return True


def _v2_fields(message: dict) -> bool:
    """Whether version 2's message fields, where present, have their types."""
    return (type(message.get("content_encoding", "")) is str
            and type(message.get("body_withheld")) in _ERROR
            and type(message.get("body_digest")) in _ERROR)


def _pairs(headers: list) -> bool:
    """Whether every item is a [str, str] list (a plain loop: faster here than set tricks)."""
    for pair in headers:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str \
                or type(pair[1]) is not str:
            return False
    return True


def _message(obj: dict, name: str, fields: dict[str, Any], cls: type) -> Any:
    part = obj.get(name)
    if not isinstance(part, dict):
        raise InvalidRecord(f"{name} is missing or not an object")
    values = {key: _get(part, key, kind, where=name) for key, kind in fields.items()}
    for key, (kind, default) in _V2_FIELDS.items():
        value = _get(part, key, kind, required=False, where=name)
        values[key] = default if value is None else value
    return cls(**values)


def _get(obj: dict, key: str, kind: Any, *, required: bool = True, where: str = "") -> Any:
    label = f"{where}.{key}" if where else key
    if key not in obj:
        if required:
            raise InvalidRecord(f"{label} is missing")
        return None
    value = obj[key]
    # bool is an int in Python; a JSON true is no port number.
    if isinstance(value, bool) and kind is not bool:
        raise InvalidRecord(f"{label} is a boolean")
    if not isinstance(value, kind):
        raise InvalidRecord(f"{label} has the wrong type ({type(value).__name__})")
    return value
