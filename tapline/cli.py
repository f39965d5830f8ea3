"""`tapline`: the command line. Each command parses, calls a function, and turns known errors
into one clear line and a non-zero exit.

`parse` reads and checks the whole command line without touching a service: a command line
that cannot run is one line on standard error and exit code 2, whatever it holds; errors met
later (Kafka, S3, the database) are one line and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from capture import InvalidRecord, decode
from capture.settings import DEFAULT_BOOTSTRAP_SERVERS, DEFAULT_DATABASE_URL, DEFAULT_TOPIC


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


class UsageError(Exception):
    """A command line that cannot run; the message is one line that says why."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str, max_chars: int = 300) -> str:
    """`text` fit for one line of an error: control characters escaped, URL passwords hidden,
    cut past `max_chars`."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= max_chars else text[:max_chars - 1] + "…"


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@\s]*@")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")
MAX_LOAD_REQUESTS = 1_000_000  # `tapline load` plans every request up front
MAX_LOAD_CLIENTS = 100_000
MAX_LOAD_CONCURRENCY = 1_000
MAX_LOAD_RATE = 100_000.0


def shown(text: str) -> str:
    """A value quoted in an error: repr, cut to a readable length."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "…"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed and checked (`validate`) without touching any service; on
    a command line that cannot run, one line on standard error and SystemExit(2)."""
    args = _parser().parse_args(argv)
    try:
        validate(args)
    except UsageError as e:
        print(f"tapline: {one_line(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    return args


def validate(args: argparse.Namespace) -> None:
    """Check every option of a parsed command line and add what the command needs from them
    (durations, scope, settings); UsageError for the first that cannot work. Pure: reads the
    environment, connects to nothing."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                option = name if name in ("sql", "command") else "--" + name.replace("_", "-")
                raise UsageError(f"{option}: not valid UTF-8 text") from None
    if args.command == "tail":
        check_bootstrap(args.bootstrap)
        if not _TOPIC.fullmatch(args.topic) or args.topic in (".", ".."):
            raise UsageError(f"--topic {shown(args.topic)} is not a Kafka topic name "
                             "(letters, digits, . _ -, at most 249)")
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit {args.limit}: use a whole number of 1 or more")
    elif args.command == "lake":
        _validate_lake(args)
    elif args.command == "report":
        from tapline.report import ReportError, parse_duration

        try:
            args.since_delta = parse_duration(args.since)
        except ReportError as e:
            raise UsageError(f"--since: {e}") from None
        try:
            args.gap_delta = parse_duration(args.session_gap)
        except ReportError as e:
            raise UsageError(f"--session-gap: {e}") from None
        check_database(args.database)
    elif args.command == "load":
        _validate_load(args)
    elif args.command == "export":
        _validate_selection(args)
        if not args.har:
            raise UsageError("export: say which format: --har (HAR 1.2, the only one so far)")
        if args.output != "-" and not args.output.strip():
            raise UsageError("--output: give a file name, or - for standard output")
        if args.database is not None:
            check_database(args.database)
    elif args.command == "replay":
        from tapline.replay import validate_replay

        _validate_selection(args)
        validate_replay(args)


def check_bootstrap(text: str) -> None:
    """HOST:PORT[,HOST:PORT...], as Kafka's clients take it."""
    for server in text.split(","):
        host, colon, port = server.strip().rpartition(":")
        if not (colon and _HOST.fullmatch(host) and port.isascii() and port.isdigit()
                and len(port) <= 5 and 0 < int(port) < 65536):
            raise UsageError(f"--bootstrap {shown(text)}: use HOST:PORT, or several "
                             "separated by commas (KAFKA_BOOTSTRAP_SERVERS)")


def check_database(conninfo: str) -> None:
    """A PostgreSQL URL or key=value string, as libpq parses it (without connecting). The
    error never quotes it: it may hold a password."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        ports = str(conninfo_to_dict(conninfo).get("port") or "5432").split(",")
    except psycopg.Error:
        ports = ["not parsed"]
    if not all(p.isascii() and p.isdigit() and len(p) <= 5 and 0 < int(p) < 65536
               for p in ports):
        raise UsageError("--database is not a PostgreSQL URL or connection string "
                         "(postgresql://user@host:port/dbname)")


def _validate_lake(args: argparse.Namespace) -> None:
    from capture.settings import SettingsError
    from tapline import lake

    env = dict(os.environ)
    if args.bucket is not None:
        env["S3_BUCKET"] = args.bucket
    try:
        args.settings = lake.LakeSettings.from_env(env)
        args.scope = lake.Scope.of(args.date, args.hour, args.ip)
    except (SettingsError, lake.BadScope) as e:
        raise UsageError(str(e)) from None


def _validate_selection(args: argparse.Namespace) -> None:
    """The selectors `replay` and `export` share: where the captures come from and which."""
    from tapline.captures import Bound, Selection

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: use a whole number of 1 or more")
    if args.where is not None and not args.where.strip():
        raise UsageError("--where: give a condition on the view captures, e.g. "
                         "\"response.status_code >= 500\"")
    kafka = getattr(args, "from_", None) is not None or getattr(args, "to", None) is not None
    if kafka:
        if args.date or args.hour or args.ip or args.where:
            raise UsageError("--from/--to read the Kafka topic; --date, --hour, --ip and "
                             "--where select in the lake: use one or the other")
        check_bootstrap(args.bootstrap)
        if not _TOPIC.fullmatch(args.topic) or args.topic in (".", ".."):
            raise UsageError(f"--topic {shown(args.topic)} is not a Kafka topic name "
                             "(letters, digits, . _ -, at most 249)")
        try:
            args.start = None if args.from_ is None else Bound.parse(args.from_, "--from")
            args.end = None if args.to is None else Bound.parse(args.to, "--to")
        except ValueError as e:
            raise UsageError(str(e)) from None
    args.source = "kafka" if kafka else "lake"
    _validate_lake(args)
    args.selection = Selection(args.scope, args.where, args.limit)


def _validate_load(args: argparse.Namespace) -> None:
    from tapline.report import ReportError, parse_duration

    for option, url in (("--app-a", args.app_a), ("--app-b", args.app_b)):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{option} {shown(url)}: use http://HOST:PORT")
    try:
        args.duration_s = parse_duration(args.duration).total_seconds()
    except ReportError as e:
        raise UsageError(f"--duration: {e}") from None
    if not (math.isfinite(args.rate) and 0 < args.rate <= MAX_LOAD_RATE):
        raise UsageError(f"--rate {args.rate}: use a number of requests per second above 0 "
                         f"and at most {MAX_LOAD_RATE:,.0f}")
    if not 1 <= args.clients <= MAX_LOAD_CLIENTS:
        raise UsageError(f"--clients {args.clients}: use 1 to {MAX_LOAD_CLIENTS:,}")
    if not 1 <= args.concurrency <= MAX_LOAD_CONCURRENCY:
        raise UsageError(f"--concurrency {args.concurrency}: use 1 to {MAX_LOAD_CONCURRENCY:,}")
    args.total = max(1, int(args.rate * args.duration_s))
    if args.total > MAX_LOAD_REQUESTS:
        raise UsageError(f"--rate x --duration is {args.total:,} requests: at most "
                         f"{MAX_LOAD_REQUESTS:,} a run")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "load":
        return load_command(args)
    if args.command == "lake":
        return lake_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "export":
        return export_command(args)
    if args.command == "replay":
        from tapline.replay import replay_command

        return replay_command(args)
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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tapline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tail_cmd = commands.add_parser(
        "tail", help="print captures as they arrive on the topic",
        description="Print captures as they arrive on the topic, one line each.")
    tail_cmd.add_argument("--bootstrap", default=os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP_SERVERS),
        help="Kafka (KAFKA_BOOTSTRAP_SERVERS)")
    tail_cmd.add_argument("--topic", default=os.environ.get("CAPTURE_TOPIC", DEFAULT_TOPIC),
                          help="the capture topic (CAPTURE_TOPIC)")
    tail_cmd.add_argument("--from-beginning", action="store_true",
                          help="start at the oldest capture instead of the next one")
    tail_cmd.add_argument("--json", action="store_true", help="print the records as JSON")
    tail_cmd.add_argument("-n", "--limit", type=int, help="stop after this many captures")
    add_lake_commands(commands)
    add_report_command(commands)
    add_load_command(commands)
    add_replay_command(commands)
    add_export_command(commands)
    return parser


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
    from tapline import lake

    settings, scope = args.settings, args.scope
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
        "DATABASE_URL", DEFAULT_DATABASE_URL),
        help="the database (DATABASE_URL)")
    report.add_argument("--json", action="store_true", help="one JSON object, for machines")


def report_command(args: argparse.Namespace) -> int:
    from tapline.report import ReportError, build_report

    try:
        sections = build_report(args.database, args.since_delta, args.app, args.gap_delta)
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

    duration, total = args.duration_s, args.total
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


# --- tapline replay and tapline export -------------------------------------------------------


def add_selectors(cmd, *, kafka: bool) -> None:
    """Which captures: the lake's date, hour, IP and a DuckDB condition (or, for replay, the
    Kafka topic between two times or offsets), and how many."""
    cmd.add_argument("--date", help="only this day (YYYY-MM-DD, UTC)")
    cmd.add_argument("--hour", help="only this hour of the day (0-23, UTC)")
    cmd.add_argument("--ip", help="only this client IP (or `unknown`)")
    cmd.add_argument("--where", help="only captures for which this DuckDB condition on the "
                                     "view `captures` holds, e.g. \"request.method = 'POST'\"")
    cmd.add_argument("--bucket", help="the lake's bucket (default: S3_BUCKET, else captures)")
    cmd.add_argument("--limit", type=int, help="at most this many captures")
    if kafka:
        cmd.add_argument("--from", dest="from_", metavar="FROM",
                         help="read the Kafka topic instead of the lake, from this time "
                              "(2026-11-28T10:00:00Z, UTC) or offset (in every partition)")
        cmd.add_argument("--to", help="read the Kafka topic up to this time or offset "
                                      "(excluded); default: its end")
        cmd.add_argument("--bootstrap", default=os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="Kafka (KAFKA_BOOTSTRAP_SERVERS)")
        cmd.add_argument("--topic", default=os.environ.get("CAPTURE_TOPIC", "http-captures"),
                         help="the capture topic (CAPTURE_TOPIC)")


def add_replay_command(commands) -> None:
    from tapline.replay import add_options

    replay = commands.add_parser(
        "replay", help="send captured requests again, to a service, and compare the answers",
        description="Send the selected captures' requests again, to a base URL per app "
                    "(--target), with the original timing (or --speed, --rate), and compare "
                    "each answer with the original: statuses, the pairs that changed per "
                    "endpoint, latency. Exit 0, or 3 with --fail-on-diff when a status "
                    "changed; 1 when the replay cannot run, 2 for a bad command line.")
    add_selectors(replay, kafka=True)
    add_options(replay)


def add_export_command(commands) -> None:
    export = commands.add_parser(
        "export", help="captures as a HAR 1.2 file, for devtools, Postman, Insomnia",
        description="Write the selected captures as HAR 1.2 (one entry per exchange, bodies "
                    "included as captured, redacted values as stored), streamed: a day of "
                    "traffic needs no more memory than a few lake objects. Where the lake is "
                    "comes from S3_ENDPOINT_URL, S3_BUCKET and the S3 keys, as for `lake`.")
    export.add_argument("--har", action="store_true", help="HAR 1.2 (the format)")
    export.add_argument("--database", help="read TimescaleDB's http_requests instead of the "
                                           "lake (a PostgreSQL URL; --where is then SQL on its "
                                           "columns, and bodies are as the table cut them)")
    export.add_argument("-o", "--output", default="-",
                        help="the file to write (default -, standard output); written whole "
                             "or not at all")
    add_selectors(export, kafka=False)


def export_command(args: argparse.Namespace) -> int:
    from tapline.captures import NoCaptures, db_records, lake_records
    from tapline.har import write_har
    from tapline.lake import LakeError

    if args.database is not None:
        records = db_records(args.database, args.selection)
    else:
        records = lake_records(args.settings, args.selection)
    partial = None
    try:
        if args.output == "-":
            written, skipped = write_har(records, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            partial = f"{args.output}.partial-{os.getpid()}"
            with open(partial, "wb") as out:
                written, skipped = write_har(records, out)
            if not written:
                raise NoCaptures("no captures match the selection")
            os.replace(partial, args.output)
            partial = None
    except LakeError as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"tapline: --output {shown(args.output)}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
    if skipped:
        print(f"tapline: {skipped} lake lines are not capture records and were left out",
              file=sys.stderr)
    if not written:
        print("tapline: no captures match the selection", file=sys.stderr)
        return 1
    if args.output != "-":
        print(f"wrote {written} entries to {args.output}", file=sys.stderr)
    return 0


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
