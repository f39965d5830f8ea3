"""Which of http_requests' indexes the project's own queries use: every SQL block of
docs/analytics.md, every section of `tapline report`, every panel of the Grafana dashboard and
`tapline captures --ip`, EXPLAINed on a table of realistic rows; an index no query uses costs
every insert and answers nothing.

    .venv/bin/python bench/index_use.py                 # 200,000 rows over the last 6 hours
    .venv/bin/python bench/index_use.py --rows 20000    # quicker
    .venv/bin/python bench/index_use.py --quick         # as CI does

The rows are bench/sink_throughput.py's realistic records (2,000 clients), moved to end now so
the queries' windows (the last hour, the last day, the dashboard's last 6 hours) hold them,
written by the sink's own code into a database migrated to head, then ANALYZEd. PostgreSQL
from the environment (DATABASE_URL) or a throwaway cluster on loopback. Plain PostgreSQL: the
view http_requests_5m is expanded into the table's scan, as TimescaleDB's continuous
aggregate's refresh scans a time range of it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

DASHBOARD = ROOT / "deploy/grafana/provisioning/dashboards/tapline.json"
ANALYTICS = ROOT / "docs/analytics.md"
SPREAD_S = 6 * 3600


def queries() -> list[tuple[str, str, dict]]:
    """(where it comes from, SQL, parameters) of every query the project ships."""
    from tapline import captures, report
    from tapline.lake import Scope

    found = []
    for name, sql in re.findall(r"```sql\n-- (\S+)\n(.*?)```", ANALYTICS.read_text(), re.S):
        found.append((f"analytics.md {name}", sql, {}))
    for since in (timedelta(hours=1), timedelta(days=1)):
        params = {"since": since, "app": None, "gap": timedelta(minutes=30)}
        for title, sql in report.SECTIONS:
            found.append((f"report {title} ({since})", sql, params))
        found.append((f"report failed requests (app_a, {since})", report.FAILED,
                      {**params, "app": "app_a"}))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            sql = target.get("rawSql")
            if sql:
                sql = re.sub(r"\$__timeFilter\((\w+)\)",
                             r"\1 BETWEEN now() - interval '6 hours' AND now()", sql)
                sql = re.sub(r"\$__timeGroupAlias\((\w+), 5m\)",
                             r"""date_bin('5 minutes', \1, TIMESTAMPTZ '2000-01-01') AS "time\"""",
                             sql)
                found.append((f"dashboard {panel.get('title')}", sql, {}))
    selection = captures.Selection(scope=Scope(ip="10.0.0.7"))
    sql, parameters = captures.db_query(selection)
    found.append(("tapline captures --ip", sql, parameters))
    return found


def indexes_of(plan: dict) -> set[str]:
    names = set()
    if "Index Name" in plan:
        names.add(plan["Index Name"])
    for child in plan.get("Plans", []):
        names |= indexes_of(child)
    return names


def fill(url: str, rows: int) -> None:
    import db
    from sinks.rows import row_of_json
    from sinks.timescale import _copy
    from stack import factories

    db.ensure_schema(url, may_migrate=True)
    start = time.time() - SPREAD_S
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        for first in range(0, rows, 20_000):
            batch = factories.encoded(min(20_000, rows - first), first=first, clients=2000,
                                      spread_s=SPREAD_S, big_every=20, mixed=True,
                                      in_order=rows, start=start)
            _copy(cursor, [row_of_json(value, 64 * 1024) for _key, value in batch])
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE http_requests")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = 2_000 if args.quick else args.rows

    from stack import postgres_from_env
    from stack.support import fresh_database

    with tempfile.TemporaryDirectory(prefix="tapline-indexes-") as tmp:
        postgres = postgres_from_env(Path(tmp) / "postgres")
        postgres.start()
        try:
            url = fresh_database(postgres.dsn)
            fill(url, rows)
            used: dict[str, list[str]] = defaultdict(list)
            with psycopg.connect(url) as conn:
                indexes = [name for (name,) in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'http_requests' "
                    "ORDER BY indexname")]
                print(f"{rows:,} rows; the query, then the indexes its plan uses:")
                for where, sql, params in queries():
                    (plan,), = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
                    names = indexes_of(plan["Plan"])
                    for name in names:
                        used[name].append(where)
                    print(f"  {where:<62} {', '.join(sorted(names)) or '(none: scans)'}")
            print("\nindex, and how many of the queries use it:")
            for name in indexes:
                print(f"  {name:<46} {len(used.get(name, [])):>3}")
        finally:
            postgres.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
