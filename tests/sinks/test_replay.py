"""`tapline replay` from a real lake (moto's S3 server) against the sample apps on loopback: the
original statuses come back; against a changed app (500 on one route) the summary shows
exactly that diff and --fail-on-diff exits 3; a target that refuses connections is one line."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from werkzeug.serving import make_server

from apps import app_a, app_b
from capture import CaptureRecord, encode
from stack.factories import make
from stack.support import produce
from tests.sinks.lake_fixtures import fresh_bucket, s3_service  # noqa: F401
from tests.sinks.test_export_har import fill_lake, lake_in_env, run  # noqa: F401

pytestmark = pytest.mark.integration


def served(serve_wsgi, changed_route: str | None = None) -> dict[str, str]:
    """app_b and app_a (calling that app_b) on loopback; with `changed_route`, app_a answers
    500 there."""
    b = serve_wsgi(app_b.create_app())
    a_app = app_a.create_app(app_a.Settings(app_b_url=b))
    if changed_route is not None:
        inner = a_app.wsgi_app

        def broken(environ, start_response):
            if environ["PATH_INFO"] == changed_route:
                start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")])
                return [b"broken\n"]
            return inner(environ, start_response)

        a_app.wsgi_app = broken
    return {"app_a": serve_wsgi(a_app), "app_b": b}


@pytest.fixture
def serve_wsgi():
    servers = []

    def serve(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def traffic() -> list[CaptureRecord]:
    """What the sample apps answer, as captures: /hello, /jobs with good and bad tokens, and
    /auth on app_b, from three clients."""
    out = []
    shapes = [("app_a", "GET", "/hello", [], "", 200),
              ("app_a", "POST", "/jobs", [["Authorization", "mytoken"]], "", 200),
              ("app_a", "POST", "/jobs", [["Authorization", "nope"]], "", 401),
              ("app_b", "POST", "/auth", [["Content-Type", "application/x-www-form-urlencoded"]],
               "token=mytoken", 200)]
    for i in range(40):
        app, method, path, headers, body, status = shapes[i % len(shapes)]
        r = make(i, in_order=40, spread_s=4.0)
        r.app, r.request.method, r.request.path, r.request.query = app, method, path, ""
        r.client_ip, r.client_port = f"10.0.0.{i % 3 + 1}", 40_000 + i % 3
        r.request.headers = [["Host", "127.0.0.1:5000"], ["User-Agent", "curl/8.5.0"], *headers]
        r.request.body, r.request.body_size = body, len(body)
        r.response.status_code = status
        out.append(r)
    return out


def test_replay_matches_the_apps_and_shows_exactly_a_changed_route(lake, serve_wsgi):
    records = traffic()
    fill_lake(lake["S3_ENDPOINT_URL"], lake["S3_BUCKET"], records)
    same = served(serve_wsgi)
    code, out, err = run(["replay", "--json", "--fail-on-diff", "--speed", "10",
                          "--target", f"app_a={same['app_a']}",
                          "--target", f"app_b={same['app_b']}"])
    summary = orjson.loads(out)
    assert code == 0, (err, summary)
    assert (summary["sent"], summary["answered"], summary["status_same"]) == (40, 40, 40)
    assert summary["changes"] == [] and summary["errors"] == {}

    changed = served(serve_wsgi, changed_route="/hello")
    code, out, err = run(["replay", "--json", "--fail-on-diff", "--rate", "max",
                          "--target", f"app_a={changed['app_a']}",
                          "--target", f"app_b={changed['app_b']}"])
    summary = orjson.loads(out)
    assert code == 3, (err, summary)
    hello = sum(1 for r in records if r.request.path == "/hello")
    assert summary["changes"] == [{"endpoint": "app_a GET /hello", "original": 200,
                                   "replay": 500, "count": hello}]
    assert summary["status_same"] == 40 - hello

    # The text summary says the same, for a person.
    code, out, _ = run(["replay", "--rate", "max", "--target", f"app_a={changed['app_a']}",
                        "--target", f"app_b={changed['app_b']}"])
    assert code == 0 and re.search(rf"app_a GET /hello +200 +500 +{hello}\n", out), out


def test_a_target_that_refuses_connections_is_one_line(lake):
    fill_lake(lake["S3_ENDPOINT_URL"], lake["S3_BUCKET"], traffic())
    code, _, err = run(["replay", "--target", "app_a=http://user:secret@127.0.0.1:1"])
    assert (code, err) == (1, "tapline: --target app_a=http://127.0.0.1:1: connection "
                              "refused (nothing listens there)\n")


def test_replay_from_kafka_between_offsets_and_times(kafka, serve_wsgi):
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    before = datetime.now(UTC) - timedelta(seconds=5)
    records = traffic()
    produce(kafka.bootstrap_servers, topic, [(r.client_ip.encode(), encode(r)) for r in records],
            partitions=1)
    apps = served(serve_wsgi)
    common = ["replay", "--json", "--rate", "max", "--bootstrap", kafka.bootstrap_servers,
              "--topic", topic, "--target", f"app_a={apps['app_a']}",
              "--target", f"app_b={apps['app_b']}"]
    code, out, err = run([*common, "--from", "10", "--to", "30"])
    assert out, err
    summary = orjson.loads(out)
    assert code == 0, err
    assert (summary["selected"], summary["sent"], summary["status_same"]) == (20, 20, 20)
    code, out, err = run([*common, "--from", before.isoformat()])
    assert code == 0 and orjson.loads(out)["selected"] == 40, err
    code, _, err = run([*common, "--to", before.isoformat()])
    assert (code, err) == (1, "tapline: no captures match the selection\n")
