"""`tapline report`: the answers people came for, from TimescaleDB, for a time window.

Library first: `build_report` returns plain data (sections of rows), the CLI prints it. Every
query runs on TimescaleDB and on plain PostgreSQL alike (the same schema in both modes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

_DURATION = re.compile(r"\s*([0-9]+)\s*(s|m|h|d|w)\s*", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_DURATION = timedelta(days=36_500)  # far beyond any data; PostgreSQL's now() - it still works


class ReportError(Exception):
    """Something a person can fix: the message is one line that says what."""


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `7d`, `2w` as a timedelta; ReportError otherwise."""
    match = _DURATION.fullmatch(text or "")
    shown = repr(text) if len(text or "") <= 60 else repr(text[:57]) + "…"
    digits = match.group(1).lstrip("0") if match else ""
    if not digits:
        raise ReportError(f"bad duration {shown}: use a number and a unit, e.g. 30m, 1h, 7d")
    unit = _UNITS[match.group(2)]
    try:  # past 12 digits it is over the cap in any unit
        delta = timedelta(**{unit: int(digits)}) if len(digits) <= 12 else None
    except OverflowError:
        delta = None
    if delta is None or delta > MAX_DURATION:
        raise ReportError(f"bad duration {shown}: at most {MAX_DURATION.days}d (100 years)")
    return delta


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[tuple] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


# Each query takes %(since)s (an interval), %(app)s (NULL for all apps) and, for sessions,
# %(gap)s; "the window" is time > now() - since.
WINDOW = "time > now() - %(since)s AND (%(app)s::text IS NULL OR app = %(app)s)"

FAILED = f"""
WITH w AS (SELECT * FROM http_requests WHERE {WINDOW}),
total AS (SELECT count(*) AS n FROM w)
SELECT method, path, status_code, count(*) AS failures,
       round(100.0 * count(*) / (SELECT n FROM total), 2) AS share_pct,
       max(time) AS last_seen, min(host(client_ip)) AS sample_client
FROM w
WHERE status_code >= 400 OR status_code IS NULL
GROUP BY method, path, status_code
ORDER BY failures DESC, last_seen DESC
LIMIT 10"""

ERROR_RATE = """
SELECT bucket, app, sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
       round(100.0 * sum(errors) / sum(requests), 2) AS error_pct
FROM http_requests_5m
WHERE bucket > now() - %(since)s - interval '5 minutes'
  AND (%(app)s::text IS NULL OR app = %(app)s)
GROUP BY bucket, app
ORDER BY bucket DESC, app
LIMIT 48"""

CLIENTS = f"""
SELECT host(client_ip) AS client, count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400 OR status_code IS NULL) AS errors,
       mode() WITHIN GROUP (ORDER BY method || ' ' || path) AS mostly_calls
FROM http_requests
WHERE {WINDOW}
GROUP BY client_ip
ORDER BY requests DESC, errors DESC
LIMIT 10"""

# Users: the fingerprints of their credentials (the proxy never lets the credential through).
USERS = f"""
SELECT principal AS user_fingerprint, count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400 OR status_code IS NULL) AS errors,
       count(DISTINCT client_ip) AS clients,
       mode() WITHIN GROUP (ORDER BY method || ' ' || path) AS mostly_calls
FROM http_requests
WHERE {WINDOW} AND principal IS NOT NULL
GROUP BY principal
ORDER BY requests DESC, errors DESC
LIMIT 10"""

# Sessions: a client's requests, split where it was quiet for longer than the gap.
SESSIONS = f"""
WITH steps AS (
    SELECT client_ip, time, method || ' ' || path AS step,
           CASE WHEN time - lag(time) OVER (PARTITION BY client_ip ORDER BY time) <= %(gap)s
                THEN 0 ELSE 1 END AS starts
    FROM http_requests WHERE {WINDOW}
), numbered AS (
    SELECT client_ip, time, step,
           sum(starts) OVER (PARTITION BY client_ip ORDER BY time) AS session
    FROM steps
), sessions AS (
    SELECT client_ip, session, count(*) AS requests, max(time) - min(time) AS length
    FROM numbered GROUP BY client_ip, session
)
SELECT host(client_ip) AS client, count(*) AS sessions,
       round(avg(requests), 1) AS requests_per_session,
       max(requests) AS longest_session, max(length) AS longest_duration
FROM sessions GROUP BY client_ip ORDER BY sessions DESC, client LIMIT 10"""

PATHS = f"""
WITH steps AS (
    SELECT method || ' ' || path AS step_to,
           lag(method || ' ' || path) OVER (PARTITION BY client_ip ORDER BY time) AS step_from,
           time - lag(time) OVER (PARTITION BY client_ip ORDER BY time) AS pause
    FROM http_requests WHERE {WINDOW}
)
SELECT step_from || ' -> ' || step_to AS path_through_api, count(*) AS times
FROM steps
WHERE step_from IS NOT NULL AND pause <= %(gap)s
GROUP BY step_from, step_to
ORDER BY times DESC, path_through_api
LIMIT 10"""

SLOWEST = f"""
SELECT app, method, path, count(*) AS requests,
       round(avg(duration_ms)::numeric, 2) AS avg_ms,
       round(max(duration_ms)::numeric, 2) AS max_ms
FROM http_requests
WHERE {WINDOW}
GROUP BY app, method, path
ORDER BY avg_ms DESC
LIMIT 10"""

SECTIONS = [
    ("Most common failed requests", FAILED),
    ("Error rate per app, 5-minute buckets", ERROR_RATE),
    ("Top clients", CLIENTS),
    ("Top users (credential fingerprints)", USERS),
    ("Sessions per client", SESSIONS),
    ("Most common paths through the API", PATHS),
    ("Slowest endpoints", SLOWEST),
]


def build_report(url: str, since: timedelta, app: str | None = None,
                 session_gap: timedelta = timedelta(minutes=30)) -> list[Section]:
    """Every section of the report; ReportError when the database or the window fail."""
    params = {"since": since, "app": app, "gap": session_gap}
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            (count,), = conn.execute(
                f"SELECT count(*) FROM http_requests WHERE {WINDOW}", params).fetchall()
            if count == 0:
                scope = f" for app {app}" if app else ""
                raise ReportError(f"no requests in the last {_human(since)}{scope}")
            sections = []
            for title, sql in SECTIONS:
                cursor = conn.execute(sql, params)
                columns = [c.name for c in cursor.description]
                sections.append(Section(title, columns, cursor.fetchall()))
            return sections
    except psycopg.OperationalError as e:
        raise ReportError(f"cannot reach the database: {_first_line(e)}") from None
    except psycopg.errors.UndefinedTable:
        raise ReportError("the database has no http_requests table: run `make migrate` "
                          "or start the TimescaleDB sink") from None


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
