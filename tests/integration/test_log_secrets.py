"""No line of the proxy's log carries what a client sent: mitmproxy quotes the raw bytes of a
request it cannot read (a head cut short, a bad request line, a bad header line), and the
proxy's log filter must keep them out, through the real proxy with every connection logged."""

from __future__ import annotations

import socket
import uuid

import pytest
import requests

from stack.support import wait_until
from tests.integration.conftest import start_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(kafka, tmp_path_factory):
    # Connection lines are off by default (they are info); on, mitmproxy says all it says.
    with start_pipeline(tmp_path_factory.mktemp("log-secrets"), kafka.bootstrap_servers,
                        PROXY_LOG_CONNECTIONS="true", PROXY_WORKERS="1") as started:
        yield started


def secret() -> str:
    return f"opensesame{uuid.uuid4().hex[:10]}"


def send_and_close(url: str, data: bytes) -> bytes:
    """Send `data`, stop sending, and read what the proxy says until it closes."""
    port = int(url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def proxy_log(pipeline) -> str:
    return (pipeline.workdir / "proxy.log").read_text(errors="replace")


def wait_for_line(pipeline, text: str) -> str:
    """The proxy's log once a line holding `text` is in it."""
    return wait_until(lambda: text in proxy_log(pipeline) and proxy_log(pipeline),
                      timeout=15, interval=0.2, what=f"{text!r} in the proxy's log")


def test_a_head_cut_short_is_logged_without_its_bytes(pipeline):
    in_query, in_header = secret(), secret()
    head = (f"GET /private?code={in_query} HTTP/1.1\r\nHost: h\r\n"
            f"X-Note: {in_header}\r\n").encode()  # no blank line: the head never ends
    send_and_close(pipeline.echo, head)
    log = wait_for_line(pipeline, "Client closed connection before completing request headers")
    assert in_query not in log and in_header not in log
    line = next(line for line in log.splitlines() if "before completing request" in line)
    assert f"[{len(head)} bytes withheld]" in line, line


def test_a_bad_request_line_is_logged_without_its_query(pipeline):
    in_query = secret()
    line_sent = f"GET /x?token={in_query} HTTP/1.1 extra\r\nHost: h\r\n\r\n".encode()
    answer = send_and_close(pipeline.echo, line_sent)
    assert answer.startswith(b"HTTP/1.1 400")
    log = wait_for_line(pipeline, "Bad HTTP request line")
    assert in_query not in log


def test_a_bad_header_line_is_logged_without_its_value(pipeline):
    in_header = secret()
    answer = send_and_close(pipeline.echo,
                            f"GET / HTTP/1.1\r\nHost: h\r\nX-Note {in_header}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400")
    log = wait_for_line(pipeline, "Invalid header line")
    assert in_header not in log


def test_the_proxy_still_serves_and_says_nothing_of_what_it_served(pipeline):
    in_query, in_header = secret(), secret()
    before = proxy_log(pipeline).count("client disconnect")
    answer = requests.get(f"{pipeline.echo}/echo/ok?q={in_query}",
                          headers={"X-Note": in_header, "Connection": "close"}, timeout=10)
    assert answer.status_code == 200
    # Every line about this exchange is written once its connection's end is.
    log = wait_until(lambda: proxy_log(pipeline).count("client disconnect") > before
                     and proxy_log(pipeline), timeout=15, interval=0.2, what="the disconnect")
    assert in_query not in log and in_header not in log
