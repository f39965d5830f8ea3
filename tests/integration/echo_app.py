"""A WSGI app for the tests: echoes what it got, and sends bodies of any size, chunked or not.

It stands in for an application with big or binary bodies, which the sample apps do not have,
so the tests can check that bodies above the capture cap pass the proxy whole.
"""

import hashlib

from werkzeug.wsgi import get_input_stream


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        stream = get_input_stream(environ)  # bounded by Content-Length, or chunked
        while chunk := stream.read(65536):
            digest.update(chunk)
            size += len(chunk)
        body = f"{size} {digest.hexdigest()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/bytes":
        size = int(environ.get("QUERY_STRING", "n=0").partition("=")[2] or 0)
        # No Content-Length: the server sends it chunked, a body of unknown size.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return pattern_chunks(size)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]


def pattern(size: int) -> bytes:
    """Deterministic, not valid UTF-8 (0xff), so the record must carry it as base64."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def pattern_chunks(size: int, chunk: int = 256 * 1024):
    data = pattern(size)
    for start in range(0, size, chunk):
        yield data[start:start + chunk]
