"""Captures as HAR 1.2 (HTTP Archive), for browser devtools, Postman, Insomnia and the tools
that infer an API from traffic.

One entry per capture: `startedDateTime`, `time` and the timings tapline knows (the total
only: `wait` holds it, `send` and `receive` are 0, the phases it never saw are -1), the
request's and response's headers as captured (order, case and duplicates kept), the query
string, cookies (values as stored: redacted ones stay fingerprints or markers), `postData`
with its mime type and, for a form, its params, the response's content (decoded, as the
record keeps it; `encoding: base64` where the body is binary), sizes, and a `comment` where
a body was withheld or truncated. An exchange that failed without a response gets status 0
and `_error` (what Chromium writes for one). Fields of its own start with `_`, as HAR wants:
`_tapline` holds the capture's id, app, client address and whether it was redacted.

`write_har` streams: one record is decoded, turned into an entry and written at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import parse_qsl

import orjson

from capture import InvalidRecord, decode_json

HAR_VERSION = "1.2"
CREATOR = {"name": "tapline", "version": "1"}


def _pairs(headers: list) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers]


def _header(headers: list, name: str) -> str | None:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def request_cookies(headers: list) -> list[dict[str, str]]:
    """The `Cookie` headers' name=value pairs."""
    cookies = []
    for key, value in headers:
        if key.lower() != "cookie":
            continue
        for part in value.split(";"):
            name, eq, val = part.strip().partition("=")
            if name or eq:
                cookies.append({"name": name, "value": val})
    return cookies


def response_cookies(headers: list) -> list[dict[str, Any]]:
    """Each `Set-Cookie` header: its name, value and the attributes HAR has a field for
    (`expires` stays out: HAR wants an ISO time, and a cookie's date is in HTTP's form)."""
    cookies = []
    for key, value in headers:
        if key.lower() != "set-cookie":
            continue
        first, *attributes = value.split(";")
        name, _, val = first.strip().partition("=")
        cookie: dict[str, Any] = {"name": name, "value": val}
        for attribute in attributes:
            attr, _, attr_value = attribute.strip().partition("=")
            attr = attr.lower()
            if attr == "path":
                cookie["path"] = attr_value
            elif attr == "domain":
                cookie["domain"] = attr_value
            elif attr == "httponly":
                cookie["httpOnly"] = True
            elif attr == "secure":
                cookie["secure"] = True
        cookies.append(cookie)
    return cookies


def body_comment(message: dict, which: str) -> str | None:
    """Why a body is not all there, in words; None when it is."""
    size = message.get("body_size", 0)
    withheld = message.get("body_withheld")
    if withheld:
        digest = message.get("body_digest")
        return (f"{which} body withheld by tapline's redaction ({withheld}): {size} bytes on "
                f"the wire" + (f", digest {digest}" if digest else ""))
    if message.get("body_truncated"):
        return f"{which} body truncated: {size} bytes on the wire, only the first are kept"
    return None


def _url(request: dict) -> str:
    host = request["host"] or "localhost"
    query = request["query"]
    return f"{request['scheme'] or 'http'}://{host}{request['path']}" + (
        f"?{query}" if query else "")


def _query(request: dict) -> list[dict[str, str]]:
    params = (request.get("params") or {}).get("query")
    if params:
        return [{"name": str(n), "value": str(v)} for n, v in params]
    return [{"name": n, "value": v}
            for n, v in parse_qsl(request["query"], keep_blank_values=True)]


def _post_data(request: dict) -> dict[str, Any] | None:
    if not request["body"] and not request["body_size"] and not request.get("body_withheld"):
        return None
    post: dict[str, Any] = {"mimeType": _header(request["headers"], "content-type") or "",
                            "text": request["body"]}
    form = (request.get("params") or {}).get("form")
    if not form and post["mimeType"].split(";")[0].strip().lower() == \
            "application/x-www-form-urlencoded" and request["body_encoding"] == "utf-8" \
            and not request["body_truncated"]:
        form = parse_qsl(request["body"], keep_blank_values=True)
    if form:
        post["params"] = [{"name": str(n), "value": str(v)} for n, v in form]
    notes = []
    if request["body_encoding"] == "base64":
        post["_encoding"] = "base64"  # HAR 1.2's postData has no encoding field
        notes.append("text is the body in base64: it is binary")
    if (comment := body_comment(request, "request")) is not None:
        notes.append(comment)
    if notes:
        post["comment"] = "; ".join(notes)
    return post


def _content(response: dict) -> dict[str, Any]:
    body, encoding = response["body"], response["body_encoding"]
    complete = not response["body_truncated"] and not response.get("body_withheld")
    if encoding == "base64":
        decoded = len(body) * 3 // 4 - body[-2:].count("=")
    else:
        decoded = len(body.encode("utf-8")) if not body.isascii() else len(body)
    content: dict[str, Any] = {
        "size": decoded if complete else response["body_size"],
        "mimeType": _header(response["headers"], "content-type") or "x-unknown",
        "text": body,
    }
    if encoding == "base64":
        content["encoding"] = "base64"
    if complete and response.get("content_encoding") and decoded > response["body_size"]:
        content["compression"] = decoded - response["body_size"]
    if (comment := body_comment(response, "response")) is not None:
        content["comment"] = comment
    return content


_NO_RESPONSE = {"status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
                "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "",
                "headersSize": -1, "bodySize": -1}


def entry(record: dict) -> dict[str, Any]:
    """One capture record (in its JSON form, as `decode_json` gives it) as a HAR entry."""
    request = record["request"]
    har_request: dict[str, Any] = {
        "method": request["method"],
        "url": _url(request),
        "httpVersion": request["http_version"],
        "cookies": request_cookies(request["headers"]),
        "headers": _pairs(request["headers"]),
        "queryString": _query(request),
        "headersSize": -1,
        "bodySize": request["body_size"],
    }
    post = _post_data(request)
    if post is not None:
        har_request["postData"] = post
    response = record.get("response")
    if response is None:
        har_response = dict(_NO_RESPONSE)
        har_response["comment"] = f"no response: {record.get('error')}"
    else:
        har_response = {
            "status": response["status_code"],
            "statusText": response["reason"],
            "httpVersion": response["http_version"],
            "cookies": response_cookies(response["headers"]),
            "headers": _pairs(response["headers"]),
            "content": _content(response),
            "redirectURL": _header(response["headers"], "location") or "",
            "headersSize": -1,
            "bodySize": response["body_size"],
        }
    time_ms = float(record["duration_ms"])
    har: dict[str, Any] = {
        "startedDateTime": record["started_at"],
        "time": time_ms,
        "request": har_request,
        "response": har_response,
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
                    "send": 0, "wait": time_ms, "receive": 0,
                    "comment": "tapline measures the whole exchange only: all of it is in wait"},
        "connection": str(record["client_port"]),
        "_tapline": {"id": record["id"], "app": record["app"],
                     "client_ip": record["client_ip"],
                     "redacted": bool(record.get("redacted", False))},
    }
    if response is None:
        har["_error"] = record.get("error") or ""
    notes = [c for c in (body_comment(request, "request"),
                         response and body_comment(response, "response")) if c]
    if notes:
        har["comment"] = "; ".join(notes)
    return har


def write_har(records: Iterable[bytes | dict], out: IO[bytes]) -> tuple[int, int]:
    """Write a HAR document of `records` (capture records as bytes, or already in JSON form)
    to `out`, one entry at a time; (entries written, records skipped as not valid capture
    records)."""
    out.write(b'{"log":{"version":"1.2","creator":' + orjson.dumps(CREATOR)
              + b',"entries":[')
    written = skipped = 0
    for data in records:
        if isinstance(data, dict):
            record = data
        else:
            try:
                record = decode_json(data)
            except InvalidRecord:
                skipped += 1
                continue
        out.write((b",\n" if written else b"\n") + orjson.dumps(entry(record)))
        written += 1
    out.write(b"\n]}}\n")
    return written, skipped
