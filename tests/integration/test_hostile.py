"""Hostile and unusual input through the real proxy.

Every case ends the same way: the client got what the app answered (or a clear error from the
proxy), the exchange is a record on the topic (or a drop counted with its reason), and a
normal request afterwards still works and is captured. Raw sockets send what a client library
would tidy up (bytes that are not UTF-8, HTTP/1.0, requests cut off half way).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import re
import socket
import ssl
import time
import uuid

import h2.config
import h2.connection
import h2.events
import pytest
import requests
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

from capture import CaptureRecord, decode, decode_body
from stack.support import metric, read_topic, sample, scrape, wait_until
from tests.integration import echo_app
from tests.integration.conftest import start_pipeline

pytestmark = pytest.mark.integration

MB = 1_000_000
CAP = 1 << 20  # the proxy's default body cap


@pytest.fixture(scope="module")
def pipeline(kafka, tmp_path_factory):
    # Listeners on IPv4 and IPv6 loopback; X-Forwarded-For believed from 127.0.0.1 only, so
    # 127.0.0.2 and ::1 are untrusted peers.
    # Binary bodies are kept, so that the tests can check every byte passed (by default they
    # are withheld: tests/sinks/test_redaction_corpus.py).
    with start_pipeline(tmp_path_factory.mktemp("hostile"), kafka.bootstrap_servers,
                        PROXY_LISTEN_HOST="127.0.0.1,::1",
                        PROXY_TRUSTED_PROXIES="127.0.0.1/32",
                        CAPTURE_UNSCANNED_BODIES="keep") as started:
        yield started


# --- helpers ---------------------------------------------------------------------------------


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


def tag() -> str:
    """A marker for one test's requests, so it finds its own records on the shared topic."""
    return uuid.uuid4().hex[:12]


def all_records(pipeline) -> list[CaptureRecord]:
    """Every record the proxy has had acknowledged so far."""
    produced = int(metric(pipeline.metrics, "tapline_proxy_produced_total"))
    messages = read_topic(pipeline.bootstrap, pipeline.topic, expect=produced, settle=0)
    records = []
    for key, value in messages:
        record = decode(value)
        assert key == record.client_ip.encode()
        records.append(record)
    return records


def records_of(pipeline, marker: str, n: int = 1, timeout: float = 30) -> list[CaptureRecord]:
    """The records whose request line carries `marker`, once there are `n`; fails on more."""
    def mine() -> list[CaptureRecord]:
        found = [r for r in all_records(pipeline)
                 if marker in r.request.path or marker in r.request.query]
        return found if len(found) >= n else []

    found = wait_until(mine, timeout=timeout, interval=0.3, what=f"{n} record(s) of {marker}")
    assert len(found) == n, [(r.request.path, r.error) for r in found]
    return found


def record_of(pipeline, marker: str, timeout: float = 30) -> CaptureRecord:
    return records_of(pipeline, marker, 1, timeout)[0]


def record_each(pipeline, markers: list[str], timeout: float = 30) -> dict[str, CaptureRecord]:
    """The one record of each marker, found with as few reads of the topic as can be."""
    def each() -> dict[str, list[CaptureRecord]]:
        records = all_records(pipeline)
        found = {m: [r for r in records if m in r.request.path or m in r.request.query]
                 for m in markers}
        return found if all(found.values()) else {}

    found = wait_until(each, timeout=timeout, interval=0.3, what=f"records of {markers}")
    assert all(len(records) == 1 for records in found.values()), found
    return {marker: records[0] for marker, records in found.items()}


def body(message) -> bytes:
    return decode_body(message.body, message.body_encoding)


def dropped(pipeline, reason: str) -> float:
    return metric(pipeline.metrics, "tapline_proxy_dropped_total", reason=reason)


def assert_accounted(pipeline) -> None:
    """captured == produced + dropped + queued + in flight, once the counters settle."""
    def agree():
        s = scrape(pipeline.metrics)
        rest = (sample(s, "tapline_proxy_produced_total")
                + sum(v for k, v in s.items() if k.startswith("tapline_proxy_dropped_total{"))
                + sample(s, "tapline_proxy_queue_records")
                + sample(s, "tapline_proxy_in_flight_records"))
        return sample(s, "tapline_proxy_captures_total") == rest

    wait_until(agree, timeout=10, what="every capture produced or counted as dropped")


def assert_still_working(pipeline) -> None:
    """The proxy is alive: a normal request gets its answer and becomes a record."""
    marker = tag()
    answer = requests.get(f"{pipeline.echo}/echo/alive-{marker}", timeout=10)
    assert answer.status_code == 200
    assert answer.content.startswith(f"/echo/alive-{marker}".encode())
    record = record_of(pipeline, marker)
    assert (record.response.status_code, record.error) == (200, None)
    assert body(record.response) == answer.content
    assert pipeline.proxy.proc.poll() is None
    assert_accounted(pipeline)


class _Received:
    """What `http.client.HTTPResponse` needs to parse bytes already read off a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, _mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def parse_response(raw: bytes, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    response = http.client.HTTPResponse(_Received(raw), method=method)
    response.begin()
    return response.status, response.headers, response.read()


def raw_exchange(url: str, data: bytes, *, host: str = "127.0.0.1",
                 source: str | None = None, timeout: float = 15) -> bytes:
    """Send bytes as they are and read until the proxy closes the connection."""
    sock = socket.create_connection((host, port_of(url)), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    with sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def sha256_of_chunks(chunks) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


# --- bodies ----------------------------------------------------------------------------------


def test_100_mb_each_way_passes_whole_and_the_proxy_stays_small(pipeline):
    size = 100 * MB
    pid = pipeline.proxy.proc.pid
    assert_still_working(pipeline)  # warm: the first exchange loads what the proxy needs
    before = proc_status(pid)["VmRSS"]
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS: the peak from here on is ours
    marker = tag()

    upload = http.client.HTTPConnection("127.0.0.1", port_of(pipeline.echo), timeout=60)
    upload.putrequest("POST", f"/upload?up={marker}")
    upload.putheader("Content-Type", "application/octet-stream")
    upload.putheader("Content-Length", str(size))
    upload.endheaders()
    for chunk in echo_app.pattern_chunks(size):
        upload.send(chunk)
    answer = upload.getresponse().read()
    upload.close()
    expected = sha256_of_chunks(echo_app.pattern_chunks(size))
    assert answer == f"{expected[0]} {expected[1]}".encode()

    with requests.get(f"{pipeline.echo}/bytes?n={size}&down={marker}", stream=True,
                      timeout=60) as download:
        assert download.status_code == 200
        assert sha256_of_chunks(download.iter_content(1 << 20)) == expected

    peak = proc_status(pid)["VmHWM"]
    growth = peak - before
    print(f"proxy RSS before {before / MB:.1f} MB, peak {peak / MB:.1f} MB, "
          f"growth {growth / MB:.1f} MB for {size / MB:.0f} MB each way")
    assert growth < 60 * MB

    up, down = records_of(pipeline, marker, 2)
    if up.request.path != "/upload":
        up, down = down, up
    assert (up.request.body_size, up.request.body_truncated) == (size, True)
    assert body(up.request) == echo_app.pattern(CAP)
    assert body(up.response) == answer
    assert (down.response.body_size, down.response.body_truncated) == (size, True)
    assert body(down.response) == echo_app.pattern(CAP)
    assert up.error is None and down.error is None
    assert_still_working(pipeline)


def test_binary_bodies_are_exact_both_ways(pipeline):
    marker = tag()
    upload = os.urandom(200_000)
    answer = requests.post(f"{pipeline.echo}/upload?{marker}", data=upload, timeout=10,
                           headers={"Content-Type": "application/octet-stream"})
    assert answer.text == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}"
    download = requests.get(f"{pipeline.echo}/bytes?n=300000&{marker}", timeout=10)
    assert download.content == echo_app.pattern(300_000)

    records = records_of(pipeline, marker, 2)
    up = next(r for r in records if r.request.path == "/upload")
    down = next(r for r in records if r.request.path == "/bytes")
    assert up.request.body_encoding == "base64"
    assert body(up.request) == upload
    assert (up.request.body_size, up.request.body_truncated) == (len(upload), False)
    assert down.response.body_encoding == "base64"
    assert body(down.response) == download.content
    assert (down.response.body_size, down.response.body_truncated) == (300_000, False)
    assert_still_working(pipeline)


def test_gzip_bodies_pass_as_sent_and_are_recorded_decoded(pipeline):
    marker = tag()
    form = "&".join(f"field{i}=value{i}" for i in range(500)).encode()
    compressed = gzip.compress(form, mtime=0)
    answer = requests.post(f"{pipeline.echo}/upload?{marker}", data=compressed, timeout=10,
                           headers={"Content-Encoding": "gzip",
                                    "Content-Type": "application/x-www-form-urlencoded"})
    # The app got the compressed bytes: the proxy decodes nothing on the way.
    assert answer.text == f"{len(compressed)} {hashlib.sha256(compressed).hexdigest()}"
    with requests.get(f"{pipeline.echo}/gzip?n=50000&{marker}", stream=True,
                      timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        on_the_wire = response.raw.read(decode_content=False)
    assert gzip.decompress(on_the_wire) == echo_app.text(50_000)

    records = records_of(pipeline, marker, 2)
    up = next(r for r in records if r.request.path == "/upload")
    down = next(r for r in records if r.request.path == "/gzip")
    # The record holds the body decoded (so that it could be redacted) and says how it came.
    assert body(up.request) == form
    assert (up.request.body_size, up.request.content_encoding) == (len(compressed), "gzip")
    assert up.request.params["form"][:2] == [["field0", "value0"], ["field1", "value1"]]
    assert ["Content-Encoding", "gzip"] in up.request.headers
    assert body(down.response) == echo_app.text(50_000)
    assert (down.response.body_size, down.response.content_encoding) == (len(on_the_wire),
                                                                         "gzip")
    assert ["Content-Encoding", "gzip"] in down.response.headers
    assert_still_working(pipeline)


def test_chunked_bodies_both_ways(pipeline):
    marker = tag()
    pieces = [os.urandom(1000 + i) for i in range(300)]  # about 450 KB in 300 chunks
    whole = b"".join(pieces)
    answer = requests.post(f"{pipeline.echo}/upload?{marker}", data=iter(pieces), timeout=10)
    assert answer.text == f"{len(whole)} {hashlib.sha256(whole).hexdigest()}"
    download = requests.get(f"{pipeline.echo}/bytes?n=1500000&{marker}", timeout=10)
    assert download.content == echo_app.pattern(1_500_000)

    records = records_of(pipeline, marker, 2)
    up = next(r for r in records if r.request.path == "/upload")
    down = next(r for r in records if r.request.path == "/bytes")
    assert ["Transfer-Encoding", "chunked"] in up.request.headers
    assert (body(up.request), up.request.body_size) == (whole, len(whole))
    assert ["Transfer-Encoding", "chunked"] in down.response.headers
    assert (down.response.body_size, down.response.body_truncated) == (1_500_000, True)
    assert body(down.response) == echo_app.pattern(CAP)
    assert_still_working(pipeline)


# --- what is in the request line and headers -------------------------------------------------


def test_invalid_utf8_in_path_query_and_header_values(pipeline):
    marker = tag()
    target = b"/echo/\xff\xfe%ff-" + marker.encode() + b"?q=\xc3\x28&name=\xe9t\xe9"
    headers = {b"Host": b"127.0.0.1", b"X-Bad": b"\xff\x80 caf\xe9", b"Connection": b"close"}
    request = b"GET %s HTTP/1.1\r\n%s\r\n" % (
        target, b"".join(b"%s: %s\r\n" % item for item in headers.items()))
    status, _headers, content = parse_response(raw_exchange(pipeline.echo, request))
    assert status == 200
    assert content == echo_app.echo_lines(target, headers)  # the app got every byte

    record = record_of(pipeline, marker)
    # Text that is not UTF-8 is ISO-8859-1 in the record: encoding it gives the bytes back.
    assert record.request.path.encode("latin-1") == target.partition(b"?")[0]
    assert record.request.query.encode("latin-1") == target.partition(b"?")[2]
    assert ["X-Bad", b"\xff\x80 caf\xe9".decode("latin-1")] in record.request.headers
    assert [name for name, _value in record.request.params["query"]] == ["q", "name"]
    assert body(record.response) == content
    assert_still_working(pipeline)


def test_ten_thousand_parameters_and_more(pipeline):
    marker = tag()
    # The app's server takes a request line up to 64 KiB: short pairs, 12,000 of them.
    query = f"m={marker}&" + "&".join(["p="] * 11_999)
    form = "&".join(f"f{i}={i}" for i in range(20_000)).encode()
    answer = requests.post(f"{pipeline.echo}/upload?{query}", data=form, timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.text == f"{len(form)} {hashlib.sha256(form).hexdigest()}"

    record = record_of(pipeline, marker)
    assert record.request.params["query"][:2] == [["m", marker], ["p", ""]]
    assert len(record.request.params["query"]) == 10_000
    # At most 10,000 pairs a source. A body this large (170 KB) is over
    # CAPTURE_PARAMS_BODY_MAX_BYTES, so it is not parsed at all; it is kept whole.
    assert record.request.params["form"] == []
    assert body(record.request) == form
    assert record.request.query == query
    assert_still_working(pipeline)


def test_very_long_url_and_header(pipeline):
    # mitmproxy sets no limit on a request line or a header; the app's server takes lines up
    # to 64 KiB. Both records are far below the record cap, so they are kept whole.
    marker = tag()
    long_path = f"/echo/{marker}/" + "a" * 60_000
    long_value = "v" * 60_000
    answer = requests.get(pipeline.echo + long_path + "?q=" + "b" * 1000, timeout=10,
                          headers={"X-Long": long_value})
    assert answer.status_code == 200
    assert answer.content.startswith(long_path.encode())
    assert f"x-long: {long_value}".encode() in answer.content

    record = record_of(pipeline, marker)
    assert record.request.path == long_path
    assert ["X-Long", long_value] in record.request.headers
    assert body(record.response) == answer.content
    assert_still_working(pipeline)


def test_a_line_longer_than_the_app_takes_is_the_apps_clear_error(pipeline):
    marker = tag()
    answer = requests.get(f"{pipeline.echo}/echo/{marker}/" + "a" * 70_000, timeout=10)
    assert answer.status_code == 414  # werkzeug's answer, passed on as it is
    record = record_of(pipeline, marker)
    assert record.response.status_code == 414
    assert body(record.response) == answer.content
    assert_still_working(pipeline)


def test_headers_over_the_record_cap_are_withheld_and_the_record_kept(pipeline):
    # 70 headers of 60 KB: 4.2 MB of headers, more than the 4 MiB record cap. Bodies are cut
    # first, then the longest header values are withheld until the record fits: the exchange
    # is still captured. (Values over the redaction budget are withheld too.)
    marker = tag()
    headers = {f"X-Big-{i}": os.urandom(30_000).hex() for i in range(70)}
    answer = requests.get(f"{pipeline.echo}/echo/{marker}", headers=headers, timeout=30)
    assert answer.status_code == 200
    assert f"x-big-69: {headers['X-Big-69']}".encode() in answer.content
    record = record_of(pipeline, marker)
    kept = dict(map(tuple, record.request.headers))
    assert set(headers) <= set(kept)
    assert sum(kept[name] == value for name, value in headers.items()) < len(headers)
    assert all(kept[name] == value or kept[name].startswith("[withheld")
               for name, value in headers.items())
    assert dropped(pipeline, "oversized") == 0
    assert_still_working(pipeline)


# --- protocols and addresses -----------------------------------------------------------------


def test_http_1_0_with_and_without_host(pipeline):
    marker = tag()
    with_host = f"/echo/{marker}/with-host".encode()
    raw = raw_exchange(pipeline.echo, b"GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % with_host)
    app_version = raw.partition(b" ")[0].decode()  # the app answers in HTTP/1.1 even so
    status, _headers, content = parse_response(raw)
    assert (status, content) == (200, echo_app.echo_lines(with_host, {b"Host": b"127.0.0.1"}))

    form = b"a=1&b=2"
    raw = raw_exchange(pipeline.echo, b"POST /upload?%s HTTP/1.0\r\nContent-Length: %d\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
                       % (marker.encode(), len(form), form))
    status, _headers, content = parse_response(raw, "POST")
    assert (status, content) == (200, f"7 {hashlib.sha256(form).hexdigest()}".encode())

    records = records_of(pipeline, marker, 2)
    assert {r.request.http_version for r in records} == {"HTTP/1.0"}
    get = next(r for r in records if r.request.method == "GET")
    post = next(r for r in records if r.request.method == "POST")
    assert body(get.response) == echo_app.echo_lines(with_host, {b"Host": b"127.0.0.1"})
    assert get.response.http_version == app_version
    assert get.request.host == "127.0.0.1"
    # No Host header: the record names the upstream the request went to.
    assert post.request.host == "127.0.0.1"
    assert post.request.params["form"] == [["a", "1"], ["b", "2"]]
    assert body(post.response) == content
    assert_still_working(pipeline)


def h2_request(url: str, method: str, path: str, data: bytes = b"") -> tuple[dict, bytes]:
    """One HTTP/2 request over TLS (mitmproxy speaks h2 only over TLS; its certificate is
    its own, so it is not verified): the response's headers and body."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", method), (":path", path), (":scheme", "https"),
                              (":authority", f"localhost:{port_of(url)}")],
                          end_stream=not data)
        step = conn.max_outbound_frame_size
        for start in range(0, len(data), step):
            conn.send_data(1, data[start:start + step], end_stream=start + step >= len(data))
        sock.sendall(conn.data_to_send())
        headers, content = {}, bytearray()
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the HTTP/2 connection"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    content += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    conn.close_connection()
                    sock.sendall(conn.data_to_send())
                    return headers, bytes(content)
            sock.sendall(conn.data_to_send())


def test_http2_client(pipeline):
    marker = tag()
    upload = os.urandom(40_000)  # several DATA frames
    headers, content = h2_request(pipeline.echo, "POST", f"/upload?{marker}", upload)
    assert headers[":status"] == "200"
    assert content == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}".encode()
    headers, download = h2_request(pipeline.echo, "GET", f"/bytes?n=200000&{marker}")
    assert (headers[":status"], download) == ("200", echo_app.pattern(200_000))
    # A request without a body reaches the app as sent (mitmproxy adds Host, from :authority).
    target = f"/echo/{marker}".encode()
    headers, echoed = h2_request(pipeline.echo, "GET", target.decode())
    authority = f"localhost:{port_of(pipeline.echo)}".encode()
    assert echoed == echo_app.echo_lines(target, {b"host": authority})

    records = records_of(pipeline, marker, 3)
    assert {r.request.http_version for r in records} == {"HTTP/2.0"}
    up = next(r for r in records if r.request.path == "/upload")
    down = next(r for r in records if r.request.path == "/bytes")
    assert up.request.host == f"localhost:{port_of(pipeline.echo)}"
    assert body(up.request) == upload
    assert body(up.response) == content
    assert body(down.response) == download
    assert_still_working(pipeline)


def test_websocket_handshake_is_captured(pipeline):
    marker = tag()
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", port_of(pipeline.echo)), timeout=10) as sock:
        sock.sendall(ws.send(Request(host="127.0.0.1", target=f"/ws?{marker}")))
        events = []
        while not any(isinstance(e, AcceptConnection) for e in events):
            ws.receive_data(sock.recv(65536))
            events += list(ws.events())
        sock.sendall(ws.send(Message(data="hello through the proxy")))
        echoed = ""
        while not echoed:
            ws.receive_data(sock.recv(65536))
            echoed = "".join(e.data for e in ws.events() if isinstance(e, TextMessage))
        assert echoed == "hello through the proxy"
        sock.sendall(ws.send(CloseConnection(code=1000)))
        while sock.recv(65536):
            pass

    record = record_of(pipeline, marker)
    assert record.response.status_code == 101
    assert ["Upgrade", "websocket"] in record.response.headers
    assert any(name.lower() == "sec-websocket-key" for name, _v in record.request.headers)
    assert_still_working(pipeline)


def test_ipv6_client(pipeline):
    marker = tag()
    url = f"http://[::1]:{port_of(pipeline.echo)}/echo/{marker}"
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.content.startswith(f"/echo/{marker}".encode())
    record = record_of(pipeline, marker)
    assert (record.client_ip, record.app) == ("::1", "echo")
    assert record.request.host == f"[::1]:{port_of(pipeline.echo)}"
    assert body(record.response) == answer.content
    assert_still_working(pipeline)


def forwarded_request(pipeline, marker: str, forwarded_for: list[bytes], *,
                      host: str = "127.0.0.1", source: str | None = None) -> bytes:
    """GET /echo/<marker> with these X-Forwarded-For lines, from `source` (the peer)."""
    target = f"/echo/{marker}".encode()
    head = b"".join(b"X-Forwarded-For: %s\r\n" % value for value in forwarded_for)
    raw = raw_exchange(pipeline.echo, b"GET %s HTTP/1.1\r\nHost: h\r\n%sConnection: close\r\n\r\n"
                       % (target, head), host=host, source=source)
    status, _headers, content = parse_response(raw)
    assert (status, content.partition(b"\n")[0]) == (200, target)
    return content


def test_forwarded_for_from_an_untrusted_peer_is_ignored(pipeline):
    # Trusted is 127.0.0.1 alone: 127.0.0.2 (also loopback) and ::1 are not.
    ipv4, ipv6 = tag(), tag()
    forwarded_request(pipeline, ipv4, [b"203.0.113.9"], source="127.0.0.2")
    forwarded_request(pipeline, ipv6, [b"203.0.113.9, 198.51.100.1"], host="::1")
    records = record_each(pipeline, [ipv4, ipv6])
    assert records[ipv4].client_ip == "127.0.0.2"
    assert records[ipv6].client_ip == "::1"
    assert_still_working(pipeline)


HOSTILE_FORWARDED_FOR = {
    # what the trusted peer says -> the client the record must name
    b"203.0.113.7": "203.0.113.7",
    b"2001:DB8::0:1": "2001:db8::1",  # canonical spelling
    b"::ffff:198.51.100.4": "198.51.100.4",  # IPv4-mapped becomes IPv4
    b"198.51.100.1, 127.0.0.1": "198.51.100.1",  # trusted hops are skipped
    b"../../etc/passwd": "127.0.0.1",  # not an address: the peer
    b"1.2.3.4/../x": "127.0.0.1",
    b"%2e%2e%2f%2e%2e": "127.0.0.1",
    b"198.51.100.1, ../x": "127.0.0.1",  # the walk stops at garbage
    b"fe80::1%eth0/../../x": "127.0.0.1",
    b"1.2.3.4" + b"5" * 8000: "127.0.0.1",  # very long
    "\u202e10.0.0.1".encode(): "127.0.0.1",  # not ASCII
    b"\xff\xfe10.0.0.1": "127.0.0.1",  # not UTF-8
    b"": "127.0.0.1",
}


def test_forwarded_for_from_a_trusted_peer_is_used_and_validated(pipeline):
    from capture.lake_layout import key_prefix, object_key

    markers = {tag(): value for value in HOSTILE_FORWARDED_FOR}
    for marker, value in markers.items():
        forwarded_request(pipeline, marker, [value])
    records = record_each(pipeline, list(markers))
    for marker, value in markers.items():
        record = records[marker]
        assert record.client_ip == HOSTILE_FORWARDED_FOR[value], value
        # The real key function of the lake, on the real record: only a date, an hour and a
        # canonical address can come out of it.
        key = object_key(key_prefix(record.started_at, record.client_ip), pipeline.topic, 0, 7,
                         9)
        day, hour = record.started_at[:10], record.started_at[11:13]
        assert key == f"{day}/{hour}/{record.client_ip}/{pipeline.topic}-0-7-9.jsonl.gz"
        assert re.fullmatch(r"[0-9a-f.:]+", record.client_ip)
    assert_still_working(pipeline)


# --- connections that end badly --------------------------------------------------------------


def send_part_of_a_body(pipeline, marker: str, declared: int, sent: int) -> None:
    with socket.create_connection(("127.0.0.1", port_of(pipeline.echo)), timeout=10) as sock:
        sock.sendall(b"POST /upload?%s HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                     % (marker.encode(), declared))
        sock.sendall(echo_app.pattern(sent))
        time.sleep(0.3)  # the bytes reach the proxy; then the client is gone


def test_client_gone_in_the_middle_of_the_request(pipeline):
    # Below the cap mitmproxy holds the body until it is complete: the app gets nothing, and
    # the record says so. Above it the body streams: what passed is in the record.
    held, streamed = tag(), tag()
    send_part_of_a_body(pipeline, held, MB, 100_000)
    send_part_of_a_body(pipeline, streamed, 3 * MB, 1_500_000)

    record = record_of(pipeline, held)
    assert record.response is None
    assert "received 100000 bytes, expected 1000000" in record.error
    assert ["Content-Length", str(MB)] in record.request.headers
    assert (record.request.body, record.request.body_size) == ("", 0)

    record = record_of(pipeline, streamed)
    assert "received 1500000 bytes, expected 3000000" in record.error
    assert record.request.body_size == 1_500_000
    assert body(record.request) == echo_app.pattern(CAP)
    assert record.request.body_truncated
    assert_still_working(pipeline)


def test_client_gone_in_the_middle_of_the_response(pipeline):
    marker = tag()
    size = 50 * MB
    with socket.create_connection(("127.0.0.1", port_of(pipeline.echo)), timeout=10) as sock:
        sock.sendall(b"GET /bytes?n=%d&%s HTTP/1.1\r\nHost: h\r\n\r\n" % (size, marker.encode()))
        received = b""
        while len(received) < 300_000:
            received += sock.recv(65536)
    head, _, start = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert echo_app.pattern(CAP).startswith(start[start.index(b"\r\n") + 2:][:1000])

    record = record_of(pipeline, marker)
    assert record.error == "Client disconnected."
    # What the app sent before the client left is kept with the error.
    assert record.response.status_code == 200
    assert 0 < record.response.body_size < size
    assert body(record.response) == echo_app.pattern(min(CAP, record.response.body_size))
    assert_still_working(pipeline)


def test_app_resets_the_connection(pipeline):
    marker = tag()
    raw = raw_exchange(pipeline.echo, b"GET /reset?%s HTTP/1.1\r\nHost: h\r\n"
                       b"Connection: close\r\n\r\n" % marker.encode())
    status, _headers, content = parse_response(raw)
    assert status == 502  # mitmproxy's answer when the app goes away without one
    assert b"server closed connection" in content
    record = record_of(pipeline, marker)
    assert (record.response, record.error) == (None, "server closed connection")
    assert_still_working(pipeline)


def test_app_that_does_not_answer_in_time(pipeline):
    # mitmproxy has no timeout for an app's answer (only a 10-minute idle timeout of its
    # own): the client's timeout ends the exchange, and the record says the client left.
    marker = tag()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{pipeline.echo}/sleep?s=5&{marker}", timeout=1)
    record = record_of(pipeline, marker)
    assert (record.response, record.error) == (None, "Client disconnected.")
    assert 500 < record.duration_ms < 4000  # ended when the client left, not when the app woke
    assert_still_working(pipeline)
