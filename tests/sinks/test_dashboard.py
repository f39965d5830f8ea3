"""Every panel of the provisioned Grafana dashboard runs against the real database after real
traffic, on plain PostgreSQL and on TimescaleDB, and its answers agree with the traffic.

Grafana expands its macros ($__timeFilter, $__timeGroupAlias, ...) before it sends a query;
`expand` does the same here, for a time range of the last day.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.sinks.test_analytics import analysed  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.integration

PROVISIONING = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "provisioning"
DASHBOARD = PROVISIONING / "dashboards" / "tapline.json"

FROM = "(now() - interval '1 day')"
TO = "(now() + interval '1 minute')"
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def interval(grafana: str) -> str:
    number, unit = re.fullmatch(r"'?(\d+)([smhd])'?", grafana.strip()).groups()
    return f"{number} {UNITS[unit]}"


def time_group(column: str, step: str) -> str:
    # date_bin is in PostgreSQL itself (14+), so the same SQL runs on both databases; Grafana
    # gives time_bucket on TimescaleDB, which bins the same way from the same origin.
    return f"date_bin('{interval(step)}', {column}, TIMESTAMPTZ '2000-01-01')"


def expand(sql: str) -> str:
    """Grafana's PostgreSQL macros, as plain SQL for the last day."""
    macros = {
        "timeFilter": lambda a: f"{a[0]} BETWEEN {FROM} AND {TO}",
        "timeFrom": lambda a: FROM,
        "timeTo": lambda a: TO,
        "timeGroup": lambda a: time_group(a[0], a[1]),
        "timeGroupAlias": lambda a: f'{time_group(a[0], a[1])} AS "time"',
        "time": lambda a: f'{a[0]} AS "time"',
    }
    expanded = re.sub(r"\$__(\w+)\(([^()]*)\)",
                      lambda m: macros[m.group(1)]([a.strip() for a in m.group(2).split(",")]),
                      sql)
    assert "$" not in expanded, f"a macro or variable left unexpanded:\n{expanded}"
    return expanded


def panels() -> dict[str, dict]:
    return {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}


PANELS = panels()


def query(database: str, title: str) -> list[dict]:
    (target,) = PANELS[title]["targets"]
    with psycopg.connect(database) as conn:
        cursor = conn.execute(expand(target["rawSql"]))
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def raw(database: str, sql: str) -> list[tuple]:
    with psycopg.connect(database) as conn:
        return conn.execute(sql).fetchall()


# --- the files, without a database -----------------------------------------------------------


def test_the_dashboard_has_the_panels_the_issue_asks_for():
    assert set(PANELS) == {
        "Requests per 5 minutes by app and status class", "Error rate per app",
        "Top failing endpoints", "Latency per endpoint (avg and max)", "Top clients",
        "Latest failed requests"}
    ids = [panel["id"] for panel in PANELS.values()]
    assert len(set(ids)) == len(ids)


def test_every_panel_queries_the_provisioned_data_source():
    (source,) = yaml.safe_load(
        (PROVISIONING / "datasources" / "timescaledb.yaml").read_text())["datasources"]
    for title, panel in PANELS.items():
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": source["type"], "uid": source["uid"]}, title
        (target,) = panel["targets"]
        assert target["rawQuery"] and target["editorMode"] == "code", title
        wanted = "time_series" if panel["type"] == "timeseries" else "table"
        assert target["format"] == wanted, title
        # Grafana's time range, not a fixed window.
        assert "$__timeFilter(" in target["rawSql"], title
        assert "interval" not in target["rawSql"], title


def test_the_provider_loads_the_dashboard_folder():
    (provider,) = yaml.safe_load(
        (PROVISIONING / "dashboards" / "tapline.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"


def test_expand():
    assert expand("WHERE $__timeFilter(time)") == f"WHERE time BETWEEN {FROM} AND {TO}"
    assert expand("SELECT $__timeGroupAlias(bucket, 5m)") == (
        "SELECT date_bin('5 minutes', bucket, TIMESTAMPTZ '2000-01-01') AS \"time\"")
    assert expand("$__timeGroup(t, '1h')") == (
        "date_bin('1 hours', t, TIMESTAMPTZ '2000-01-01')")


# --- each panel after real traffic -----------------------------------------------------------


def test_requests_by_app_and_status_class(analysed):  # noqa: F811
    rows = query(analysed, "Requests per 5 minutes by app and status class")
    assert rows and set(rows[0]) == {"time", "app", "status_class", "requests"}
    totals = {}
    for row in rows:
        key = (row["app"], row["status_class"])
        totals[key] = totals.get(key, 0) + row["requests"]
    assert totals == {("app_a", "2xx"): 6, ("app_a", "4xx"): 5,
                      ("app_b", "2xx"): 3, ("app_b", "4xx"): 4}
    times = [row["time"] for row in rows]
    assert times == sorted(times)
    assert all(t.minute % 5 == 0 and t.second == 0 for t in times)


def test_error_rate_per_app(analysed):  # noqa: F811
    rows = query(analysed, "Error rate per app")
    assert rows and set(rows[0]) == {"time", "app", "error_pct"}
    # The same numbers, counted from the rows themselves.
    expected = {
        (bucket, app): round(100.0 * errors / total, 2)
        for bucket, app, total, errors in raw(analysed, """
            SELECT date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01'), app, count(*),
                   count(*) FILTER (WHERE status_code >= 400 OR status_code IS NULL)
            FROM http_requests GROUP BY 1, 2""")}
    assert {(row["time"], row["app"]): float(row["error_pct"]) for row in rows} == expected
    if len(rows) == 2:  # the traffic fell in one 5-minute bucket
        assert {row["app"]: float(row["error_pct"]) for row in rows} == {
            "app_a": round(100 * 5 / 11, 2), "app_b": round(100 * 4 / 7, 2)}


def test_top_failing_endpoints(analysed):  # noqa: F811
    rows = query(analysed, "Top failing endpoints")
    assert rows and set(rows[0]) == {"app", "method", "path", "failures", "requests",
                                     "error_pct", "failing_statuses", "last_bucket"}
    answer = {(r["app"], r["method"], r["path"]): (r["failures"], r["requests"],
                                                   r["failing_statuses"]) for r in rows}
    assert answer == {("app_a", "POST", "/jobs"): (4, 7, "401"),
                      ("app_b", "POST", "/auth"): (4, 7, "401"),
                      ("app_a", "GET", "/admin"): (1, 1, "404")}
    assert [r["failures"] for r in rows] == [4, 4, 1]


def test_latency_per_endpoint(analysed):  # noqa: F811
    rows = query(analysed, "Latency per endpoint (avg and max)")
    assert rows and set(rows[0]) == {"time", "endpoint", "avg_ms", "max_ms"}
    expected = {
        (bucket, endpoint): (avg, top)
        for bucket, endpoint, avg, top in raw(analysed, """
            SELECT date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01'),
                   app || ' ' || method || ' ' || path, avg(duration_ms), max(duration_ms)
            FROM http_requests GROUP BY 1, 2""")}
    assert {(r["time"], r["endpoint"]) for r in rows} == set(expected)
    assert {r["endpoint"] for r in rows} == {
        "app_a GET /hello", "app_a POST /jobs", "app_a GET /admin", "app_b POST /auth"}
    for row in rows:
        avg, top = expected[(row["time"], row["endpoint"])]
        assert row["avg_ms"] == pytest.approx(avg, rel=1e-6)
        assert row["max_ms"] == pytest.approx(top, rel=1e-6)
        assert 0 <= row["avg_ms"] <= row["max_ms"]


def test_top_clients(analysed):  # noqa: F811
    (row,) = query(analysed, "Top clients")
    assert set(row) == {"client", "requests", "errors", "apps", "mostly_calls", "last_seen"}
    assert (row["client"], row["requests"], row["errors"], row["apps"]) == (
        "127.0.0.1", 18, 9, 2)
    assert row["mostly_calls"] in ("POST /jobs", "POST /auth")
    ((last,),) = raw(analysed, "SELECT max(time) FROM http_requests")
    assert row["last_seen"] == last


def test_latest_failed_requests(analysed):  # noqa: F811
    rows = query(analysed, "Latest failed requests")
    assert rows and set(rows[0]) == {"time", "app", "client", "method", "path", "query",
                                     "status_code", "reason", "error", "duration_ms",
                                     "capture_id"}
    assert len(rows) == 9
    times = [row["time"] for row in rows]
    assert times == sorted(times, reverse=True)
    counts = {}
    for row in rows:
        key = (row["app"], row["method"], row["path"], row["status_code"])
        counts[key] = counts.get(key, 0) + 1
        assert row["client"] == "127.0.0.1"
    assert counts == {("app_a", "POST", "/jobs", 401): 4, ("app_b", "POST", "/auth", 401): 4,
                      ("app_a", "GET", "/admin", 404): 1}
    assert len({row["capture_id"] for row in rows}) == 9
