"""What the proxy does to live traffic before the record is built: body taps and framing.

A body over the cap (or of unknown size) streams through a `BodyTap`, which passes every
chunk on and keeps the first bytes for the record; an HTTP/2 request body gets a framing its
HTTP/1.1 app can read. These are the only places the capture changes what mitmproxy does;
proxy/exchange.py reads the finished flow into a record.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http.http1.read import expected_http_body_size

REQUEST_TAP = "tapline.request_tap"
RESPONSE_TAP = "tapline.response_tap"
CHUNKED_UPSTREAM = "tapline.chunked_upstream"


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
