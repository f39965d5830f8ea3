"""The lake end to end: requests through the proxy land in the lake exactly once, byte for byte
what the proxy put on the topic, under their date, hour and IP; `tapline lake` and every query
in docs/lake.md answer questions about them correctly."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests
from aiokafka.structs import ConsumerRecord

from capture import CaptureRecord, decode
from capture.lake_layout import key_prefix
from sinks.lake import LakeSettings, LakeSink, ndjson_gz, plan_objects
from sinks.loop import Item
from stack import factories
from stack.support import REPO_ROOT, read_topic, sample, wait_until
from tapline import lake
from tapline.cli import main
from tests.integration.conftest import start_pipeline
from tests.sinks.conftest import SinkProcess
from tests.sinks.lake_fixtures import (  # noqa: F401 - fixtures s3 and bucket
    KEYS,
    Lake,
    check_lake,
    client,
    fresh_bucket,
    lake_env,
    read_lake,
    s3_service,
)

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "lake.md"


def documented(language: str) -> dict[str, str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)
    named = {}
    for block in blocks:
        name = re.match(r"-- (\w+)\n", block)
        assert name, f"a query in {DOC.name} has no '-- name' line:\n{block}"
        named[name.group(1)] = block
    return named


QUERIES = documented("sql")


@dataclass
class Captured:
    endpoint_url: str
    bucket: str
    topic: str
    sent: list[tuple[str, str, int]]  # what clients sent: method, path, status
    originals: list[bytes]  # the topic's records, as the proxy produced them
    records: list[CaptureRecord]
    lake: Lake

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint_url, "S3_BUCKET": self.bucket, **KEYS}

    def settings(self) -> LakeSettings:
        return LakeSettings.from_env(self.env())

    def first_hour(self) -> tuple[str, int]:
        """The date and hour of the first capture (traffic may straddle an hour)."""
        date, hour, _ip = key_prefix(min(r.started_at for r in self.records), "").split("/")
        return date, int(hour)

    def in_scope(self, date: str, hour: int | None = None) -> list[CaptureRecord]:
        return [r for r in self.records
                if key_prefix(r.started_at, r.client_ip).startswith(
                    date + ("" if hour is None else f"/{hour:02d}"))]


def traffic(pipeline) -> list[tuple[str, str, int]]:
    sent = []

    def call(method, base, path, **kwargs):
        answer = requests.request(method, base + path, timeout=10, **kwargs)
        sent.append((method, path.partition("?")[0], answer.status_code))

    call("GET", pipeline.app_a, "/hello")
    call("GET", pipeline.app_a, "/hello?lang=en")
    call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "mytoken"})
    call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "mytoken"})
    call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "stolen"})
    call("POST", pipeline.app_a, "/jobs", headers={"Authorization": "stolen"})
    call("POST", pipeline.app_a, "/jobs")  # no token: 401 without asking app_b
    call("GET", pipeline.app_a, "/missing")
    call("POST", pipeline.app_b, "/auth", data={"token": "token-bob"})
    return sent


@pytest.fixture(scope="module")
def captured(kafka, s3, tmp_path_factory) -> Captured:
    workdir = tmp_path_factory.mktemp("lake-e2e")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    client(s3.endpoint_url).create_bucket(Bucket=bucket)
    with start_pipeline(workdir, kafka.bootstrap_servers) as pipeline:
        sink = SinkProcess("lake", workdir, lake_env(
            kafka.bootstrap_servers, pipeline.topic, s3.endpoint_url, bucket,
            SINK_BATCH_MAX_AGE_MS="200")).start()
        try:
            sent = traffic(pipeline)
            # app_a asks app_b for each POST /jobs with a token: 4 more captures
            expected = len(sent) + 4

            def written() -> float:
                return sample(sink.metrics(), "tapline_sink_written_total", sink="lake")

            wait_until(lambda: written() >= expected, what=f"{expected} records in the lake")
            time.sleep(1)
            assert written() == expected
        finally:
            assert sink.stop() == 0
        originals = [value for _k, value in read_topic(
            pipeline.bootstrap, pipeline.topic, expect=expected)]
    assert len(originals) == expected
    return Captured(s3.endpoint_url, bucket, pipeline.topic, sent, originals,
                    [decode(v) for v in originals], read_lake(s3.endpoint_url, bucket))


# --- the sink, end to end --------------------------------------------------------------------


def test_each_request_is_in_the_lake_once_as_the_proxy_produced_it(captured):
    # byte-equal lines, one per capture, under their own date, hour and IP (check_lake)
    check_lake(captured.lake, captured.topic, captured.originals)
    assert sum(len(lines) for lines in captured.lake.objects.values()) == len(captured.sent) + 4
    assert {key.split("/")[2] for key in captured.lake.objects} == {"127.0.0.1"}
    exchanges = Counter((r.request.method, r.request.path, r.response.status_code)
                        for r in captured.records)
    assert exchanges == Counter(
        [*captured.sent, ("POST", "/auth", 200), ("POST", "/auth", 200),
         ("POST", "/auth", 401), ("POST", "/auth", 401)])


# --- tapline lake ----------------------------------------------------------------------------


def cli(monkeypatch, captured, *args: str) -> tuple[int, str, str]:
    for name, value in captured.env().items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_query_prints_a_table(monkeypatch, captured):
    date, hour = captured.first_hour()
    code, out, err = cli(monkeypatch, captured, "lake", "query", "--date", date, "--hour",
                         str(hour), "SELECT app, count(*) AS n FROM captures GROUP BY app "
                                    "ORDER BY app")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["app", "n"] and set(lines[1]) <= {"-", " "}
    counts = Counter(r.app for r in captured.in_scope(date, hour))
    assert [line.split() for line in lines[2:-1]] == [[app, str(n)]
                                                       for app, n in sorted(counts.items())]
    assert lines[-1] == f"({len(counts)} rows)"


def test_query_json_gives_the_records_fields(monkeypatch, captured):
    date, _hour = captured.first_hour()
    code, out, _err = cli(monkeypatch, captured, "lake", "query", "--date", date, "--ip",
                          "127.0.0.1", "--json",
                          "SELECT id, started_at, request.headers AS headers, response, error "
                          "FROM captures ORDER BY id")
    assert code == 0
    rows = [orjson.loads(line) for line in out.splitlines()]
    by_id = {r.id: r for r in captured.in_scope(date)}
    assert [row["id"] for row in rows] == sorted(by_id)
    for row in rows:
        record = by_id[row["id"]]
        assert row["headers"] == record.request.headers
        assert row["response"]["status_code"] == record.response.status_code
        assert row["response"]["body"] == record.response.body
        assert row["started_at"].replace(" ", "T") + "Z" == record.started_at
        assert row["error"] is None


def test_ls_lists_the_objects_of_a_scope(monkeypatch, captured):
    date, hour = captured.first_hour()
    code, out, _err = cli(monkeypatch, captured, "lake", "ls", "--date", date, "--hour",
                          str(hour), "--json")
    assert code == 0
    listed = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(e["key"] for e in listed) == sorted(
        key for key in captured.lake.objects if key.startswith(f"{date}/{hour:02d}/"))
    assert all(e["size"] > 20 for e in listed)


def test_a_record_in_two_objects_is_one_row(s3, bucket, capsys):
    # What a crash between a write and its commit, or a stalled sink's late PUT, leaves: the
    # records of one partition cut into batches twice, differently, both sets of objects kept.
    values = [value for _k, value in factories.encoded(300, clients=3, spread_s=3 * 3600)]
    sink = LakeSink(LakeSettings.from_env({}))
    items = []
    for offset, value in enumerate(values):
        message = ConsumerRecord("t", 0, offset, 0, 0, None, value, None, 0, len(value), [])
        items.append(Item(message, sink.prepare(message)))
    s3 = client(s3.endpoint_url)
    for start, end in ((0, 120), (120, 300), (0, 170), (170, 260)):  # the last two: stale
        for lake_object in plan_objects(items[start:end]):
            s3.put_object(Bucket=bucket, Key=lake_object.key, Body=ndjson_gz(lake_object.lines))
    stored = Counter(decode(line).id for line in read_lake(s3.meta.endpoint_url, bucket).lines)
    assert len(stored) == 300 and sum(stored.values()) > 400  # many records twice
    settings = LakeSettings.from_env({"S3_ENDPOINT_URL": s3.meta.endpoint_url,
                                      "S3_BUCKET": bucket, **KEYS})
    result = lake.query(settings, "SELECT id, count(*) FROM captures GROUP BY id")
    assert sorted(result.rows) == sorted((str(i), 1) for i in stored)
    # Filters on the key's columns still reach the file names (and spare the other objects).
    hours = Counter(key_prefix(decode(v).started_at, decode(v).client_ip).split("/")[1]
                    for v in values)
    hour, n = hours.most_common(1)[0]
    assert lake.query(settings, f"SELECT count(*) FROM captures WHERE hour = {int(hour)}"
                      ).rows == [(n,)]
    plan = lake.query(settings, f"EXPLAIN SELECT * FROM captures WHERE hour = {int(hour)}")
    scanning = re.search(r"Scanning Files:[\s│]*(\d+)/(\d+)", plan.rows[0][1])
    assert scanning and int(scanning.group(1)) < int(scanning.group(2)), plan.rows
    # And the boto3 example of docs/lake.md prints each record of a client's hour once.
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    prefix = key_prefix(decode(values[0]).started_at, decode(values[0]).client_ip) + "/"
    code = (code.replace("http://127.0.0.1:9000", s3.meta.endpoint_url)
                .replace('"captures"', repr(bucket))
                .replace('"2026-11-28/10/127.0.0.1/"', repr(prefix)))
    exec(compile(code, str(DOC), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert sorted(line.encode() for line in printed) == sorted(
        v for v in values
        if key_prefix(decode(v).started_at, decode(v).client_ip) + "/" == prefix)


def test_an_empty_scope_answers_with_no_rows(monkeypatch, captured):
    code, out, _err = cli(monkeypatch, captured, "lake", "query", "--date", "2001-01-01",
                          "SELECT count(*) AS n, min(request.path) AS p FROM captures")
    assert code == 0
    assert out.splitlines()[2].split() == ["0", "NULL"]


@pytest.mark.parametrize(("args", "code", "says"), [
    (["query", "SELEC 1"], 1, "tapline: Parser Error: syntax error"),
    (["query", "SELECT nope FROM captures"], 1, 'tapline: Binder Error: Referenced column "nope"'),
    (["query", "--hour", "24", "SELECT 1"], 2, "tapline: --hour 24: use a whole number"),
    (["query", "--date", "28/11/2026", "SELECT 1"], 2, "tapline: --date '28/11/2026': use"),
    (["ls", "--ip", "../../x"], 2, "tapline: --ip '../../x' is not an IP address"),
    (["query", "--bucket", "no-such-bucket", "SELECT 1"], 1,
     "bucket 'no-such-bucket' does not exist"),
    (["ls", "--bucket", "no-such-bucket"], 1, "bucket 'no-such-bucket' does not exist"),
    (["query", "SELECT now()"], 1, "cast them to TIMESTAMP"),
])
def test_known_errors_are_one_line_and_an_exit_code(monkeypatch, captured, args, code, says):
    got, out, err = cli(monkeypatch, captured, "lake", *args)
    assert (got, out) == (code, "")
    assert err.startswith("tapline: ") and says in err and err.count("\n") == 1, err


def test_an_unreachable_s3_is_one_line_from_the_installed_command(captured):
    env = {"PATH": "/usr/bin:/bin", **captured.env(), "S3_ENDPOINT_URL": "http://127.0.0.1:9"}
    for args in (["query", "SELECT count(*) FROM captures"], ["ls"]):
        done = subprocess.run([sys.executable, "-m", "tapline.cli", "lake", *args], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert done.stdout == ""
        assert re.fullmatch(r"tapline: S3 at http://127\.0\.0\.1:9: .+\n", done.stderr), \
            done.stderr


# --- the questions in docs/lake.md -----------------------------------------------------------


def ask(captured, name: str, **scope) -> list[tuple]:
    return lake.query(captured.settings(), QUERIES[name], lake.Scope.of(**scope)).rows


def test_the_doc_has_the_questions_the_issue_asks_for():
    assert {"failed_requests", "client_day", "failures_by_endpoint", "requests_per_hour",
            "user_agents"} <= set(QUERIES)


def failed(record: CaptureRecord) -> bool:
    return record.response is None or record.response.status_code >= 400


def test_failed_requests_in_an_hour(captured):
    date, hour = captured.first_hour()
    rows = ask(captured, "failed_requests", date=date, hour=hour)
    expected = sorted((r.started_at, r.request.method, r.request.path, r.response.status_code)
                      for r in captured.in_scope(date, hour) if failed(r))
    assert [(s.isoformat(timespec="microseconds") + "Z", m, p, st)
            for s, _app, _ip, m, p, st, _err in rows] == expected
    assert len(captured.records) < 20 or expected  # the traffic had failures to find


def test_failures_by_endpoint(captured):
    date, _hour = captured.first_hour()
    if len(captured.in_scope(date)) != len(captured.records):
        pytest.skip("the traffic straddled midnight")
    answer = {(app, m, p, s): n for app, m, p, s, n in ask(captured, "failures_by_endpoint",
                                                           date=date)}
    assert answer == {("app_a", "POST", "/jobs", "401"): 3, ("app_b", "POST", "/auth", "401"): 2,
                      ("app_a", "GET", "/missing", "404"): 1}


def test_all_traffic_of_one_client_on_one_day(captured):
    date, _hour = captured.first_hour()
    rows = ask(captured, "client_day", date=date, ip="127.0.0.1")
    day = captured.in_scope(date)
    assert len(rows) == len(day)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert Counter((m, p, s) for _t, _a, m, p, _q, s, _ms in rows) == Counter(
        (r.request.method, r.request.path, r.response.status_code) for r in day)
    assert ("GET", "/hello", "lang=en") in {(m, p, q) for _t, _a, m, p, q, _s, _ms in rows}


def test_requests_per_hour(captured):
    rows = ask(captured, "requests_per_hour")
    per_app = Counter()
    failures = Counter()
    for _date, _hour, app, n, failed_n, avg_ms in rows:
        per_app[app] += n
        failures[app] += failed_n
        assert avg_ms >= 0
    assert per_app == Counter(r.app for r in captured.records)
    assert failures == Counter(r.app for r in captured.records if failed(r))


def test_user_agents(captured):
    rows = ask(captured, "user_agents")
    assert len(rows) == 1  # the test's client and app_a both use requests
    agent, n = rows[0]
    assert agent.startswith("python-requests/") and n == len(captured.records)


def test_the_boto3_example_reads_one_client_hour(captured, capsys):
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    date, hour = captured.first_hour()
    code = (code.replace("http://127.0.0.1:9000", captured.endpoint_url)
                .replace('"captures"', repr(captured.bucket))
                .replace('"2026-11-28/10/127.0.0.1/"', repr(f"{date}/{hour:02d}/127.0.0.1/")))
    exec(compile(code, str(DOC), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert sorted(line.encode() for line in printed) == sorted(
        v for v, r in zip(captured.originals, captured.records, strict=True)
        if r in captured.in_scope(date, hour))
