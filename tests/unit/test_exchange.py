"""Record building from mitmproxy test flows: bodies, headers, clients, parameters."""

import ipaddress
import random

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils

from capture import decode, decode_body, encode
from proxy.exchange import (
    build_record,
    client_address,
    parse_networks,
    parse_params,
)
from proxy.taps import BodyTap, frame_for_http1, tap_request, tap_response, unframe_empty

CAP = 16


def flow_with(
    *,
    method=b"POST",
    path=b"/jobs",
    req_headers=((b"Host", b"127.0.0.1:5000"),),
    req_body=b"",
    resp_body=b"ok",
    resp_headers=((b"Content-Type", b"text/plain"),),
    peer=("127.0.0.1", 40000),
    status=200,
    resp=True,
):
    request = tutils.treq(
        method=method, path=path, headers=http.Headers(list(req_headers)), content=req_body,
        host="127.0.0.1", port=5100,
    )
    response = (
        tutils.tresp(status_code=status, headers=http.Headers(list(resp_headers)),
                     content=resp_body)
        if resp else False
    )
    flow = tflow.tflow(req=request, resp=response)
    flow.client_conn.peername = peer
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:5100@5000")
    return flow


def record_of(flow, cap=CAP, trusted=()):
    record = build_record(flow, app="app_a", body_cap=cap, trusted=trusted)
    assert decode(encode(record)) == record  # every built record is valid on the wire
    return record


def test_basic_exchange():
    flow = flow_with(path=b"/jobs?x=1&x=2&empty=", req_headers=(
        (b"Host", b"127.0.0.1:5000"), (b"Authorization", b"mytoken")))
    record = record_of(flow)
    assert record.app == "app_a"
    assert record.request.method == "POST"
    assert record.request.path == "/jobs"
    assert record.request.query == "x=1&x=2&empty="
    assert record.request.params["query"] == [["x", "1"], ["x", "2"], ["empty", ""]]
    assert record.request.host == "127.0.0.1:5000"
    assert record.request.http_version == "HTTP/1.1"
    assert record.response.status_code == 200
    assert record.response.body == "ok"
    assert record.client_ip == "127.0.0.1"
    assert record.client_port == 40000
    assert record.started_at == "1999-12-31T23:00:00.000000Z"
    assert record.ended_at == "1999-12-31T23:00:03.000000Z"
    assert record.duration_ms == 3000.0
    assert record.error is None


def test_repeated_headers_keep_order_case_and_duplicates():
    headers = ((b"Host", b"h"), (b"X-Trace", b"1"), (b"x-trace", b"2"), (b"Accept", b"*/*"))
    record = record_of(flow_with(req_headers=headers))
    assert record.request.headers == [["Host", "h"], ["X-Trace", "1"], ["x-trace", "2"],
                                      ["Accept", "*/*"]]


def test_empty_bodies():
    record = record_of(flow_with(req_body=b"", resp_body=b""))
    for message in (record.request, record.response):
        assert (message.body, message.body_size, message.body_truncated) == ("", 0, False)


def test_binary_body_is_base64_and_exact():
    data = bytes(range(240, 256))
    record = record_of(flow_with(resp_body=data))
    assert record.response.body_encoding == "base64"
    assert decode_body(record.response.body, "base64") == data
    assert record.response.body_size == len(data)


def test_body_over_the_cap_is_cut_with_full_size():
    record = record_of(flow_with(req_body=b"a" * 40, resp_body=b"b" * 100))
    assert record.request.body == "a" * CAP
    assert record.request.body_size == 40
    assert record.request.body_truncated is True
    assert record.response.body == "b" * CAP
    assert record.response.body_size == 100
    assert record.response.body_truncated is True


def test_streamed_body_is_taken_from_the_tap():
    flow = flow_with(req_headers=((b"Host", b"h"), (b"Transfer-Encoding", b"chunked")),
                     resp_headers=((b"Content-Length", b"1000"),))
    tap_request(flow, CAP)
    tap_response(flow, CAP)
    assert isinstance(flow.request.stream, BodyTap)
    assert isinstance(flow.response.stream, BodyTap)
    for chunk in (b"x" * 10, b"y" * 10, b"z" * 10):
        assert flow.request.stream(chunk) == chunk  # passes every byte on
    for _ in range(100):
        flow.response.stream(b"0123456789")
    flow.request.raw_content = None  # mitmproxy stores nothing of a streamed body
    flow.response.raw_content = None
    record = record_of(flow)
    assert record.request.body == "x" * 10 + "y" * 6
    assert record.request.body_size == 30
    assert record.request.body_truncated
    assert record.response.body_size == 1000
    assert record.response.body == "0123456789012345"


def test_small_body_of_known_size_is_not_streamed():
    flow = flow_with(req_headers=((b"Host", b"h"), (b"Content-Length", b"5")),
                     resp_headers=((b"Content-Length", b"2"),))
    tap_request(flow, CAP)
    tap_response(flow, CAP)
    assert not flow.request.stream
    assert not flow.response.stream


def test_failed_exchange_has_error_and_no_response():
    flow = flow_with(resp=False)
    flow.error = tflow.terr("Connection refused")
    record = record_of(flow)
    assert record.response is None
    assert record.error == "Connection refused"


def test_error_after_response_keeps_both():
    flow = flow_with()
    flow.error = tflow.terr("client disconnected")
    record = record_of(flow)
    assert record.response.status_code == 200
    assert record.error == "client disconnected"


def test_ipv6_client():
    record = record_of(flow_with(peer=("2001:db8::0:7", 40000, 0, 0)))
    assert record.client_ip == "2001:db8::7"


def test_ipv4_mapped_client_is_plain_ipv4():
    record = record_of(flow_with(peer=("::ffff:192.0.2.9", 40000, 0, 0)))
    assert record.client_ip == "192.0.2.9"


TRUSTED = parse_networks("10.0.0.0/8, 127.0.0.1")


def test_forwarded_for_from_untrusted_peer_is_ignored():
    flow = flow_with(peer=("192.0.2.50", 1), req_headers=(
        (b"Host", b"h"), (b"X-Forwarded-For", b"203.0.113.9")))
    assert record_of(flow, trusted=TRUSTED).client_ip == "192.0.2.50"


def test_forwarded_for_from_trusted_peer_is_used():
    flow = flow_with(peer=("10.1.1.1", 1), req_headers=(
        (b"Host", b"h"), (b"X-Forwarded-For", b"203.0.113.9, 10.2.2.2")))
    assert record_of(flow, trusted=TRUSTED).client_ip == "203.0.113.9"


def test_forwarded_for_is_ignored_when_nothing_is_trusted():
    flow = flow_with(peer=("127.0.0.1", 1), req_headers=(
        (b"Host", b"h"), (b"X-Forwarded-For", b"203.0.113.9")))
    assert record_of(flow).client_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # the rightmost untrusted hop wins; what a client wrote further left is not believed
        ("10.0.0.1", ["1.1.1.1, 203.0.113.9, 10.0.0.2"], "203.0.113.9"),
        # several headers are one list, in order
        ("10.0.0.1", ["198.51.100.1", "10.0.0.3"], "198.51.100.1"),
        # garbage stops the walk at the last good hop
        ("10.0.0.1", ["198.51.100.1, ../../etc/passwd"], "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.1, 10.0.0.9, <script>"], "10.0.0.1"),
        ("10.0.0.1", ["not-an-ip, 10.0.0.9"], "10.0.0.9"),
        # all hops trusted: the leftmost one
        ("10.0.0.1", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["::ffff:198.51.100.4"], "198.51.100.4"),
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_client_address_walk(peer, headers, client):
    assert client_address(peer, headers, TRUSTED) == client


def test_parse_networks_rejects_garbage():
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8, nonsense")
    assert parse_networks("") == ()
    assert parse_networks("::1") == (ipaddress.ip_network("::1/128"),)


def test_params_from_query_form_and_json():
    form = parse_params("a=1", "application/x-www-form-urlencoded; charset=utf-8",
                        b"token=mytoken&x=1&x=2")
    assert form == {"query": [["a", "1"]], "form": [["token", "mytoken"], ["x", "1"],
                                                      ["x", "2"]], "json": []}
    js = parse_params("", "application/json", b'{"user": "u", "n": 3, "tags": ["a"]}')
    assert js["json"] == [["user", "u"], ["n", 3], ["tags", ["a"]]]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b"{broken"), ("application/json", b"[1,2]"),
     ("text/plain", b"a=1"), ("application/x-www-form-urlencoded", None)],
)
def test_params_bodies_that_add_nothing(content_type, body):
    assert parse_params("", content_type, body) == {"query": [], "form": [], "json": []}


def test_form_params_of_a_request_flow():
    flow = flow_with(req_headers=(
        (b"Host", b"h"), (b"Content-Type", b"application/x-www-form-urlencoded")),
        req_body=b"token=abc")
    assert record_of(flow).request.params["form"] == [["token", "abc"]]


def test_truncated_form_body_is_not_parsed():
    flow = flow_with(req_headers=(
        (b"Host", b"h"), (b"Content-Type", b"application/x-www-form-urlencoded")),
        req_body=b"token=" + b"a" * 100)
    assert record_of(flow).request.params["form"] == []


def test_ten_thousand_params_and_more():
    query = "&".join(f"k{i}=v" for i in range(12_000))
    params = parse_params(query, "", None)
    assert len(params["query"]) == 10_000
    assert params["query"][-1] == ["k9999", "v"]


def test_invalid_utf8_in_path_and_headers_survives():
    flow = flow_with(path=b"/caf\xe9?q=\xff", req_headers=((b"Host", b"h"), (b"X-Bin", b"\xfe")))
    record = record_of(flow)
    assert record.request.path.encode("latin-1") == b"/caf\xe9"
    assert record.request.query.encode("latin-1") == b"q=\xff"
    assert record.request.headers[1][1].encode("latin-1") == b"\xfe"


def http2_flow(headers=((b"content-type", b"application/octet-stream"),)):
    flow = flow_with(req_headers=headers)
    flow.request.http_version = "HTTP/2.0"
    flow.request.raw_content = None  # what mitmproxy has while the body is still to come
    return flow


def test_http2_body_without_length_goes_upstream_chunked_and_streams():
    flow = http2_flow()
    assert frame_for_http1(flow)
    tap_request(flow, CAP)
    assert flow.request.headers["transfer-encoding"] == "chunked"
    assert isinstance(flow.request.stream, BodyTap)  # of unknown size: never held whole
    flow.request.stream(b"a" * 40)
    unframe_empty(flow)  # the body streamed: the upstream has had the header already
    assert flow.request.headers["transfer-encoding"] == "chunked"
    record = record_of(flow)
    assert record.request.headers == [["content-type", "application/octet-stream"]]
    assert (record.request.body_size, record.request.body) == (40, "a" * CAP)


def test_http2_request_without_a_body_goes_upstream_unchanged():
    flow = http2_flow()
    frame_for_http1(flow)
    tap_request(flow, CAP)
    flow.request.raw_content = b""  # the headers ended the stream: mitmproxy stored nothing
    unframe_empty(flow)
    assert "transfer-encoding" not in flow.request.headers
    assert record_of(flow).request.headers == [["content-type", "application/octet-stream"]]


@pytest.mark.parametrize(
    ("version", "headers", "tls", "alpn"),
    [
        ("HTTP/1.1", (), False, None),  # HTTP/1 frames its own bodies
        ("HTTP/2.0", ((b"content-length", b"3"),), False, None),
        ("HTTP/2.0", (), True, b"h2"),  # an HTTP/2 app reads the frames
        ("HTTP/2.0", (), True, None),  # TLS to the app not set up yet: protocol unknown
    ],
)
def test_requests_that_need_no_framing(version, headers, tls, alpn):
    flow = flow_with(req_headers=headers)
    flow.request.http_version = version
    flow.server_conn.tls = tls
    flow.server_conn.alpn = alpn
    flow.server_conn.timestamp_tls_setup = 1.0 if alpn else None
    before = list(flow.request.headers.fields)
    assert not frame_for_http1(flow)
    assert list(flow.request.headers.fields) == before


def test_http2_to_an_http1_app_over_tls_is_framed():
    flow = http2_flow(headers=())
    flow.server_conn.tls = True
    flow.server_conn.timestamp_tls_setup = 1.0
    flow.server_conn.alpn = b"http/1.1"
    assert frame_for_http1(flow)


def test_a_json_or_form_body_over_the_params_limit_is_not_parsed():
    body = b'{"user": "u", "pad": "' + b"x" * 100 + b'"}'
    assert parse_params("", "application/json", body, body_max=len(body))["json"][0] == [
        "user", "u"]
    assert parse_params("", "application/json", body, body_max=len(body) - 1)["json"] == []
    form = b"a=1&b=" + b"2" * 50
    assert parse_params("q=1", "application/x-www-form-urlencoded", form, body_max=10) == {
        "query": [["q", "1"]], "form": [], "json": []}


def test_a_flow_over_the_params_limit_keeps_its_body_whole():
    body = b'{"n": "' + b"9" * 20_000 + b'"}'
    flow = flow_with(req_headers=((b"Host", b"h"), (b"Content-Type", b"application/json")),
                     req_body=body)
    record = build_record(flow, app="app_a", body_cap=1 << 20)  # default limit, 16 KiB
    assert record.request.params["json"] == []
    assert record.request.body.encode() == body


def test_query_pairs_equal_parse_qsl_on_random_strings():
    """The fast path of plain query strings gives what parse_qsl gives."""
    from urllib.parse import parse_qsl
    rng = random.Random(8)
    alphabet = "ab=&;x1 ?é/%+2"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert parse_params(text, "", None)["query"] == [
            [name, value] for name, value in parse_qsl(text, keep_blank_values=True)], text


@pytest.mark.parametrize("is_request", [True, False])
@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "CONNECT"])
@pytest.mark.parametrize("status", [200, 204, 304, 101])
@pytest.mark.parametrize("headers", [
    (), ((b"Content-Length", b"0"),), ((b"Content-Length", b"16"),),
    ((b"Content-Length", b"17"),), ((b"content-length", b"5"), (b"Content-Length", b"5")),
    ((b"Content-Length", b" 5"),), ((b"Content-Length", b"x"),),
    ((b"Transfer-Encoding", b"chunked"),),
    ((b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")),
])
def test_the_quick_look_at_framing_decides_as_mitmproxys_rules(
        is_request, version, method, status, headers):
    """Whether a body is streamed through a tap: the same with the one-pass look at the
    headers as with mitmproxy's expected_http_body_size alone, for every combination."""
    def tapped(quick: bool) -> bool:
        flow = flow_with(method=method.encode(), resp_headers=(), resp_body=b"",
                         status=status)
        flow.request.http_version = version
        flow.response.http_version = version
        message = flow.request if is_request else flow.response
        message.headers = http.Headers(list(headers))
        with pytest.MonkeyPatch.context() as patch:
            if not quick:
                patch.setattr("proxy.taps._plainly_small", lambda *a: False)
            (tap_request if is_request else tap_response)(flow, CAP)
        return isinstance(message.stream, BodyTap)

    assert tapped(True) == tapped(False)


def test_format_time_is_the_strftime_form():
    from datetime import UTC, datetime

    from capture import format_time
    rng = random.Random(3)
    for _ in range(20_000):
        epoch = rng.uniform(0, 4e9)
        assert format_time(epoch) == datetime.fromtimestamp(epoch, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
