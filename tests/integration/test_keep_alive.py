"""Keep-alive through the real proxy is what the app gives: `Connection: Keep-Alive` as
`ab -k` writes it (capitalised, HTTP/1.0) keeps the connection when the app keeps it."""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stack import free_ports
from stack.support import Process

pytestmark = pytest.mark.integration


class KeepAliveApp(BaseHTTPRequestHandler):
    """An app that keeps connections as HTTP/1.1 servers do, and HTTP/1.0 ones when asked
    (Python's http.server reads the Connection header without regard to case)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        if self.request_version == "HTTP/1.0" and not self.close_connection:
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def answers_on_one_connection(port: int, version: str, connection: str) -> int:
    """How many of three requests sent one after the other on one connection are answered."""
    answered = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")
        for _ in range(3):
            try:
                sock.sendall(f"GET /ka {version}\r\nHost: 127.0.0.1\r\n"
                             f"Connection: {connection}\r\n\r\n".encode())
                if not stream.readline().startswith(b"HTTP/1.1 200"):
                    return answered
                while stream.readline() not in (b"\r\n", b""):
                    pass
                if stream.read(2) != b"ok":
                    return answered
            except OSError:  # reset: the other side closed
                return answered
            answered += 1
    return answered


@pytest.fixture(scope="module")
def app_and_proxy(tmp_path_factory):
    app = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveApp)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port, metrics, kafka = free_ports(3)
    proxy = Process(
        [sys.executable, "-m", "proxy"], tmp_path_factory.mktemp("keepalive") / "proxy.log",
        # Nothing listens on the Kafka port: keep-alive is the proxy's, whatever Kafka does.
        {"PROXY_ROUTES": f"app=http://127.0.0.1:{app.server_port}@{port}",
         "PROXY_METRICS_PORT": str(metrics), "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}"},
    ).start(port, metrics)
    try:
        yield app.server_port, port
    finally:
        proxy.stop()
        app.shutdown()
        app.server_close()


@pytest.mark.parametrize(("version", "connection", "answers"), [
    ("HTTP/1.0", "Keep-Alive", 3),  # ab -k
    ("HTTP/1.0", "keep-alive", 3),
    ("HTTP/1.0", "KEEP-ALIVE", 3),
    ("HTTP/1.0", "close", 1),
    ("HTTP/1.1", "Keep-Alive", 3),
    ("HTTP/1.1", "Close", 1),
])
def test_keep_alive_is_the_apps(app_and_proxy, version, connection, answers):
    app_port, proxy_port = app_and_proxy
    assert answers_on_one_connection(app_port, version, connection) == answers  # the app's
    assert answers_on_one_connection(proxy_port, version, connection) == answers
