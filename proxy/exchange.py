"""From a finished mitmproxy flow to a capture record: the proxy's logic, no I/O.

It reads the flow and changes nothing in it; what changes live traffic (the body taps, the
framing of HTTP/2 bodies for HTTP/1.1 apps) is proxy/taps.py. Kept apart from the addon so
that each rule (body cap, client address, parameters) can be tested on its own with
mitmproxy's test flows.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl

import orjson
import uuid6
from mitmproxy import http

from capture import CaptureRecord, Request, Response, canonical_ip, encode_body, format_time
from capture.record import wire_text
from capture.redact.body import QUICK_BYTES, quick_text, redact_body
from capture.redact.redactor import Body, BudgetExceeded, Redactor, deadline_after
from capture.redact.text import Deadline
from proxy.taps import CHUNKED_UPSTREAM, REQUEST_TAP, RESPONSE_TAP, BodyTap, wire_body

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# parse_qsl stops here, so a request with a million parameters costs the proxy nothing much;
# the raw query string and body are in the record whatever this says.
MAX_PARAMS = 10_000
# Request bodies above this are not parsed into parameters (CAPTURE_PARAMS_BODY_MAX_BYTES).
PARAMS_BODY_MAX_BYTES = 16 << 10


def body_of(message: http.Message, tap: BodyTap | None, cap: int) -> dict:
    """The body fields of a record kept as on the wire (redaction off): the wire bytes (up to
    the cap), full size, truncated flag."""
    data, size = wire_body(message, tap, cap)
    text, encoding = encode_body(data)
    return {
        "body": text,
        "body_encoding": encoding,
        "body_size": size,
        "body_truncated": len(data) < size,
    }


_NO_BODY = Body()
_EMPTY_BODY = {"body": "", "body_encoding": "utf-8", "body_size": 0, "body_truncated": False}


def redacted_body_of(redactor: Redactor, message: http.Message, tap: BodyTap | None, cap: int,
                     wanted: dict[bytes, list[bytes]], params: bool,
                     deadline: Deadline) -> tuple[dict, Body]:
    """The body fields of a record through the redactor, and what it read of the body."""
    data, size = wire_body(message, tap, cap)
    if not size:  # most requests: nothing to read, nothing to redact
        return _EMPTY_BODY.copy(), _NO_BODY
    content_type = _joined(wanted, b"content-type")
    if not params and size <= QUICK_BYTES and b"content-encoding" not in wanted and (
            not data or (text := quick_text(redactor, data, content_type)) is not None):
        # The common small answer with nothing to redact: no more work than keeping it.
        return {"body": text if data else "", "body_encoding": "utf-8", "body_size": size,
                "body_truncated": False}, _NO_BODY
    body = redact_body(
        redactor, data, cut=len(data) < size, content_type=content_type,
        content_encoding=[wire_text(v) for v in wanted.get(b"content-encoding", ())],
        params=params, deadline=deadline)
    return {
        "body": body.text,
        "body_encoding": body.encoding,
        "body_size": size,
        "body_truncated": body.truncated,
        "content_encoding": body.content_encoding,
        "body_withheld": body.withheld,
        "body_digest": body.digest,
    }, body


def parse_networks(spec: str) -> tuple[Network, ...]:
    """A comma-separated list of CIDR networks (or single addresses); raises ValueError."""
    networks = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    return tuple(networks)


def _trusted(ip: str, trusted: Sequence[Network]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in trusted)


def client_address(
    peer_ip: str, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str:
    """The client's IP: the peer, unless the peer is a trusted proxy that says otherwise.

    X-Forwarded-For is read from the right (the hop nearest to us) and each trusted hop is
    skipped; the first untrusted address is the client. Anything that is not an IP address
    ends the walk, and the last address known good is used: a garbage or forged entry can
    never become the client IP.
    """
    client = canonical_ip(peer_ip) or peer_ip
    if not trusted or canonical_ip(client) is None or not _trusted(client, trusted):
        return client
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        ip = canonical_ip(hop)
        if ip is None:
            break
        client = ip
        if not _trusted(ip, trusted):
            break
    return client


def parse_params(
    query: str, content_type: str, body: bytes | None, body_max: int = PARAMS_BODY_MAX_BYTES
) -> dict[str, list]:
    """Parameters by source: the query string, an urlencoded form body, a JSON object body.

    Repeated names are kept as separate pairs. A body is parsed only when it is complete, not
    content-encoded (`body` is None otherwise) and at most `body_max` bytes; one that does not
    parse adds nothing. A bigger body is data rather than parameters, and is in the record
    anyway: parsing it would cost the proxy milliseconds and double the record.
    """
    params: dict[str, list] = {
        "query": _pairs(query),
        "form": [],
        "json": [],
    }
    if not body or len(body) > body_max:
        return params
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        params["form"] = _pairs(wire_text(body))
    elif media_type == "application/json" or media_type.endswith("+json"):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return params
        if isinstance(value, dict):
            params["json"] = [[name, member] for name, member in value.items()]
    return params


def _pairs(text: str) -> list[list[str]]:
    if not text:
        return []
    if "%" not in text and "+" not in text and text.count("&") < MAX_PARAMS:
        # Nothing to unquote: what parse_qsl would give, without its per-field work.
        return [[name, value] for name, _, value in
                (field.partition("=") for field in text.split("&") if field)]
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except ValueError:  # more than MAX_PARAMS fields
        pairs = parse_qsl(
            "&".join(text.split("&", MAX_PARAMS)[:MAX_PARAMS]), keep_blank_values=True
        )
    return [[name, value] for name, value in pairs]


def build_record(
    flow: http.HTTPFlow,
    *,
    app: str,
    body_cap: int,
    trusted: Sequence[Network] = (),
    params_body_max: int = PARAMS_BODY_MAX_BYTES,
    redactor: Redactor | None = None,
) -> CaptureRecord:
    """The capture record of a finished (or failed) exchange, redacted by `redactor` (or
    kept as it was on the wire without one)."""
    request = flow.request
    data = request.data
    peer_ip, peer_port = flow.client_conn.peername[:2]
    path, _, query = data.path.partition(b"?")
    # One pass over the request's headers, for the record and for the few it reads; the
    # framing frame_for_http1 added is the proxy's, not the client's.
    headers, wanted = _headers_and(data.headers.fields, CHUNKED_UPSTREAM in flow.metadata)
    tap = flow.metadata.get(REQUEST_TAP)
    path_text, query_text = wire_text(path), wire_text(query)
    if redactor is None:
        request_body = body_of(request, tap, body_cap)
        complete = (not request_body["body_truncated"] and tap is None
                    and b"content-encoding" not in wanted)
        params = parse_params(query_text, _joined(wanted, b"content-type"),
                              (request.raw_content or b"") if complete else None,
                              params_body_max)
    else:
        # One budget for the whole record (docs/security.md): what is over it is withheld.
        deadline = deadline_after(redactor.policy.budget_ms / 1000)
        # Parameters come from the redacted query and body, so the two always agree.
        try:
            path_text, query_text, query_pairs = redactor.target(path_text, query_text,
                                                                 deadline)
        except Exception as e:  # over the budget, or a bug: the request line is withheld
            _note(e)
            path_text, query_text, query_pairs = WITHHELD, WITHHELD if query_text else "", []
        request_body, read = redacted_body_of(
            redactor, request, tap, body_cap, wanted,
            params=tap is None and len(request.raw_content or b"") <= params_body_max,
            deadline=deadline)
        params = {"query": query_pairs, "form": read.form, "json": read.json}
        headers = _redacted_headers(redactor, headers, deadline)
    host = request.authority if request.is_http2 or request.is_http3 else ""
    record_request = Request(
        method=wire_text(data.method),
        scheme=request.scheme,
        host=host or _joined(wanted, b"host") or request.pretty_host,
        port=request.port,
        path=path_text,
        query=query_text,
        params=params,
        http_version=data.http_version.decode("ascii", "replace"),
        headers=headers,
        **request_body,
    )
    response = flow.response
    record_response = None
    end = None
    if response is not None:
        # Kept even when the exchange failed half way (client gone mid-response): the status
        # and the bytes that did pass are worth having, next to the error.
        rdata = response.data
        response_headers, response_wanted = _headers_and(rdata.headers.fields, False)
        response_tap = flow.metadata.get(RESPONSE_TAP)
        if redactor is None:
            response_body = body_of(response, response_tap, body_cap)
        else:
            response_body, _ = redacted_body_of(redactor, response, response_tap, body_cap,
                                                response_wanted, params=False,
                                                deadline=deadline)
            response_headers = _redacted_headers(redactor, response_headers, deadline)
        record_response = Response(
            status_code=rdata.status_code,
            reason=wire_text(rdata.reason),
            http_version=rdata.http_version.decode("ascii", "replace"),
            headers=response_headers,
            **response_body,
        )
        end = rdata.timestamp_end
    error = flow.error.msg if flow.error else None
    if error and redactor is not None:
        # mitmproxy's words, which can quote what the client sent (a bad request line)
        error = redactor.scrub(error)
    if end is None:
        end = flow.error.timestamp if flow.error else time.time()
    start = data.timestamp_start
    forwarded = wanted.get(b"x-forwarded-for", ())
    return CaptureRecord(
        id=str(uuid6.uuid7()),
        app=app,
        started_at=format_time(start),
        ended_at=format_time(end),
        duration_ms=round(max(0.0, end - start) * 1000, 3),
        client_ip=client_address(peer_ip, [wire_text(v) for v in forwarded], trusted),
        client_port=int(peer_port),
        request=record_request,
        response=record_response,
        error=error,
        redacted=redactor is not None,
    )


def _redacted_headers(redactor: Redactor, headers: list[list[str]],
                      deadline: Deadline) -> list[list[str]]:
    try:
        return redactor.headers(headers, deadline)
    except Exception as e:  # over the budget, or a bug: the names stay, the values go
        _note(e)
        return [[name, WITHHELD] for name, _value in headers]


def _note(error: Exception) -> None:
    """Say (without the exchange's contents) that redaction failed for a reason other than
    its budget: a record is still produced, with what failed withheld."""
    if not isinstance(error, BudgetExceeded):
        log.error("redaction failed (%s); the part is withheld", type(error).__name__)


# What the record holds where redaction ran out of time: the path, the query, header values.
WITHHELD = "[withheld: not redacted]"

# The request headers build_record reads, beside listing them all.
_WANTED = frozenset((b"host", b"content-type", b"content-encoding", b"x-forwarded-for",
                     b"transfer-encoding"))


def _headers_and(
    fields: Iterable[tuple[bytes, bytes]], drop_framing: bool
) -> tuple[list[list[str]], dict[bytes, list[bytes]]]:
    """The headers as the record lists them, and the values of the `_WANTED` ones by name."""
    headers = []
    wanted: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        key = name.lower()
        if key in _WANTED:
            if drop_framing and key == b"transfer-encoding":
                continue
            wanted.setdefault(key, []).append(value)
        try:
            headers.append([name.decode(), value.decode()])
        except UnicodeDecodeError:
            headers.append([wire_text(name), wire_text(value)])
    return headers, wanted


def _joined(wanted: dict[bytes, list[bytes]], name: bytes) -> str:
    """A header's values as mitmproxy's `headers.get` gives them (joined by ", "), or ""."""
    values = wanted.get(name)
    return wire_text(b", ".join(values)) if values else ""
