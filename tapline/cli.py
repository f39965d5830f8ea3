"""`tapline`: the command line. Each command parses, calls a function, and turns known errors
into one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from capture import InvalidRecord, decode


def summary_line(data: bytes) -> str:
    """One capture as a line a person reads: when, app, client, method, path, status, time."""
    try:
        record = decode(data)
    except InvalidRecord as e:
        return f"(not a valid capture record: {e})"
    status = record.response.status_code if record.response else "ERR"
    target = record.request.path + (f"?{record.request.query}" if record.request.query else "")
    line = (f"{record.started_at} {record.app:<6} {record.client_ip:<15} "
            f"{record.request.method:<6} {target} {status} {record.duration_ms:.1f}ms")
    return line + (f" error={record.error!r}" if record.error else "")


async def tail(bootstrap: str, topic: str, *, from_beginning: bool, raw: bool,
               limit: int | None) -> int:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    shown = 0
    try:
        async for message in consumer:
            line = message.value.decode("utf-8", "replace") if raw else summary_line(
                message.value)
            print(line, flush=True)
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        await consumer.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tapline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tail_cmd = commands.add_parser(
        "tail", help="print captures as they arrive on the topic",
        description="Print captures as they arrive on the topic, one line each.")
    tail_cmd.add_argument("--bootstrap", default=os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="Kafka (KAFKA_BOOTSTRAP_SERVERS)")
    tail_cmd.add_argument("--topic", default=os.environ.get("CAPTURE_TOPIC", "http-captures"),
                          help="the capture topic (CAPTURE_TOPIC)")
    tail_cmd.add_argument("--from-beginning", action="store_true",
                          help="start at the oldest capture instead of the next one")
    tail_cmd.add_argument("--json", action="store_true", help="print the records as JSON")
    tail_cmd.add_argument("-n", "--limit", type=int, help="stop after this many captures")
    add_lake_commands(commands)
    add_report_command(commands)
    add_load_command(commands)
    args = parser.parse_args(argv)
    if args.command == "load":
        return load_command(args)
    if args.command == "lake":
        return lake_command(args)
    if args.command == "report":
        return report_command(args)
    # Kafka errors are reported in one line below; the client's own log would repeat them.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        return asyncio.run(tail(args.bootstrap, args.topic, from_beginning=args.from_beginning,
                                raw=args.json, limit=args.limit))
    except KafkaError as e:
        print(f"tapline: Kafka at {args.bootstrap}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# --- tapline lake ----------------------------------------------------------------------------


def add_lake_commands(commands) -> None:
    lake = commands.add_parser(
        "lake", help="ask the S3 lake in SQL, list its objects",
        description="Ask the S3 lake (docs/lake.md) in SQL with DuckDB, or list its objects. "
                    "Where the lake is comes from S3_ENDPOINT_URL, S3_BUCKET, S3_REGION, "
                    "S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, as for the lake sink.")
    actions = lake.add_subparsers(dest="lake_command", required=True)
    query_cmd = actions.add_parser(
        "query", help="run SQL over the view `captures`",
        description="Run one SQL statement over the view `captures` (one row per capture) "
                    "and print the answer as a table.")
    query_cmd.add_argument("sql", help='the statement, e.g. "SELECT count(*) FROM captures"')
    ls_cmd = actions.add_parser("ls", help="list the objects of the lake",
                                description="List the lake's objects: key, size, time written.")
    for cmd in (query_cmd, ls_cmd):
        cmd.add_argument("--date", help="only this day (YYYY-MM-DD, UTC)")
        cmd.add_argument("--hour", help="only this hour of the day (0-23, UTC)")
        cmd.add_argument("--ip", help="only this client IP (or `unknown`)")
        cmd.add_argument("--bucket", help="the bucket (default: S3_BUCKET, else captures)")
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON object a line instead of a table")


def lake_command(args: argparse.Namespace) -> int:
    from config import SettingsError
    from tapline import lake

    try:
        env = dict(os.environ)
        if args.bucket:
            env["S3_BUCKET"] = args.bucket
        settings = lake.LakeSettings.from_env(env)
        scope = lake.Scope.of(args.date, args.hour, args.ip)
    except (SettingsError, lake.BadScope) as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 2
    try:
        if args.lake_command == "query":
            result = lake.query(settings, args.sql, scope)
            columns, rows = result.columns, result.rows
        else:
            entries = lake.list_objects(settings, scope)
            columns = ["key", "size", "modified"]
            rows = [(e.key, e.size, e.modified) for e in entries]
    except lake.LakeError as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(orjson.dumps(dict(zip(columns, row, strict=True)), default=str,
                               option=orjson.OPT_NON_STR_KEYS).decode())
    else:
        print(text_table(columns, rows))
    return 0


def text_table(columns: Sequence[str], rows: Sequence[Sequence[object]],
               max_width: int = 60) -> str:
    """Rows as plain aligned text: a header, a rule, one line a row; long cells are cut."""
    def cell(value: object) -> str:
        text = "NULL" if value is None else str(value)
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")
        return text if len(text) <= max_width else text[:max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                                  for r in rows if r[i] is not None)
               for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


# --- tapline report --------------------------------------------------------------------------


def add_report_command(commands) -> None:
    report = commands.add_parser(
        "report", help="the most common failures, error rates, clients, sessions, slow paths",
        description="Answer the usual questions from TimescaleDB for a time window: the most "
                    "common failed requests, error rate per app in 5-minute buckets, top "
                    "clients, sessions and the common paths through the API, slowest endpoints.")
    report.add_argument("--since", default="1h", help="the window: 30m, 1h, 7d (default 1h)")
    report.add_argument("--app", help="only this app")
    report.add_argument("--session-gap", default="30m",
                        help="a pause longer than this starts a new session (default 30m)")
    report.add_argument("--database", default=os.environ.get(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tapline"),
        help="the database (DATABASE_URL)")
    report.add_argument("--json", action="store_true", help="one JSON object, for machines")


def report_command(args: argparse.Namespace) -> int:
    from tapline.report import ReportError, build_report, parse_duration

    try:
        since, gap = parse_duration(args.since), parse_duration(args.session_gap)
    except ReportError as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 2
    try:
        sections = build_report(args.database, since, args.app, gap)
    except ReportError as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({s.title: s.as_dicts() for s in sections}, default=str,
                           option=orjson.OPT_INDENT_2).decode())
        return 0
    for section in sections:
        print(f"\n{section.title} (last {args.since}{', ' + args.app if args.app else ''})")
        print(text_table(section.columns, section.rows))
    return 0


# --- tapline load ----------------------------------------------------------------------------


def add_load_command(commands) -> None:
    load = commands.add_parser(
        "load", help="realistic traffic through the proxy, with a tally",
        description="Send realistic traffic through the proxy: several clients (as "
                    "X-Forwarded-For, believed only from PROXY_TRUSTED_PROXIES), good and bad "
                    "tokens, unknown paths, wrong methods, small and large bodies; then print "
                    "what was sent per status code, to compare with `tapline report`.")
    load.add_argument("--app-a", default="http://127.0.0.1:5000", help="the proxy for app_a")
    load.add_argument("--app-b", default="http://127.0.0.1:5001", help="the proxy for app_b")
    load.add_argument("--rate", type=float, default=50.0, help="requests per second (50)")
    load.add_argument("--duration", default="20s", help="how long: 20s, 2m (20s)")
    load.add_argument("--clients", type=int, default=8, help="simulated clients (8)")
    load.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    load.add_argument("--seed", type=int, default=1, help="the same seed, the same traffic")
    load.add_argument("--json", action="store_true", help="print the tally as JSON")


def load_command(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from tapline.load import run_load, summary_rows
    from tapline.report import ReportError, parse_duration

    try:
        duration = parse_duration(args.duration).total_seconds()
    except ReportError as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.clients < 1 or args.concurrency < 1:
        print("tapline: --rate, --clients and --concurrency must be positive", file=sys.stderr)
        return 2
    total = max(1, int(args.rate * duration))
    with Progress(transient=True, disable=args.json) as progress:
        task = progress.add_task("sending", total=total)
        tally = run_load(args.app_a, args.app_b, rate=args.rate, duration_s=duration,
                         clients=args.clients, concurrency=args.concurrency, seed=args.seed,
                         progress=lambda: progress.advance(task))
    if args.json:
        print(orjson.dumps({
            "sent": tally.sent, "no_answer": tally.failures,
            "by_status": {str(k): v for k, v in sorted(tally.by_status.items())},
            "by_client": dict(sorted(tally.by_client.items())),
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"sent {tally.sent} requests from {len(tally.by_client)} clients")
        print(text_table(["status", "sent"], summary_rows(tally)))
    return 0 if tally.failures == 0 else 1


def entry() -> int:
    """The console script: main(), quiet when a pipe (`| head`) closes early."""
    try:
        return main()
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(entry())
