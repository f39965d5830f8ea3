"""The README's "capture, look, replay" on `make run`'s own stack (called from test_run.py, so
that no second whole stack starts): traffic through the proxy lands in the lake; `tapline
replay` of it against the same apps gets every original status back (the credential that
redaction fingerprinted supplied with --map); against a changed app_a (500 on /hello) the
summary holds exactly that diff; replays sent through the proxy are captured with their mark
and left out of the next replay; and the HAR of that traffic validates (har-validator) and
round-trips (haralyzer): every exchange, header and body found again. The last replay reads
the Kafka topic rather than the lake."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import threading
from pathlib import Path

import boto3
import orjson
import psycopg
import requests
from werkzeug.serving import make_server

from apps import app_a
from capture import decode
from stack.har import validate_har
from stack.support import wait_until
from tapline.cli import main
from tests.sinks.test_export_har import check_round_trip


def tapline(settings: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """`tapline ARGV` in this process, with the run's settings as its environment (a process
    of its own costs a second of imports each time)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith(("S3_", "AWS_"))})
    os.environ.update(settings)
    raw, err = io.BytesIO(), io.StringIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as e:
                code = e.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out.flush()
    return code, raw.getvalue().decode(), err.getvalue()


def lake_records(settings: dict[str, str]) -> list:
    s3 = boto3.client("s3", endpoint_url=settings["S3_ENDPOINT_URL"],
                      aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
                      region_name="us-east-1")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings["S3_BUCKET"]) for o in page.get("Contents", [])]
    return [decode(line) for key in keys for line in gzip.decompress(
        s3.get_object(Bucket=settings["S3_BUCKET"], Key=key)["Body"].read()).splitlines()]


def check_replay_and_export(settings: dict[str, str], ports: dict[str, int],
                            tmp_path: Path) -> None:
    proxy_a = f"http://127.0.0.1:{ports['PROXY_A']}"
    session = requests.Session()
    for _ in range(6):
        assert session.get(f"{proxy_a}/hello", timeout=10).status_code == 200
    for token, status in (("mytoken", 200), ("mytoken", 200), ("nope", 401)):
        answer = session.post(f"{proxy_a}/jobs", headers={"Authorization": token}, timeout=10)
        assert answer.status_code == status
    assert session.get(f"{proxy_a}/nowhere", timeout=10).status_code == 404
    # 2 from test_run, 6 + 3 + 1 here, and app_a's 3 calls to app_b through the proxy
    records = wait_until(lambda: (found := lake_records(settings)) and len(found) >= 15
                         and found, timeout=60, what="the traffic in the lake")
    assert len(records) == 15, [(r.app, r.request.path) for r in records]

    # The HAR of that traffic: valid HAR 1.2, and every exchange, header and body in it.
    path = tmp_path / "traffic.har"
    code, _, err = tapline(settings, "export", "--har", "-o", str(path))
    assert code == 0, err
    validate_har(path)
    check_round_trip(path, records)

    # The fingerprint the proxy made of `Authorization: mytoken` is what --map undoes; the
    # token app_a sends app_b in a form is fingerprinted too (field `token`).
    fingerprints = {}
    for r in records:
        for name, value in r.request.headers:
            if name.lower() == "authorization":
                fingerprints.setdefault(value, set()).add(r.response.status_code)
        if r.request.path == "/auth":
            found = re.search(r"hmac:[0-9a-f]{16}", r.request.body)
            if found:
                fingerprints.setdefault(found.group(0), set()).add(r.response.status_code)
    good = [fp for fp, statuses in fingerprints.items() if statuses == {200}]
    assert good, fingerprints
    maps = [arg for fp in good for arg in ("--map", f"{fp}=mytoken")]
    direct = [f"app_a=http://127.0.0.1:{ports['APP_A']}", f"app_b=http://127.0.0.1:{ports['APP_B']}"]
    targets = [arg for t in direct for arg in ("--target", t)]
    code, out, err = tapline(settings, "replay", "--json", "--fail-on-diff", "--speed", "20",
                             *targets, *maps)
    summary = orjson.loads(out or b"{}")
    assert code == 0, (err, summary)
    assert (summary["sent"], summary["status_same"]) == (15, 15), summary
    assert summary["changes"] == [] and summary["errors"] == {}

    # A changed app_a: 500 on /hello, everything else as before (it asks the same app_b).
    app = app_a.create_app(app_a.Settings(app_b_url=f"http://127.0.0.1:{ports['APP_B']}"))
    inner = app.wsgi_app

    def changed(environ, start_response):
        if environ["PATH_INFO"] == "/hello":
            start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")])
            return [b"broken\n"]
        return inner(environ, start_response)

    app.wsgi_app = changed
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        code, out, err = tapline(settings, "replay", "--json", "--fail-on-diff", "--rate", "max",
                                 "--target", f"app_a=http://127.0.0.1:{server.server_port}",
                                 "--target", direct[1], *maps)
    finally:
        server.shutdown()
        server.server_close()
    summary = orjson.loads(out or b"{}")
    assert code == 3, (err, summary)
    assert summary["changes"] == [{"endpoint": "app_a GET /hello", "original": 200,
                                   "replay": 500, "count": 7}], summary
    assert summary["status_same"] == 15 - 7 and summary["errors"] == {}

    # Replays through the proxy are captured with their mark, and not replayed again.
    code, out, err = tapline(settings, "replay", "--json", "--rate", "max", "--limit", "15",
                             "--where", "request.path = '/hello'",
                             "--target", f"app_a={proxy_a}", *maps)
    assert code == 0 and orjson.loads(out)["sent"] == 7, err

    def marked() -> int:
        with psycopg.connect(settings["DATABASE_URL"]) as conn:
            return conn.execute(
                "SELECT count(*) FROM http_requests WHERE request_headers @? "
                "'$[*] ? (@[0] like_regex \"^x-tapline-replay$\" flag \"i\")'").fetchone()[0]

    wait_until(lambda: marked() == 7, timeout=30, what="the replays' captures")
    # The topic now also holds app_a's calls to app_b (through the proxy) of the first
    # replay: 15 + 3 + 7 captures, of which the 7 marked ones are left out.
    code, out, err = tapline(settings, "replay", "--json", "--rate", "max", "--from", "0",
                             "--topic", settings["CAPTURE_TOPIC"], "--bootstrap",
                             settings["KAFKA_BOOTSTRAP_SERVERS"], *targets, *maps)
    summary = orjson.loads(out or b"{}")
    assert code == 0 and (summary["selected"], summary["sent"]) == (25, 18), (err, summary)
    assert summary["skipped"] == {"a replay itself (carries the mark header)": 7}
