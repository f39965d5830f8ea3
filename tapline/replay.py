"""`tapline replay`: send captured requests again, to a service of your choice, and compare.

The plan (`plan`) turns capture records into requests as they were captured: method, path and
query as raw as they came, headers in their order (hop-by-hop ones, `Host` and
`Content-Length` dropped: the client library sets them for the target), bodies as bytes.
What redaction replaced cannot be sent as it was: each request lists the fields that still
hold a marker or a fingerprint (`unresolved`), unless the user supplied them (`--header`
for a whole header, `--map` / `--map-file` for a fingerprint's real value, wherever it
appears). Requests whose body was withheld or truncated are skipped and counted, unless
`--send-truncated`. Replays of replays (requests that carry the mark header) are skipped too.

Pacing (`run`): by default the original timing, each connection's requests in their order and
with their gaps (`--speed` scales the gaps); or `--rate N` requests per second (`max`: as fast
as the target answers), spread over `--concurrency` clients. At most `--concurrency` requests
are in flight. One asyncio loop (uvloop where installed) and a lean client's pooled keep-alive
connections (tapline/http1.py), so a replay keeps up with what it captured.

The summary (`summarize`) compares each answer with the original: statuses equal, the status
pairs that changed per endpoint, latency percentiles, errors; `--fail-on-diff` makes any
difference exit code 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from capture import InvalidRecord, decode_body, decode_json

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers",
                        "transfer-encoding", "upgrade"})
SET_BY_CLIENT = frozenset({"host", "content-length"})
DEFAULT_MARK = "X-Tapline-Replay"
DIFF_EXIT = 3
MAX_CONCURRENCY = 2_000
MAX_RATE = 1_000_000.0
_FINGERPRINT = re.compile(r"hmac:[0-9a-f]{16}")
_MARKERS = re.compile(r"\[redacted\]|\[withheld: [^\]]*\]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # kept as they are: a captured path is already escaped


class UsageError(ValueError):
    """A replay option that cannot work."""


@dataclass(slots=True)
class Planned:
    """One request to send, and what its original got."""

    capture_id: str
    app: str
    method: str
    target: str  # path and query, escaped, from the root of the app's base URL
    headers: list[tuple[str, str]]
    body: bytes | None
    wire: bytes  # the whole request, as sent to the app's target
    started: float  # the original's start, epoch seconds
    chain: tuple  # the original connection: its requests go in order
    endpoint: str  # "app METHOD path"
    original_status: int | None
    original_ms: float
    unresolved: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    items: list[Planned] = field(default_factory=list)
    selected: int = 0  # captures read
    skipped: Counter = field(default_factory=Counter)  # reason -> count


@dataclass(frozen=True, slots=True)
class Options:
    targets: dict[str, str]  # app -> base URL without a trailing slash
    headers: list[tuple[str, str]] = field(default_factory=list)  # set on every request
    mapping: dict[str, str] = field(default_factory=dict)  # fingerprint -> value
    send_truncated: bool = False
    mark: str | None = DEFAULT_MARK
    include_replays: bool = False
    speed: float = 1.0
    rate: float | None = None  # None: the original timing; math.inf: as fast as possible
    concurrency: int = 64
    timeout_s: float = 30.0


# --- the plan ----------------------------------------------------------------------------------


def _started(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _resolve(text: str, mapping: dict[str, str]) -> tuple[str, bool]:
    """`text` with known fingerprints replaced by their values; and whether it still holds a
    marker or a fingerprint nobody supplied."""
    if "hmac:" in text and mapping:
        text = _FINGERPRINT.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)
    return text, bool(_MARKERS.search(text) or ("hmac:" in text and _FINGERPRINT.search(text)))


def plan_one(record: dict, options: Options) -> Planned | str:
    """A record as a request to send, or why it is skipped."""
    request = record["request"]
    app = record["app"]
    if app not in options.targets:
        return f"no --target for {app}"
    headers_in = request["headers"]
    if not options.include_replays and options.mark is not None:
        mark = options.mark.lower()
        if any(name.lower() == mark for name, _ in headers_in):
            return "a replay itself (carries the mark header)"
    if not options.send_truncated:
        if request.get("body_withheld"):
            return "request body withheld by redaction"
        if request["body_truncated"]:
            return "request body truncated"
    unresolved: list[str] = []
    mapping = options.mapping
    target, open_ = _resolve(request["path"], mapping)
    if open_:
        unresolved.append("path")
    if request["query"]:
        query, open_ = _resolve(request["query"], mapping)
        if open_:
            unresolved.append("query")
        target += "?" + query
    target = quote(target, safe=_URL_SAFE)
    overridden = {name.lower() for name, _ in options.headers}
    drop = HOP_BY_HOP | SET_BY_CLIENT | overridden
    for name, value in headers_in:
        if name.lower() == "connection":
            drop = drop | {token.strip().lower() for token in value.split(",")}
    if request.get("content_encoding"):
        drop = drop | {"content-encoding"}  # the record keeps the body decoded: send it so
    headers = []
    for name, value in headers_in:
        if name.lower() in drop:
            continue
        value, open_ = _resolve(value, mapping)
        if open_:
            unresolved.append(f"header {name}")
        headers.append((name, value))
    headers.extend(options.headers)
    if options.mark is not None:
        headers.append((options.mark, record["id"]))
    body: bytes | None = None
    if request["body"] or request["body_size"]:
        text = request["body"]
        if request["body_encoding"] == "utf-8":
            text, open_ = _resolve(text, mapping)
            if open_:
                unresolved.append("body")
        try:
            body = decode_body(text, request["body_encoding"])
        except InvalidRecord:
            return "request body not decodable"
    response = record.get("response")
    method = request["method"]
    return Planned(
        capture_id=record["id"], app=app, method=method, target=target,
        headers=headers, body=body,
        wire=wire_request(method, options.targets[app], target, headers, body),
        started=_started(record["started_at"]),
        chain=(app, record["client_ip"], record["client_port"]),
        endpoint=f"{app} {request['method']} {request['path']}",
        original_status=None if response is None else response["status_code"],
        original_ms=float(record["duration_ms"]), unresolved=unresolved)


def _header_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")  # how the record keeps bytes that are not UTF-8
    except UnicodeEncodeError:
        return text.encode("utf-8")


def wire_request(method: str, base: str, target: str, headers: list[tuple[str, str]],
                 body: bytes | None) -> bytes:
    """The request as bytes on the wire to `base` (the target's URL, maybe with a path)."""
    parts = urlsplit(base)
    host = parts.netloc.rpartition("@")[2]
    lines = [f"{method} {parts.path}{target} HTTP/1.1".encode("ascii", "replace"),
             b"Host: " + host.encode("idna" if not host.isascii() else "ascii")]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue  # cannot be sent as one header line
        lines.append(_header_bytes(name) + b": " + _header_bytes(value))
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d" % len(body or b""))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def plan(records: Iterable[bytes], options: Options) -> Plan:
    """Every record as a request to send, in the order of the originals' start."""
    result = Plan()
    for data in records:
        result.selected += 1
        try:
            record = decode_json(data)
        except InvalidRecord:
            result.skipped["not a valid capture record"] += 1
            continue
        item = plan_one(record, options)
        if isinstance(item, str):
            result.skipped[item] += 1
        else:
            result.items.append(item)
    result.items.sort(key=lambda item: item.started)
    return result


# --- sending -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    status: int | None = None
    ms: float = 0.0
    error: str | None = None


def _error_kind(error: BaseException) -> str:
    from tapline.http1 import ProtocolError

    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, ProtocolError):
        return f"bad answer ({error})"
    if isinstance(error, OSError):
        return f"cannot connect ({error.strerror or type(error).__name__})"
    raise error


async def _run(items: list[Planned], options: Options, progress: Callable[[], None] | None
               ) -> list[Outcome]:
    from tapline.http1 import Client

    outcomes = [Outcome() for _ in items]
    loop = asyncio.get_running_loop()
    where = {}
    for app, base in options.targets.items():
        parts = urlsplit(base)
        tls = parts.scheme == "https"
        where[app] = (parts.hostname, parts.port or (443 if tls else 80), tls)
    client = Client()
    timeout = options.timeout_s
    try:
        slots = asyncio.Semaphore(options.concurrency)
        busy: dict[tuple, deque[int]] = {}
        tasks: set[asyncio.Task] = set()
        chained = options.rate is None

        async def send(i: int) -> None:
            item = items[i]
            outcome = outcomes[i]
            host, port, tls = where[item.app]
            began = loop.time()
            try:
                async with asyncio.timeout(timeout):
                    outcome.status = await client.request(
                        host, port, item.wire, head=item.method == "HEAD", tls=tls)
            except Exception as e:  # sorted by _error_kind, which re-raises the unknown
                outcome.error = _error_kind(e)
            outcome.ms = (loop.time() - began) * 1000
            if progress is not None:
                progress()

        async def run_chain(i: int) -> None:
            chain = items[i].chain if chained else None
            try:
                while True:
                    await send(i)
                    waiting = busy.get(chain) if chain is not None else None
                    if not waiting:
                        break
                    i = waiting.popleft()  # its time has come already: it waited for this one
            finally:
                if chain is not None:
                    busy.pop(chain, None)
                slots.release()

        start = loop.time()
        first = items[0].started if items else 0.0
        for i, item in enumerate(items):
            if options.rate is None:
                due = start + (item.started - first) / options.speed
            elif math.isinf(options.rate):
                due = start
            else:
                due = start + i / options.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if chained:
                waiting = busy.get(item.chain)
                if waiting is not None:
                    waiting.append(i)
                    continue
            await slots.acquire()
            if chained:
                busy[item.chain] = deque()
            task = loop.create_task(run_chain(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
    finally:
        client.close()
    return outcomes


def run(items: list[Planned], options: Options,
        progress: Callable[[], None] | None = None) -> list[Outcome]:
    """Send every planned request, paced as the options say; one outcome per item."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in requirements.txt
        return asyncio.run(_run(items, options, progress))
    return uvloop.run(_run(items, options, progress))


def check_targets(targets: dict[str, str], timeout_s: float = 3.0) -> None:
    """Raise ConnectionError, in one line, for a target nothing answers at."""
    for app, base in targets.items():
        parts = urlsplit(base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        except OSError as e:
            why = "connection refused (nothing listens there)" if isinstance(
                e, ConnectionRefusedError) else (e.strerror or type(e).__name__)
            raise ConnectionError(f"--target {app}={_safe_url(base)}: {why}") from None


def _safe_url(url: str) -> str:
    """A URL without its user information, which may hold a password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "") + parts.path


# --- the summary -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(result: Plan, outcomes: list[Outcome], elapsed_s: float) -> dict[str, Any]:
    """What a person or a CI job wants to know of a replay, as plain data."""
    items = result.items
    answered = [(item, o) for item, o in zip(items, outcomes, strict=True) if o.status is not None]
    same = sum(1 for item, o in answered if o.status == item.original_status)
    changed: Counter = Counter()
    for item, o in zip(items, outcomes, strict=True):
        if o.status != item.original_status:
            changed[(item.endpoint, item.original_status, o.status if o.error is None
                     else o.error)] += 1
    errors = Counter(o.error for o in outcomes if o.error is not None)
    original_ms = [item.original_ms for item, _ in answered]
    replay_ms = [o.ms for _, o in answered]
    unresolved = [(item.capture_id, item.unresolved) for item in items if item.unresolved]
    by_field = Counter(f for _, fields in unresolved for f in fields)
    return {
        "selected": result.selected,
        "skipped": dict(result.skipped.most_common()),
        "sent": len(items),
        "answered": len(answered),
        "status_same": same,
        "status_changed": sum(changed.values()),
        "changes": [{"endpoint": endpoint, "original": orig, "replay": new, "count": n}
                    for (endpoint, orig, new), n in sorted(
                        changed.items(), key=lambda kv: (-kv[1], str(kv[0])))],
        "errors": dict(errors.most_common()),
        "latency_ms": {
            "original": {"p50": percentile(original_ms, 50), "p95": percentile(original_ms, 95)},
            "replay": {"p50": percentile(replay_ms, 50), "p95": percentile(replay_ms, 95)},
        },
        "unresolved": {"requests": len(unresolved), "by_field": dict(by_field.most_common()),
                       "per_request": [{"id": cid, "fields": fields}
                                       for cid, fields in unresolved]},
        "elapsed_s": round(elapsed_s, 3),
        "rate_per_s": round(len(items) / elapsed_s, 1) if elapsed_s > 0 else None,
    }


def differs(summary: dict[str, Any]) -> bool:
    return summary["status_changed"] > 0


def summary_text(summary: dict[str, Any], shown_requests: int = 10) -> str:
    from tapline.cli import text_table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"replayed {summary['sent']} of {summary['selected']} captures in "
        f"{summary['elapsed_s']:.1f}s ({summary['rate_per_s'] or 0:,.0f}/s): "
        f"{summary['answered']} answered, {summary['status_same']} with the original's "
        f"status, {summary['status_changed']} changed",
    ]
    rows = [("sent", summary["sent"]), ("answered", summary["answered"]),
            ("status identical", summary["status_same"]),
            ("status changed", summary["status_changed"])]
    rows += [(f"error: {kind}", n) for kind, n in summary["errors"].items()]
    rows += [(f"skipped: {why}", n) for why, n in summary["skipped"].items()]
    lines += ["", text_table(["", "requests"], rows)]
    latency = summary["latency_ms"]
    lines += ["", text_table(["latency ms", "p50", "p95"], [
        ("original", ms(latency["original"]["p50"]), ms(latency["original"]["p95"])),
        ("replay", ms(latency["replay"]["p50"]), ms(latency["replay"]["p95"]))])]
    if summary["changes"]:
        lines += ["", "status changed, per endpoint:", text_table(
            ["endpoint", "original", "replay", "requests"],
            [(c["endpoint"], "no answer" if c["original"] is None else c["original"],
              c["replay"], c["count"]) for c in summary["changes"]])]
    unresolved = summary["unresolved"]
    if unresolved["requests"]:
        lines += ["", f"{unresolved['requests']} requests were sent with values redaction "
                      "replaced (supply them with --header or --map):",
                  text_table(["field", "requests"], list(unresolved["by_field"].items()))]
        for entry in unresolved["per_request"][:shown_requests]:
            lines.append(f"  {entry['id']}: {', '.join(entry['fields'])}")
        if unresolved["requests"] > shown_requests:
            lines.append(f"  ... and {unresolved['requests'] - shown_requests} more (--json "
                         "lists them all)")
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------


def add_options(cmd) -> None:
    cmd.add_argument("--target", action="append", default=[], metavar="APP=URL",
                     help="where an app's captures go, e.g. app_a=http://127.0.0.1:5100 "
                          "(repeat for each app; captures of other apps are skipped)")
    cmd.add_argument("--speed", type=float, default=1.0,
                     help="the original timing, this many times faster (default 1)")
    cmd.add_argument("--rate", help="instead, this many requests per second over "
                                    "--concurrency clients, or `max`")
    cmd.add_argument("--concurrency", type=int, default=64,
                     help="requests in flight at most (default 64)")
    cmd.add_argument("--timeout", type=float, default=30.0,
                     help="seconds to wait for one answer (default 30)")
    cmd.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                     help="set this header on every request, e.g. for a credential redaction "
                          "replaced (repeat for several)")
    cmd.add_argument("--map", action="append", default=[], metavar="FINGERPRINT=VALUE",
                     help="send VALUE wherever the capture holds this fingerprint (hmac:...)")
    cmd.add_argument("--map-file", help="a JSON object of fingerprint: value, as --map")
    cmd.add_argument("--send-truncated", action="store_true",
                     help="send requests whose body was truncated or withheld, with what "
                          "there is (default: skip and count them)")
    cmd.add_argument("--mark-header", default=DEFAULT_MARK,
                     help=f"the header that carries the capture id ({DEFAULT_MARK}); "
                          "captures that carry it are not replayed again")
    cmd.add_argument("--no-mark", action="store_true", help="send no mark header")
    cmd.add_argument("--include-replays", action="store_true",
                     help="also replay captures that carry the mark header")
    cmd.add_argument("--json", action="store_true", help="the summary as JSON, for machines")
    cmd.add_argument("--fail-on-diff", action="store_true",
                     help=f"exit {DIFF_EXIT} when a status differs from the original's")


def validate_replay(args: argparse.Namespace) -> None:
    """Check replay's own options and build `args.options`; UsageError (from tapline.cli)
    for the first that cannot work. Reads --map-file; connects to nothing."""
    from tapline.cli import UsageError as CliUsageError

    try:
        args.options = _options(args)
    except UsageError as e:
        raise CliUsageError(str(e)) from None


def _options(args: argparse.Namespace) -> Options:
    if not args.target:
        raise UsageError("--target: say where to send each app's captures, e.g. "
                         "--target app_a=http://127.0.0.1:5100")
    targets: dict[str, str] = {}
    for text in args.target:
        app, eq, url = text.partition("=")
        app = app.strip()
        try:
            parts = urlsplit(url.strip())
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
        except ValueError:
            parts = None
        if not (eq and app and parts and parts.scheme in ("http", "https") and parts.hostname
                and not parts.query and not parts.fragment):
            raise UsageError("--target: use APP=http://HOST:PORT, e.g. "
                             "app_a=http://127.0.0.1:5100")
        if app in targets:
            raise UsageError(f"--target: {app[:40]!r} is given twice")
        targets[app] = url.strip().rstrip("/")
    if not (math.isfinite(args.speed) and 0 < args.speed <= 1_000_000):
        raise UsageError(f"--speed {args.speed}: use a number above 0 (2: twice as fast)")
    rate = None
    if args.rate is not None:
        if args.rate.strip().lower() == "max":
            rate = math.inf
        else:
            try:
                rate = float(args.rate)
            except ValueError:
                rate = math.nan
            if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
                raise UsageError(f"--rate {args.rate[:40]!r}: use a number of requests per "
                                 f"second above 0 and at most {MAX_RATE:,.0f}, or max")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {args.concurrency}: use 1 to {MAX_CONCURRENCY:,}")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 3600):
        raise UsageError(f"--timeout {args.timeout}: use seconds above 0, at most 3600")
    headers = []
    for text in args.header:
        name, colon, value = text.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name.strip()) or any(
                c in value for c in "\r\n\0"):
            # Never quote it: the value is likely a credential.
            raise UsageError("--header: use 'Name: value' (a header name, a colon, a value "
                             "on one line)")
        headers.append((name.strip(), value.strip()))
    mapping: dict[str, str] = {}
    if args.map_file is not None:
        try:
            loaded = json.loads(Path(args.map_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise UsageError(f"--map-file: cannot read a JSON object from it ({why})") from None
        if not isinstance(loaded, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()):
            raise UsageError("--map-file: use a JSON object of \"hmac:...\": \"value\"")
        mapping.update(loaded)
    for text in args.map:
        fingerprint, eq, value = text.partition("=")
        if not eq:
            raise UsageError("--map: use FINGERPRINT=VALUE, e.g. hmac:3f9a0c1d2e4b5a69=mytoken")
        mapping[fingerprint.strip()] = value
    for fingerprint in mapping:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise UsageError("--map: a fingerprint is hmac: and 16 hex digits, as the "
                             "captures show it")
    mark = None if args.no_mark else args.mark_header.strip()
    if mark is not None and not _HEADER_NAME.fullmatch(mark):
        raise UsageError("--mark-header: use a header name (letters, digits, -)")
    return Options(targets=targets, headers=headers, mapping=mapping,
                   send_truncated=args.send_truncated, mark=mark,
                   include_replays=args.include_replays, speed=args.speed, rate=rate,
                   concurrency=args.concurrency, timeout_s=args.timeout)


def replay_command(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tapline.captures import kafka_records, lake_records
    from tapline.lake import LakeError

    options: Options = args.options
    try:
        check_targets(options.targets)
        if args.source == "kafka":
            records = kafka_records(args.bootstrap, args.topic, args.start, args.end,
                                    args.limit)
        else:
            records = lake_records(args.settings, args.selection)
        result = plan(records, options)
    except (ConnectionError, LakeError) as e:
        print(f"tapline: {e}", file=sys.stderr)
        return 1
    except KafkaError as e:
        print(f"tapline: Kafka at {args.bootstrap}: {e}", file=sys.stderr)
        return 1
    if result.selected == 0:
        print("tapline: no captures match the selection", file=sys.stderr)
        return 1
    if not result.items:
        reasons = ", ".join(f"{n} {why}" for why, n in result.skipped.most_common())
        print(f"tapline: none of the {result.selected} selected captures can be replayed "
              f"({reasons})", file=sys.stderr)
        return 1
    show = not args.json and sys.stderr.isatty()
    began = time.monotonic()
    with Progress("replaying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=not show) as progress:
        task = progress.add_task("replay", total=len(result.items))
        outcomes = run(result.items, options,
                       (lambda: progress.advance(task)) if show else None)
    summary = summarize(result, outcomes, time.monotonic() - began)
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        print(summary_text(summary))
    return DIFF_EXIT if args.fail_on_diff and differs(summary) else 0
