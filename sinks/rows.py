"""A capture record as an `http_requests` row: pure, no I/O.

PostgreSQL's text and jsonb cannot hold the NUL character, which a record may (header values,
JSON bodies): in text columns it becomes U+FFFD, and a body holding it is stored as base64,
losslessly. The lake keeps every record untouched.

Two ways to the same row: `row_of` from a `CaptureRecord`, and `row_of_json` straight from the
bytes on the topic, without building the dataclasses (the sink's path: several times faster).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

from capture import CaptureRecord, InvalidRecord, canonical_ip, decode_json, from_dict
from capture.record import FINGERPRINT_PREFIX

COLUMNS = (
    "time", "capture_id", "app", "client_ip", "client_port", "method", "scheme", "host",
    "path", "query", "params", "status_code", "reason", "http_version", "duration_ms",
    "ended_at", "request_size", "response_size", "user_agent", "error", "request_headers",
    "response_headers", "request_body", "request_body_encoding", "request_body_truncated",
    "response_body", "response_body_encoding", "response_body_truncated", "principal",
    "request_body_withheld", "response_body_withheld",
)


def row_of(record: CaptureRecord, body_max_bytes: int) -> tuple:
    """The `http_requests` row of a record, in COLUMNS order."""
    request, response = record.request, record.response
    request_body = cut_body(request.body, request.body_encoding, body_max_bytes)
    if response is not None:
        response_body = cut_body(response.body, response.body_encoding, body_max_bytes)
    else:
        response_body = (None, None, False)
    return (
        datetime.fromisoformat(record.started_at),
        record.id,
        _text(record.app),
        inet(record.client_ip),
        record.client_port,
        _text(request.method),
        _text(request.scheme),
        _text(request.host),
        _text(request.path),
        _text(request.query),
        params_jsonb(request.params),
        response.status_code if response else None,
        _text(response.reason) if response else None,
        _text(request.http_version),
        record.duration_ms,
        datetime.fromisoformat(record.ended_at),
        request.body_size,
        response.body_size if response else None,
        _text(header(request.headers, "user-agent")),
        _text(record.error),
        jsonb(request.headers),
        jsonb(response.headers) if response else None,
        request_body[0],
        request_body[1],
        request.body_truncated or request_body[2],
        response_body[0],
        response_body[1],
        bool(response and response.body_truncated) or response_body[2],
        principal(request.headers, record.redacted),
        _text(request.body_withheld),
        _text(response.body_withheld) if response else None,
    )


_NUL = b"\\u0000"  # how JSON writes the NUL character; no record without it holds one


def row_of_json(data: bytes, body_max_bytes: int) -> tuple:
    """The `http_requests` row of a record's bytes, the same as `row_of(decode(data), ...)`;
    raises `InvalidRecord` with `decode`'s reasons, or when the parameters are malformed."""
    obj = decode_json(data)
    if _NUL in data:  # rare: the careful path, which replaces NUL wherever it is
        return row_of(from_dict(obj), body_max_bytes)
    request = obj["request"]
    response = obj.get("response")
    user_agent = authorization = None
    for key, value in request["headers"]:
        if user_agent is None or authorization is None:
            low = key.lower()
            if low == "user-agent" and user_agent is None:
                user_agent = value
            elif low == "authorization" and authorization is None:
                authorization = value
    params = params_jsonb(request["params"])
    request_body = cut_body(request["body"], request["body_encoding"], body_max_bytes)
    if response is not None:
        response_body = cut_body(response["body"], response["body_encoding"], body_max_bytes)
        status, reason, response_size = (response["status_code"], response["reason"],
                                         response["body_size"])
        response_headers = orjson.dumps(response["headers"]).decode()
        response_truncated = response["body_truncated"] or response_body[2]
    else:
        response_body = (None, None, False)
        status = reason = response_size = response_headers = None
        response_truncated = False
    return (
        datetime.fromisoformat(obj["started_at"]),
        obj["id"],
        obj["app"],
        inet(obj["client_ip"]),
        obj["client_port"],
        request["method"],
        request["scheme"],
        request["host"],
        request["path"],
        request["query"],
        params,
        status,
        reason,
        request["http_version"],
        float(obj["duration_ms"]),
        datetime.fromisoformat(obj["ended_at"]),
        request["body_size"],
        response_size,
        user_agent,
        obj.get("error"),
        orjson.dumps(request["headers"]).decode(),
        response_headers,
        request_body[0],
        request_body[1],
        request["body_truncated"] or request_body[2],
        response_body[0],
        response_body[1],
        response_truncated,
        _principal(authorization, obj.get("redacted") is True),
        request.get("body_withheld"),
        response.get("body_withheld") if response is not None else None,
    )


def inet(client_ip: str) -> str | None:
    """The client IP as PostgreSQL's inet takes it: canonical, and without an IPv6 zone id
    (`fe80::1%eth0`), which inet refuses and which names an interface of the proxy's host, not
    the client. None for anything that is not an IP address."""
    canonical = canonical_ip(client_ip)
    return None if canonical is None else canonical.partition("%")[0]


def params_jsonb(params: dict[str, list]) -> str:
    """`merged_params` as jsonb text; `InvalidRecord` when `params` is not lists of
    [name, value] pairs by source (the record's check leaves `params` to the sinks)."""
    try:
        return jsonb(merged_params(params))
    except (TypeError, ValueError) as e:  # orjson's errors are TypeErrors
        raise InvalidRecord(f"request.params is not lists of [name, value] pairs by "
                            f"source ({e})") from None


def merged_params(params: dict[str, list]) -> dict[str, Any]:
    """Query, form and JSON parameters as one object: a value per name, a list when repeated."""
    merged: dict[str, Any] = {}
    repeated: set[str] = set()
    for source in ("query", "form", "json"):
        pairs = params.get(source)
        if not pairs:
            continue
        for name, value in pairs:
            if name not in merged:
                merged[name] = value
            elif name in repeated:
                merged[name].append(value)
            else:
                merged[name] = [merged[name], value]
                repeated.add(name)
    return merged


def principal(headers: list[list[str]], redacted: bool) -> str | None:
    """Who made the request: the Authorization header as the proxy's redaction left it (its
    fingerprint, after the scheme when there is one: `Bearer hmac:...`). A clear-text value
    (redaction off) is not copied into a column of its own."""
    return _principal(header(headers, "authorization"), redacted)


def _principal(authorization: str | None, redacted: bool) -> str | None:
    if authorization is None:
        return None
    if redacted:
        return authorization
    # Version 1 records say nothing of redaction; their fingerprints were the whole value.
    return authorization if authorization.startswith(FINGERPRINT_PREFIX) else None


def header(headers: list[list[str]], name: str) -> str | None:
    """The first value of a header, by case-insensitive name."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def cut_body(text: str, encoding: str, max_bytes: int) -> tuple[str, str, bool]:
    """A body for a text column: at most `max_bytes` of it, and whether it was cut."""
    if encoding == "utf-8" and "\x00" in text:
        text, encoding = base64.b64encode(text.encode("utf-8")).decode("ascii"), "base64"
    if encoding == "base64":
        limit = max_bytes // 3 * 4  # whole base64 quanta: the kept part still decodes
        return (text, encoding, False) if len(text) <= limit else (text[:limit], encoding, True)
    if len(text) * 4 <= max_bytes:  # cannot be over, whatever the characters
        return text, encoding, False
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text, encoding, False
    return raw[:max_bytes].decode("utf-8", "ignore"), encoding, True


def jsonb(value: Any) -> str:
    data = orjson.dumps(value)
    if b"\\u0000" in data:
        data = data.replace(b"\\u0000", b"\\ufffd")
    return data.decode("utf-8")


def _text(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value
