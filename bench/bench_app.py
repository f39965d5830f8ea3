"""The upstream of the proxy bench: a WSGI app that costs as little as an app can.

    gunicorn -w 2 -k gthread --threads 4 -b 127.0.0.1:PORT bench.bench_app:app

GET /small answers a short JSON body; POST /upload reads the whole request body and answers
its size; POST /jobs stands in for app_a's (the seed's `ab -m POST -H "Authorization: mytoken"`
command): 401 without the header, else the job list, with no call to app_B. All send
Content-Length, so keep-alive works end to end (under gthread workers).
"""

from __future__ import annotations

import json

SMALL = json.dumps({"status": "ok", "items": [1, 2, 3], "note": "a small answer"}).encode()
SMALL_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(SMALL)))]


def upload_body(size: int = 100 * 1024) -> bytes:
    """A JSON object of about `size` bytes, the kind of body an API client posts."""
    items, length = [], 20
    while length < size:
        item = {"id": len(items), "name": f"item-{len(items)}", "qty": len(items) % 7,
                "tags": ["alpha", "beta"], "note": "lorem ipsum dolor sit amet " * 2}
        items.append(item)
        length += len(json.dumps(item)) + 2
    return json.dumps({"batch": "b-1", "items": items}).encode()


JOBS = json.dumps({"jobs": [{"id": i, "title": f"job {i}", "state": "open"}
                            for i in range(5)]}).encode()


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/jobs" and environ["REQUEST_METHOD"] == "POST":
        if not environ.get("HTTP_AUTHORIZATION", "").strip():
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(JOBS)))])
        return [JOBS]
    if path == "/small":
        start_response("200 OK", SMALL_HEADERS)
        return [SMALL]
    if path == "/upload" and environ["REQUEST_METHOD"] == "POST":
        stream, size = environ["wsgi.input"], 0
        while chunk := stream.read(65536):
            size += len(chunk)
        body = b'{"received": %d}' % size
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]
