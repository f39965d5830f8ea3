"""`tapline export --har` on a real lake (moto's S3 server) and on PostgreSQL: the HAR validates
with an independent validator (npm's har-validator), a HAR library (haralyzer) finds every
exchange, header and body in it again, the selectors work, and bad input is one clear line."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
from collections import defaultdict

import psycopg
import pytest
from haralyzer import HarEntry, HarParser

from capture import CaptureRecord, encode
from capture.lake_layout import key_prefix, object_key
from db import migrate
from sinks.rows import COLUMNS, row_of
from stack.factories import make
from stack.har import validate_har
from tapline.cli import main
from tests.sinks.lake_fixtures import KEYS, client, fresh_bucket, s3_service  # noqa: F401
from tests.unit.test_har import record

pytestmark = pytest.mark.integration


def fill_lake(endpoint_url: str, bucket: str, records: list[CaptureRecord]) -> None:
    """The records in the lake as the lake sink lays them out: gzip NDJSON per date/hour/ip."""
    groups: dict[str, list[bytes]] = defaultdict(list)
    for r in records:
        groups[key_prefix(r.started_at, r.client_ip)].append(encode(r))
    s3 = client(endpoint_url)
    for n, (prefix, lines) in enumerate(sorted(groups.items())):
        s3.put_object(Bucket=bucket, Key=object_key(prefix, "http-captures", 0, n * 1000,
                                                     n * 1000 + len(lines) - 1),
                      Body=gzip.compress(b"\n".join(lines) + b"\n"))


def cases() -> list[CaptureRecord]:
    """Factory traffic plus the awkward cases: a binary answer, a withheld and a truncated
    request body, an exchange without response, cookies."""
    found = [make(i, mixed=True, in_order=60, start=1_795_000_000.0) for i in range(60)]
    binary = record(id="0190a1b2-0000-7000-8000-00000000000b")
    binary.response.body = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\xff").decode()
    binary.response.body_encoding, binary.response.body_size = "base64", 10
    withheld = record(id="0190a1b2-0000-7000-8000-00000000000c")
    withheld.request.body, withheld.request.body_withheld = "", "binary"
    truncated = record(id="0190a1b2-0000-7000-8000-00000000000d")
    truncated.request.body_truncated, truncated.request.body_size = True, 90_000
    failed = record(id="0190a1b2-0000-7000-8000-00000000000e", response=None,
                    error="Connection refused")
    return [*found, binary, withheld, truncated, failed]


@pytest.fixture(name="lake")
def lake_in_env(s3, bucket, monkeypatch):
    """A fresh bucket, named in the environment as `tapline` reads it."""
    env = {"S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": bucket, **KEYS}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run(argv: list[str]) -> tuple[int, str, str]:
    raw, err = io.BytesIO(), io.StringIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")  # with a .buffer, as sys.stdout has
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out.flush()
    return code, raw.getvalue().decode(), err.getvalue()


def check_round_trip(path, records: list[CaptureRecord]) -> None:
    """Every record is one entry of the HAR at `path`, as haralyzer reads it back: method, URL,
    status, every header in order, and the bodies byte for byte."""
    har = HarParser.from_file(str(path)).har_data
    assert len(har["entries"]) == len(records)  # each exchange once
    entries = {e["_tapline"]["id"]: HarEntry(e) for e in har["entries"]}
    assert sorted(entries) == sorted(r.id for r in records)
    for r in records:
        e = entries[r.id]
        assert e.request.method == r.request.method
        assert e.request.url.endswith(r.request.path + (f"?{r.request.query}"
                                                        if r.request.query else ""))
        assert [(h["name"], h["value"]) for h in e.request.headers] == [
            tuple(h) for h in r.request.headers]
        if r.request.body or r.request.body_withheld:
            assert e.request.text == r.request.body
        if r.response is None:
            assert e.response.status == 0 and e.raw_entry["_error"] == r.error
            continue
        assert e.response.status == r.response.status_code
        assert [(h["name"], h["value"]) for h in e.response.headers] == [
            tuple(h) for h in r.response.headers]
        assert e.response.text == r.response.body
        assert (e.response.textEncoding == "base64") == (r.response.body_encoding == "base64")


def test_export_har_validates_and_round_trips(lake, tmp_path):
    records = cases()
    fill_lake(lake["S3_ENDPOINT_URL"], lake["S3_BUCKET"], records)
    # A crash between a write and its commit leaves records in two objects: still one entry.
    s3 = client(lake["S3_ENDPOINT_URL"])
    first = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=lake["S3_BUCKET"])["Contents"])[0]
    copy = s3.get_object(Bucket=lake["S3_BUCKET"], Key=first)["Body"].read()
    s3.put_object(Bucket=lake["S3_BUCKET"], Body=copy,
                  Key=first.replace("-0-0-", "-0-0-1").replace(".jsonl.gz", "0.jsonl.gz"))
    path = tmp_path / "all.har"
    code, _, err = run(["export", "--har", "-o", str(path)])
    assert code == 0, err
    validate_har(path)  # fails the test when har-validator refuses it or cannot run
    check_round_trip(path, records)

    # The same selectors as the lake: one client, and a DuckDB condition.
    code, out, err = run(["export", "--har", "--ip", "10.0.0.7",
                          "--where", "response.status_code = 200 OR response IS NULL"])
    assert code == 0, err
    ids = {e["_tapline"]["id"] for e in json.loads(out)["log"]["entries"]}
    assert ids == {r.id for r in records if r.client_ip == "10.0.0.7"
                   and (r.response is None or r.response.status_code == 200)}


def test_bad_selections_are_one_line_each(lake, tmp_path):
    fill_lake(lake["S3_ENDPOINT_URL"], lake["S3_BUCKET"], cases())
    path = tmp_path / "none.har"
    for argv, says in [
        (["export", "--har", "-o", str(path), "--date", "2001-01-01"],
         "tapline: no captures match the selection\n"),
        (["export", "--har", "--where", "no_such_column = 1"], "tapline: Binder Error"),
    ]:
        code, _, err = run(argv)
        assert code == 1 and err.startswith(says) and err.count("\n") == 1, (argv, err)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half written




def test_export_har_from_timescaledb(database, tmp_path):
    records = cases()
    migrate(database)
    with psycopg.connect(database) as conn:
        conn.cursor().executemany(
            f"INSERT INTO http_requests ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(COLUMNS))})",
            [row_of(r, 1 << 20) for r in records])
    path = tmp_path / "db.har"
    code, _, err = run(["export", "--har", "--database", database, "-o", str(path)])
    assert code == 0, err
    validate_har(path)
    check_round_trip(path, records)
    code, out, err = run(["export", "--har", "--database", database,
                          "--where", "status_code = 401"])
    assert code == 0, err
    assert {e["_tapline"]["id"] for e in json.loads(out)["log"]["entries"]} == {
        r.id for r in records if r.response is not None and r.response.status_code == 401}
    code, _, err = run(["export", "--har", "--database", database, "--where", "nope = 1"])
    assert code == 1 and err.startswith("tapline: --where: column \"nope\" does not exist") \
        and err.count("\n") == 1, err
