"""From the client's response to the capture being visible: in TimescaleDB, and in the lake.

    .venv/bin/python bench/end_to_end.py                     # 50 req/s for 30 s
    .venv/bin/python bench/end_to_end.py --rate 20 --seconds 60
    .venv/bin/python bench/end_to_end.py --quick             # a small run, as CI does

The whole pipeline runs with its default settings (no batch age is shortened): Kafka, a
PostgreSQL database, moto's S3, both apps under gunicorn, `python -m proxy` in front of them,
and both sinks (`python -m sinks timescale|lake`). Services come from the environment
(KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, S3_ENDPOINT_URL) or are launched on loopback; the run
uses its own topic, consumer groups and database.

Each request carries a marker in its query string (`e2e=<run>-<n>`). The time the client got
its response is taken against the same clock as two pollers: one asks the database for the
markers not yet seen every 20 ms, the other lists the bucket every 200 ms and reads each new
object. A marker that never shows up ends the bench with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import orjson
import psycopg
import requests
from rich import box
from rich.console import Console
from rich.table import Table

from bench.common import BenchError, load_average, wait_for
from stack import free_port, kafka_from_env, postgres_from_env, s3_from_env
from stack.support import Process, fresh_database, topic_exists, wait_for_port

PYTHON = sys.executable
DB_POLL_S = 0.02
LAKE_POLL_S = 0.2
BUCKET = "captures"
S3_KEY_ID, S3_SECRET = "tapline", "tapline-secret"  # moto takes any

console = Console(width=150)


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Sightings:
    """When each marker was answered, and when each store first showed it."""

    answered: dict[str, float] = field(default_factory=dict)
    in_db: dict[str, float] = field(default_factory=dict)
    in_lake: dict[str, float] = field(default_factory=dict)
    client_ms: dict[str, float] = field(default_factory=dict)  # request to response
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pending(self, seen: dict[str, float]) -> list[str]:
        with self.lock:
            return [marker for marker in self.answered if marker not in seen]


# --- the pipeline --------------------------------------------------------------------------------


@dataclass
class Pipeline:
    app_a: str  # through the proxy
    app_b: str
    database_url: str
    s3: dict[str, str]
    topic: str
    app_a_direct: str
    app_b_direct: str


@contextlib.contextmanager
def pipeline(workdir: Path, lake_age_ms: int | None = None):
    """Every service and process of the pipeline, default settings (but the lake sink's
    batch age, when given); all stopped after."""
    with contextlib.ExitStack() as stack:
        kafka = stack.enter_context(kafka_from_env(workdir / "kafka"))
        postgres = stack.enter_context(postgres_from_env(workdir / "postgres"))
        s3 = stack.enter_context(s3_from_env(workdir / "s3", bucket=BUCKET))
        processes: list[Process] = []

        @stack.callback
        def stop_all() -> None:
            for process in reversed(processes):
                with contextlib.suppress(Exception):
                    process.stop(30)

        def launch(name: str, command: list[str], env: dict[str, str], port: int) -> None:
            process = Process(command, workdir / f"{name}.log", env).start()
            processes.append(process)
            wait_for_port(port, process.proc, process.log, timeout=60)

        run_id = uuid.uuid4().hex[:8]
        topic = f"e2e-{run_id}"
        database_url = fresh_database(postgres.dsn)
        s3_env = {"S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": BUCKET,
                  "S3_REGION": "us-east-1",
                  "S3_ACCESS_KEY_ID": os.environ.get("S3_ACCESS_KEY_ID", S3_KEY_ID),
                  "S3_SECRET_ACCESS_KEY": os.environ.get("S3_SECRET_ACCESS_KEY", S3_SECRET)}
        ports = {name: free_port() for name in (
            "app_a", "app_b", "proxy_a", "proxy_b", "proxy_metrics", "timescale", "lake")}
        gunicorn = [PYTHON, "-m", "gunicorn", "-w", "2"]
        launch("app_b", [*gunicorn, "-b", f"127.0.0.1:{ports['app_b']}", "apps.app_b:app"],
               {"APP_B_DB": str(workdir / "users.sqlite3")}, ports["app_b"])
        launch("app_a", [*gunicorn, "-b", f"127.0.0.1:{ports['app_a']}", "apps.app_a:app"],
               {"APP_B_URL": f"http://127.0.0.1:{ports['proxy_b']}"}, ports["app_a"])
        common = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "CAPTURE_TOPIC": topic}
        launch("proxy", [PYTHON, "-m", "proxy"], {
            **common,
            "PROXY_ROUTES": f"app_a=http://127.0.0.1:{ports['app_a']}@{ports['proxy_a']},"
                            f"app_b=http://127.0.0.1:{ports['app_b']}@{ports['proxy_b']}",
            "PROXY_METRICS_PORT": str(ports["proxy_metrics"]),
            "CAPTURE_REDACT_KEY": "bench-redact-key",
        }, ports["proxy_b"])
        # The proxy creates the topic when it reaches Kafka; the sinks subscribe after that,
        # so that neither waits for a metadata refresh to find it.
        wait_for(lambda: topic_exists(kafka.bootstrap_servers, topic), 60,
                 f"the proxy to create topic {topic}")
        sink_env = {**common, "LOG_LEVEL": "WARNING"}
        launch("sink-timescale", [PYTHON, "-m", "sinks", "timescale"], {
            **sink_env, "DATABASE_URL": database_url, "SINK_GROUP_ID": f"e2e-ts-{run_id}",
            "SINK_METRICS_PORT": str(ports["timescale"])}, ports["timescale"])
        launch("sink-lake", [PYTHON, "-m", "sinks", "lake"], {
            **sink_env, **s3_env, "SINK_GROUP_ID": f"e2e-lake-{run_id}",
            "SINK_METRICS_PORT": str(ports["lake"]),
            **({} if lake_age_ms is None else {"SINK_BATCH_MAX_AGE_MS": str(lake_age_ms)})},
            ports["lake"])
        yield Pipeline(f"http://127.0.0.1:{ports['proxy_a']}",
                       f"http://127.0.0.1:{ports['proxy_b']}", database_url, s3_env, topic,
                       f"http://127.0.0.1:{ports['app_a']}", f"http://127.0.0.1:{ports['app_b']}")


# --- the client and the pollers ----------------------------------------------------------------


def send(p: Pipeline, sightings: Sightings, prefix: str, rate: float, seconds: float,
         clients: int = 16) -> int:
    """Requests on a steady schedule, each with its marker; returns how many failed.

    Request n starts at n / rate seconds; a few clients share the schedule, so that a slow
    answer does not hold back the requests after it.
    """
    total = max(1, round(rate * seconds))
    schedule = iter(range(total))
    lock = threading.Lock()
    failed: list[str] = []
    started = time.monotonic()

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                n = next(schedule, None)
            if n is None:
                return
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            marker = f"{prefix}-{n}"
            asked = time.monotonic()
            try:
                # Both apps: app_a's GET, app_b's form POST (its token the proxy fingerprints).
                if n % 2:
                    response = session.post(f"{p.app_b}/auth?e2e={marker}",
                                            data={"token": "mytoken"}, timeout=10)
                else:
                    response = session.get(f"{p.app_a}/hello?e2e={marker}", timeout=10)
            except requests.RequestException as e:
                note(f"request {marker} failed: {e}")
                failed.append(marker)
                continue
            answered = time.monotonic()
            if response.status_code >= 500:
                failed.append(marker)
            with sightings.lock:
                sightings.answered[marker] = answered
                sightings.client_ms[marker] = (answered - asked) * 1000

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(failed)


def poll_database(url: str, sightings: Sightings, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            pending = sightings.pending(sightings.in_db)
            if pending:
                try:
                    rows = conn.execute(
                        "SELECT query FROM http_requests WHERE query = ANY(%s)",
                        [[f"e2e={marker}" for marker in pending]],
                    ).fetchall()
                except psycopg.errors.UndefinedTable:  # the sink has not migrated yet
                    stop.wait(0.2)
                    continue
                seen = time.monotonic()
                for (query,) in rows:
                    sightings.in_db.setdefault(query.removeprefix("e2e="), seen)
            stop.wait(DB_POLL_S)


def poll_lake(s3: dict[str, str], topic: str, sightings: Sightings,
              stop: threading.Event) -> None:
    client = boto3.client(
        "s3", endpoint_url=s3["S3_ENDPOINT_URL"], region_name=s3["S3_REGION"],
        aws_access_key_id=s3["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=s3["S3_SECRET_ACCESS_KEY"])
    read: set[str] = set()
    while not stop.is_set():
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["S3_BUCKET"]):
            keys += [o["Key"] for o in page.get("Contents", [])
                     if o["Key"].rsplit("/", 1)[-1].startswith(topic + "-")]
        for key in keys:
            if key in read:
                continue
            body = client.get_object(Bucket=s3["S3_BUCKET"], Key=key)["Body"].read()
            seen = time.monotonic()
            read.add(key)
            for line in gzip.decompress(body).splitlines():
                query = orjson.loads(line)["request"]["query"]
                if query.startswith("e2e="):
                    sightings.in_lake.setdefault(query.removeprefix("e2e="), seen)
        stop.wait(LAKE_POLL_S)


def watch(p: Pipeline, sightings: Sightings, stop: threading.Event) -> list[threading.Thread]:
    def guarded(target, *args) -> None:
        try:
            target(*args)
        except Exception as e:  # the main thread sees the markers never arrive, and says why
            note(f"{target.__name__} stopped: {e!r}")

    threads = [
        threading.Thread(target=guarded, args=(poll_database, p.database_url, sightings,
                                                stop), daemon=True),
        threading.Thread(target=guarded, args=(poll_lake, p.s3, p.topic, sightings, stop),
                         daemon=True),
    ]
    for thread in threads:
        thread.start()
    return threads


# --- the figures -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def delays_ms(sightings: Sightings, seen: dict[str, float], markers: list[str]) -> list[float]:
    return [(seen[m] - sightings.answered[m]) * 1000 for m in markers if m in seen]


def database_kind(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        version = conn.execute("SHOW server_version").fetchone()[0]
    return f"TimescaleDB {row[0]}" if row else f"PostgreSQL {version} (no TimescaleDB)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds to wait for the last markers after the last request")
    parser.add_argument("--lake-age-ms", type=int, default=None,
                        help="the lake sink's SINK_BATCH_MAX_AGE_MS (default: the sink's "
                             "own, 60 s; make run's is 2000)")
    parser.add_argument("--markdown", action="store_true", help="the table in Markdown")
    parser.add_argument("--quick", action="store_true", help="10 req/s for 3 s")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.seconds, args.wait = 10.0, 3.0, 30.0
        if args.lake_age_ms is None:
            args.lake_age_ms = 2000  # make run's: CI need not wait out the lake's minute

    with (tempfile.TemporaryDirectory(prefix="tapline-e2e-") as tmp,
          pipeline(Path(tmp), args.lake_age_ms) as p):
        sightings = Sightings()
        stop = threading.Event()
        threads = watch(p, sightings, stop)
        try:
            # Until a first exchange is in both stores, the sinks may still be joining their
            # groups: that is start-up, not the latency this bench is about.
            send(p, sightings, "warmup", 10, 0.5)
            wait_for(lambda: not sightings.pending(sightings.in_db)
                     and not sightings.pending(sightings.in_lake), 90,
                     "the warm-up requests to reach both stores")
            console.print(f"load average before: {load_average()} (1, 5, 15 min); "
                          f"{args.rate:g} req/s for {args.seconds:g} s; "
                          f"database: {database_kind(p.database_url)}")
            prefix = f"run{uuid.uuid4().hex[:6]}"
            began = time.monotonic()
            failed = send(p, sightings, prefix, args.rate, args.seconds)
            sent_s = time.monotonic() - began
            markers = [m for m in sightings.pending({}) if m.startswith(prefix)]
            client_ms = [sightings.client_ms[m] for m in markers] or [0.0]
            with contextlib.suppress(BenchError):
                wait_for(lambda: all(m in sightings.in_db and m in sightings.in_lake
                                     for m in markers), args.wait,
                         "every marker in both stores", interval_s=0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)

        settings = ("default settings" if args.lake_age_ms is None else
                    f"default settings, lake SINK_BATCH_MAX_AGE_MS={args.lake_age_ms}")
        table = Table(title="From the client's response to the capture being visible "
                      f"({settings})", box=box.MARKDOWN if args.markdown
                      else box.SIMPLE_HEAD)
        for column in ("store", "seen / sent", "p50 ms", "p95 ms", "max ms", "min ms",
                       "poll every"):
            table.add_column(column, justify="left" if column == "store" else "right")
        problems = []
        for store, seen, poll in (("TimescaleDB row (SELECT)", sightings.in_db, DB_POLL_S),
                                  ("lake record (list + GET)", sightings.in_lake, LAKE_POLL_S)):
            delays = delays_ms(sightings, seen, markers)
            if len(delays) < len(markers):
                problems.append(f"{store}: {len(markers) - len(delays)} of {len(markers)} "
                                f"markers never seen within {args.wait:g} s")
            if not delays:
                table.add_row(store, f"0 / {len(markers)}", "", "", "", "", f"{poll * 1000:.0f} ms")
                continue
            table.add_row(store, f"{len(delays)} / {len(markers)}",
                          f"{percentile(delays, 50):.0f}", f"{percentile(delays, 95):.0f}",
                          f"{max(delays):.0f}", f"{min(delays):.0f}", f"{poll * 1000:.0f} ms")
        console.print(table)
        console.print(f"sent {len(markers)} requests in {sent_s:.1f} s "
                      f"({len(markers) / sent_s:.1f} req/s), {failed} failed, client latency "
                      f"p50 {percentile(client_ms, 50):.0f} ms; "
                      f"load average after: {load_average()}")
        if failed:
            problems.append(f"{failed} requests failed")
    for problem in problems:
        print(f"end_to_end: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"end_to_end: {e}", file=sys.stderr)
        sys.exit(1)
