"""The HTTP/1 keep-alive check the proxy gives mitmproxy: tokens without regard to case."""

import pytest
from mitmproxy.http import Headers
from mitmproxy.net.http import http1

from proxy import http1 as patched


@pytest.mark.parametrize(("version", "connection", "closes"), [
    ("HTTP/1.0", None, True),
    ("HTTP/1.0", "Keep-Alive", False),
    ("HTTP/1.0", "keep-alive", False),
    ("HTTP/1.0", " KEEP-ALIVE ", False),
    ("HTTP/1.0", "Upgrade, Keep-Alive", False),
    ("HTTP/1.1", None, False),
    ("HTTP/1.1", "Close", True),
    ("HTTP/1.1", "keep-alive, CLOSE", True),  # close wins
    ("HTTP/1.1", "TE", False),
    ("HTTP/2.0", None, False),
])
def test_connection_close(version, connection, closes):
    headers = Headers(connection=connection) if connection else Headers()
    assert patched.connection_close(version, headers) is closes


def test_install_replaces_what_mitmproxys_http1_layer_calls():
    original = http1.connection_close
    try:
        patched.install()
        assert http1.connection_close is patched.connection_close
    finally:
        http1.connection_close = original
        http1.read.connection_close = original
