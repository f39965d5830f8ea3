"""A WSGI app for the tests: echoes what it got, and sends bodies of any size, chunked or not.

It stands in for an application with big, binary, compressed or hostile traffic, which the
sample apps do not have, so the tests can check that everything passes the proxy as it was
sent. It runs under werkzeug's development server, whose `werkzeug.socket` gives the raw
connection to the endpoints that misbehave on purpose (/reset) or leave HTTP (/ws).

- `/upload`: the size and sha256 of the request body as received (content-encoding untouched).
- `/bytes?n=N`: N bytes of `pattern`, chunked (no Content-Length).
- `/echo...`: the request target and headers exactly as received, one per line.
- `/gzip?n=N`: N bytes of text, gzip-encoded, with Content-Encoding: gzip.
- `/sleep?s=S`: answers after S seconds.
- `/reset`: resets the connection (TCP RST) without answering.
- `/ws`: a WebSocket echo server (RFC 6455 handshake, then echoes text and binary messages).
- `/canned/<name>`: the answer a test put in `CANNED[name]` (status, headers, body bytes), as it
  is: the way to send the proxy responses of any shape (the app runs in the test's process).
"""

import base64
import gzip
import hashlib
import socket
import struct
import time
from urllib.parse import parse_qs

from werkzeug.wsgi import get_input_stream
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CANNED: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        stream = get_input_stream(environ)  # bounded by Content-Length, or chunked
        while chunk := stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        return plain(start_response, f"{size} {digest.hexdigest()}".encode())
    if path == "/bytes":
        size = int(query.get("n", ["0"])[0])
        # No Content-Length: the server sends it chunked, a body of unknown size.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return pattern_chunks(size)
    if path.startswith("/echo"):
        return plain(start_response, echo_of(environ))
    if path.startswith("/canned/") and path[8:] in CANNED:
        status, headers, body = CANNED[path[8:]]
        start_response(f"{status} Canned", [*headers, ("Content-Length", str(len(body)))])
        return [body]
    if path == "/gzip":
        body = gzip.compress(text(int(query.get("n", ["0"])[0])), mtime=0)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/sleep":
        time.sleep(float(query.get("s", ["0"])[0]))
        return plain(start_response, b"awake")
    if path == "/reset":
        reset(environ)
    if path == "/ws" and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        websocket(environ)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


def plain(start_response, body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo_of(environ) -> bytes:
    """The request target and the headers, each on a line, as the bytes that came in.

    The server decodes the request line and header values as ISO-8859-1, so encoding them
    back gives the bytes on the wire, whatever they were; the target has also been through
    WSGI's "encoding dance" (UTF-8 bytes shown as ISO-8859-1), undone here."""
    lines = [environ["RAW_URI"].encode("latin-1").decode("utf-8")]
    for key, value in sorted(environ.items()):
        if key.startswith("HTTP_"):
            lines.append(f"{key[5:].replace('_', '-').lower()}: {value}")
    return "\n".join(lines).encode("latin-1")


def echo_lines(target: bytes, headers: dict[bytes, bytes]) -> bytes:
    """What `/echo` answers to a request with this target and these headers."""
    lines = [target] + [b"%s: %s" % (name.lower(), value)
                        for name, value in sorted(headers.items(), key=lambda h: h[0].lower())]
    return b"\n".join(lines)


def reset(environ) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), before any byte of an answer.

    The request should say `Connection: close`: otherwise the server goes on to read the
    next request from the socket closed here, and logs the failure."""
    sock = environ["werkzeug.socket"]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # The server's reader holds a reference that defers the real close: drop it too.
    environ["wsgi.input"].close()
    # A ConnectionError is what the server expects when a client goes away: it writes
    # nothing more.
    raise ConnectionResetError("the test app reset the connection on purpose")


def websocket(environ) -> None:
    """The handshake and the echo, straight on the socket: the server would add its own
    `Connection: close` to a 101 answer, which a WebSocket client rightly refuses."""
    sock = environ["werkzeug.socket"]
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept)
    ws = Connection(ConnectionType.SERVER)
    while True:
        data = sock.recv(65536)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                sock.sendall(ws.send(event))  # a message sends itself back
            elif isinstance(event, Ping):
                sock.sendall(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                sock.sendall(ws.send(event.response()))
                data = b""
        if not data:
            break
    sock.shutdown(socket.SHUT_RDWR)  # the server's next read sees the end, and stops
    raise ConnectionAbortedError("the WebSocket is over")  # the server writes nothing more


def text(size: int) -> bytes:
    """Compressible text: what gzip is for."""
    line = b"tapline captures every exchange through the proxy.\n"
    return (line * (size // len(line) + 1))[:size]


BLOCK = bytes(range(256))


def pattern(size: int) -> bytes:
    """Deterministic, not valid UTF-8 (0xff), so the record must carry it as base64."""
    return (BLOCK * (size // 256 + 1))[:size]


def pattern_chunks(size: int, chunk: int = 256 * 1024):
    """`pattern(size)` in chunks, without holding all of it: a chunk is a whole number of
    blocks, so every chunk but the last is the same bytes."""
    full = BLOCK * (chunk // 256)
    sent = 0
    while sent < size:
        part = full[:size - sent]
        sent += len(part)
        yield part
