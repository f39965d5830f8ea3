"""From a mitmproxy flow to a capture record: the proxy's logic, no I/O.

Kept apart from the addon so that each rule (body cap, client address, parameters) can be
tested on its own with mitmproxy's test flows.
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
from mitmproxy.net.http.http1.read import expected_http_body_size

from capture import CaptureRecord, Request, Response, canonical_ip, encode_body, format_time
from capture.record import wire_text
from capture.redact.body import QUICK_BYTES, quick_text, redact_body
from capture.redact.redactor import Body, BudgetExceeded, Redactor, deadline_after
from capture.redact.text import Deadline

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REQUEST_TAP = "tapline.request_tap"
RESPONSE_TAP = "tapline.response_tap"
CHUNKED_UPSTREAM = "tapline.chunked_upstream"

# parse_qsl stops here, so a request with a million parameters costs the proxy nothing much;
# the raw query string and body are in the record whatever this says.
MAX_PARAMS = 10_000
# Request bodies above this are not parsed into parameters (CAPTURE_PARAMS_BODY_MAX_BYTES).
PARAMS_BODY_MAX_BYTES = 16 << 10


class BodyTap:
    """A mitmproxy stream callable that passes every chunk on and keeps the first `cap` bytes.

    mitmproxy stores nothing of a streamed body, so this is how a body above the cap reaches
    the other side in full while the proxy holds at most `cap` bytes of it.
    """

    __slots__ = ("cap", "head", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head = bytearray()
        self.size = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.size += len(chunk)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        return chunk


def needs_tap(message: http.Message, expected_size: int | None, cap: int) -> bool:
    """Whether to stream a body through a `BodyTap` instead of letting mitmproxy buffer it.

    Bodies of unknown size (chunked, read-until-close) are streamed, as are those over the cap
    and those another option already chose to stream.
    """
    if message.stream:
        return True
    return expected_size is None or expected_size < 0 or expected_size > cap


def frame_for_http1(flow: http.HTTPFlow) -> bool:
    """Called at `requestheaders`, before `tap_request`: give an HTTP/2 request body a framing
    its HTTP/1.1 upstream can read. True when it did.

    HTTP/2 frames a body itself, so a client may send one without Content-Length. mitmproxy
    11.0 forwards such a request to an HTTP/1.1 app with neither Content-Length nor
    Transfer-Encoding, and the app reads no body at all (then takes the body for the next
    request). Declaring the body chunked makes mitmproxy frame each piece on the way out, and
    lets the tap stream it, so the proxy holds at most the cap of it. A request that turns
    out to have no body gets the header taken off again in `unframe_empty` before anything
    is sent; the record never shows it, since the client did not send it.
    """
    request = flow.request
    if not (request.is_http2 or request.is_http3):
        return False
    if "content-length" in request.headers or "transfer-encoding" in request.headers:
        return False
    server = flow.server_conn
    # mitmproxy reaches a plain-http app over HTTP/1.1 only; over TLS, only when it has
    # negotiated HTTP/1 (an HTTP/2 app reads the body from its frames as it is).
    if server.tls and not (server.tls_established and server.alpn not in (b"h2", b"h3")):
        return False
    request.headers["transfer-encoding"] = "chunked"
    flow.metadata[CHUNKED_UPSTREAM] = True
    return True


def unframe_empty(flow: http.HTTPFlow) -> None:
    """Called at `request`: undo `frame_for_http1` for a request that had no body.

    mitmproxy streams a body only when one follows the headers; otherwise it has stored the
    (empty) body by now and sends the request after this hook, so the header can still go.
    """
    if flow.metadata.get(CHUNKED_UPSTREAM) and flow.request.raw_content is not None:
        del flow.request.headers["transfer-encoding"]
        del flow.metadata[CHUNKED_UPSTREAM]


def tap_request(flow: http.HTTPFlow, cap: int) -> None:
    """Called at `requestheaders`: stream the request body through a tap when needed."""
    _tap(flow, flow.request, None, REQUEST_TAP, cap)


def tap_response(flow: http.HTTPFlow, cap: int) -> None:
    """Called at `responseheaders`: stream the response body through a tap when needed."""
    assert flow.response is not None
    _tap(flow, flow.response, flow.response, RESPONSE_TAP, cap)


def _tap(
    flow: http.HTTPFlow,
    message: http.Message,
    response: http.Response | None,
    key: str,
    cap: int,
) -> None:
    if not message.stream and _plainly_small(message, response is None, cap):
        return
    try:
        size = expected_http_body_size(flow.request, response)
    except ValueError:  # a malformed Content-Length: size unknown
        size = None
    if size != 0 and needs_tap(message, size, cap):
        tap = BodyTap(cap)
        message.stream = tap
        flow.metadata[key] = tap


def _plainly_small(message: http.Message, is_request: bool, cap: int) -> bool:
    """True when the headers alone show the body fits the cap: one plain Content-Length at
    most `cap`, or an HTTP/1 request with no framing at all (no body). The common case, told
    in one pass over the headers; anything else goes through mitmproxy's own rules."""
    length = None
    for name, value in message.headers.fields:
        name = name.lower()
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return False
            length = int(value)
    if length is None:
        return is_request and not (message.is_http2 or message.is_http3)
    return length <= cap


def wire_body(message: http.Message, tap: BodyTap | None, cap: int) -> tuple[bytes, int]:
    """The body's bytes on the wire (up to the cap) and its full size."""
    if tap is not None:
        return bytes(tap.head), tap.size
    raw = message.raw_content or b""
    return raw[:cap], len(raw)


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
