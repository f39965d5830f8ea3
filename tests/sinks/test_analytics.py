"""Every query in docs/analytics.md runs against the real database after real traffic, and its
answers agree with the traffic that was sent."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
import requests

from capture.redact import Redactor
from stack import TimescaleLite, free_port
from stack.support import fresh_database, sample, wait_until
from tapline.report import ReportError, build_report, parse_duration
from tests.integration.conftest import REDACT_KEY, start_pipeline
from tests.sinks.conftest import SinkProcess
from tests.sinks.test_timescale import sink_env

pytestmark = pytest.mark.integration

def fingerprint(value: str) -> str:
    return Redactor(REDACT_KEY).fingerprint(value, "header:authorization")

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"


def documented_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.DOTALL)
    queries = {}
    for block in blocks:
        name = re.match(r"-- (\w+)\n", block)
        assert name, f"a query in {DOC.name} has no '-- name' line:\n{block}"
        queries[name.group(1)] = block
    return queries


QUERIES = documented_queries()


def traffic(pipeline) -> int:
    """A small day of use: journeys of /hello then /jobs, bad tokens, unknown paths."""
    session = requests.Session()
    for _ in range(3):
        session.get(pipeline.app_a + "/hello", timeout=10)
        session.post(pipeline.app_a + "/jobs", headers={"Authorization": "mytoken"}, timeout=10)
    for _ in range(4):
        session.post(pipeline.app_a + "/jobs", headers={"Authorization": "stolen"}, timeout=10)
    session.get(pipeline.app_a + "/admin", timeout=10)
    # 6 + 4 + 1 client requests, and 3 + 4 calls from app_a to app_b
    return 11 + 7


@pytest.fixture(scope="module", params=["postgresql", "timescaledb"])
def analysed(request, kafka, tmp_path_factory):
    """A database after real traffic went through the proxy and the sink: plain PostgreSQL,
    or TimescaleDB's full edition (WASM; it takes one connection at a time, so the sink's
    progress is read from its metrics and the database only after the sink stopped)."""
    workdir = tmp_path_factory.mktemp(f"analytics-{request.param}")
    extra = {}
    if request.param == "postgresql":
        database = fresh_database(request.getfixturevalue("postgres").dsn)
        service = None
    else:
        service = TimescaleLite(workdir / "timescale")
        service.start()
        database = service.dsn + "&connect_timeout=20"
        extra["TIMESCALE_WRITE_METHOD"] = "insert"
    try:
        with start_pipeline(workdir, kafka.bootstrap_servers) as pipeline:
            sink = SinkProcess("timescale", workdir, sink_env(
                kafka.bootstrap_servers, pipeline.topic, database, **extra)).start()
            try:
                expected = traffic(pipeline)
                wait_until(lambda: sample(sink.metrics(), "tapline_sink_written_total",
                                          sink="timescale") == expected,
                           timeout=60, what=f"{expected} rows written")
            finally:
                assert sink.stop() == 0
        assert f"mode {request.param}" in sink.log.read_text()
        yield database
    finally:
        if service is not None:
            service.close()


def run(database: str, name: str) -> list[tuple]:
    with psycopg.connect(database) as conn:
        return conn.execute(QUERIES[name]).fetchall()


def test_the_doc_has_the_queries_the_issue_asks_for():
    assert {"failed_requests", "error_rate", "top_clients", "client_journey",
            "slowest_endpoints", "common_transitions"} <= set(QUERIES)


def test_failed_requests(analysed):
    answer = {(m, p, s): n for m, p, s, n, _last, _client in run(analysed, "failed_requests")}
    assert answer[("POST", "/jobs", 401)] == 4
    assert answer[("POST", "/auth", 401)] == 4
    assert answer[("GET", "/admin", 404)] == 1
    assert ("GET", "/hello", 200) not in answer


def test_error_rate(analysed):
    by_app = {}
    for _bucket, app, requests_, errors, _pct in run(analysed, "error_rate"):
        total = by_app.setdefault(app, [0, 0])
        total[0] += requests_
        total[1] += errors
    assert by_app == {"app_a": [11, 5], "app_b": [7, 4]}


def test_top_clients(analysed):
    (client, total, errors, mostly), = run(analysed, "top_clients")
    assert (client, total, errors) == ("127.0.0.1", 18, 9)
    assert mostly in ("POST /jobs", "POST /auth")


def test_client_journey(analysed):
    journey = run(analysed, "client_journey")
    assert len(journey) == 18
    times = [row[0] for row in journey]
    assert times == sorted(times)
    assert journey[0][2:4] == ("GET", "/hello")


def test_common_transitions(analysed):
    transitions = {(a, b): n for a, b, n in run(analysed, "common_transitions")}
    assert transitions[("GET /hello", "POST /jobs")] == 3


def test_slowest_endpoints(analysed):
    endpoints = {(app, m, p): (n, avg, top) for app, m, p, n, avg, top in
                 run(analysed, "slowest_endpoints")}
    assert endpoints[("app_a", "POST", "/jobs")][0] == 7
    for n, avg, top in endpoints.values():
        assert n > 0 and 0 <= avg <= top


def test_by_parameter(analysed):
    rows = run(analysed, "by_parameter")
    assert len(rows) == 7  # app_a's form posts to app_b carry the token
    assert all(row[3] == "/auth" for row in rows)


def test_the_5m_view_sums_to_the_rows(analysed):
    with psycopg.connect(analysed) as conn:
        (rows,), = conn.execute("SELECT count(*) FROM http_requests").fetchall()
        (summed,), = conn.execute("SELECT sum(requests) FROM http_requests_5m").fetchall()
    assert rows == summed == 18


# --- tapline report, on the same traffic ---------------------------------------------------


def report_of(database: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tapline.cli", "report", "--database",
                           database, *args], capture_output=True, text=True, timeout=60)


def test_report_answers_agree_with_the_traffic(analysed):
    sections = {s.title: s.as_dicts() for s in build_report(analysed, timedelta(hours=1))}
    failed = {(r["method"], r["path"], r["status_code"]): r
              for r in sections["Most common failed requests"]}
    assert failed[("POST", "/jobs", 401)]["failures"] == 4
    assert float(failed[("POST", "/jobs", 401)]["share_pct"]) == round(100 * 4 / 18, 2)
    assert failed[("POST", "/auth", 401)]["failures"] == 4
    assert failed[("GET", "/admin", 404)]["sample_client"] == "127.0.0.1"
    rates = {}
    for row in sections["Error rate per app, 5-minute buckets"]:
        total = rates.setdefault(row["app"], [0, 0])
        total[0] += row["requests"]
        total[1] += row["errors"]
    assert rates == {"app_a": [11, 5], "app_b": [7, 4]}
    (client,) = sections["Top clients"]
    assert (client["client"], client["requests"], client["errors"]) == ("127.0.0.1", 18, 9)
    users = {r["user_fingerprint"]: (r["requests"], r["errors"])
             for r in sections["Top users (credential fingerprints)"]}
    assert users == {fingerprint("mytoken"): (3, 0), fingerprint("stolen"): (4, 4)}
    (sessions,) = sections["Sessions per client"]
    assert (sessions["sessions"], float(sessions["requests_per_session"])) == (1, 18.0)
    paths = {r["path_through_api"]: r["times"]
             for r in sections["Most common paths through the API"]}
    assert paths["GET /hello -> POST /jobs"] == 3
    slow = {(r["app"], r["method"], r["path"]): r for r in sections["Slowest endpoints"]}
    assert slow[("app_a", "POST", "/jobs")]["requests"] == 7
    # A gap shorter than any pause splits every request into a session of its own.
    split = {s.title: s.as_dicts() for s in build_report(
        analysed, timedelta(hours=1), session_gap=timedelta(microseconds=1))}
    assert split["Sessions per client"][0]["sessions"] == 18
    only_b = {s.title: s.as_dicts() for s in build_report(analysed, timedelta(hours=1), "app_b")}
    assert only_b["Top clients"][0]["requests"] == 7


def test_report_cli_tables_json_and_mistakes(analysed):
    table = report_of(analysed, "--since", "2h")
    assert table.returncode == 0, table.stderr
    assert "Most common failed requests (last 2h)" in table.stdout
    assert "GET /hello -> POST /jobs" in table.stdout
    machine = report_of(analysed, "--json")
    assert machine.returncode == 0
    assert orjson.loads(machine.stdout)["Top clients"][0]["requests"] == 18
    bad = report_of(analysed, "--since", "an hour")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "tapline: --since: bad duration 'an hour': use a number and a unit, e.g. 30m, 1h, 7d")
    empty = report_of(analysed, "--app", "nosuch")
    assert (empty.returncode, empty.stderr.strip()) == (
        1, "tapline: no requests in the last 1h for app nosuch")


def test_report_without_a_database_says_so():
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/tapline"
    result = report_of(nowhere)
    assert result.returncode == 1
    assert result.stderr.startswith("tapline: cannot reach the database:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_parse_duration():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration(" 7d ") == timedelta(days=7)
    for wrong in ("", "1", "h", "0m", "-1h", "1y"):
        with pytest.raises(ReportError):
            parse_duration(wrong)
