"""mitmproxy 11.0.2's HTTP/1 keep-alive check, with the Connection header read as RFC 9110
says: a list of tokens compared without regard to case.

mitmproxy compares the tokens as they are written, so `Connection: Keep-Alive` (what `ab -k`
and many HTTP/1.0 clients send) reads as neither keep-alive nor close, and an HTTP/1.0
connection is closed after its first answer, even when the app answered that it keeps it
open; the client then finds its next request reset. `install()` replaces the one function
mitmproxy's HTTP/1 layer asks (`mitmproxy.net.http.http1.connection_close`), so the client
gets keep-alive exactly when the app would give it. docs/decisions.md has why a patch.
"""

from __future__ import annotations

from mitmproxy.net.http import http1
from mitmproxy.net.http.http1 import read

_PERSISTENT_VERSIONS = frozenset(("HTTP/1.1", b"HTTP/1.1", "HTTP/2.0", b"HTTP/2.0"))


def connection_close(http_version, headers) -> bool:
    """Whether the connection ends after this message (RFC 9112 9.3): `close` ends it,
    `keep-alive` keeps it, and otherwise HTTP/1.1 and later keep it."""
    if "connection" in headers:
        tokens = {token.strip().lower() for token in headers["connection"].split(",")}
        if "close" in tokens:
            return True
        if "keep-alive" in tokens:
            return False
    return http_version not in _PERSISTENT_VERSIONS


def install() -> None:
    http1.connection_close = connection_close
    read.connection_close = connection_close
