"""A selection of captures, read one record at a time: what `tapline replay` and `tapline
export` work on.

From the lake: the objects of a `Scope` (date, hour, IP), listed under its prefix and read
whole, one object at a time (a few fetched ahead), each record kept as the bytes the lake
holds, and given once (a record that two objects hold, as the view `captures` has it). A
`where` clause is DuckDB SQL on the view `captures` (tapline/lake.py): it is run once for the
ids it selects, and the objects are then read for those records. Nothing holds more than a
few objects and the ids of the selection and of one prefix, so a day of traffic streams.
"""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from capture.lake_layout import SUFFIX
from tapline import lake
from tapline.lake import LakeError, LakeSettings, Scope

REPLAY_HEADER = "x-tapline-replay"  # lower case; the header replays carry by default


class NoCaptures(LakeError):
    """The selection holds no capture."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which captures: a lake scope, an optional DuckDB condition, at most `limit` of them."""

    scope: Scope = field(default_factory=Scope)
    where: str | None = None
    limit: int | None = None


def _key_order(key: str) -> tuple:
    """Objects in the order the sink wrote them: by prefix, then topic, partition and offsets
    as numbers (`-0-100-199` after `-0-99-99`)."""
    prefix, _, name = key.rpartition("/")
    match = _NUMBERS.search(name)
    if match is None:
        return prefix, name, ()
    return prefix, name[:match.start()], tuple(int(n) for n in match.group(0)[1:].split("-"))


_NUMBERS = re.compile(rf"(?:-\d+)+(?={re.escape(SUFFIX)}$)")


def selected_ids(settings: LakeSettings, selection: Selection) -> set[str] | None:
    """The ids `selection.where` picks (None when it has no condition); BadQuery for SQL
    DuckDB refuses."""
    if selection.where is None:
        return None
    result = lake.query(settings, f"SELECT id FROM captures WHERE ({selection.where})",
                        selection.scope)
    return {row[0] for row in result.rows}


def lake_records(settings: LakeSettings, selection: Selection,
                 ahead: int = 4) -> Iterator[bytes]:
    """The selection's records, as stored, object by object; LakeError subclasses for a lake
    that cannot be read or a bad condition."""
    ids = selected_ids(settings, selection)
    entries = sorted(lake.list_objects(settings, selection.scope), key=lambda e: _key_order(e.key))
    if ids is not None and not ids:
        return
    fs = settings.filesystem(asynchronous=False)
    bucket = settings.bucket

    def fetch(key: str) -> bytes:
        try:
            return gzip.decompress(fs.cat_file(f"{bucket}/{key}"))
        except (OSError, EOFError, ValueError) as e:
            raise lake.LakeUnreachable(f"S3 at {settings.endpoint_url or 'AWS'}: cannot read "
                                       f"{key}: {e}") from None

    given = 0
    # A record may be in two objects (a crash between a write and its commit: docs/lake.md);
    # its copies share the prefix, so the ids seen are kept for one prefix at a time.
    seen: set[str] = set()
    prefix = None
    with ThreadPoolExecutor(ahead) as pool:
        pending = [pool.submit(fetch, e.key) for e in entries[:ahead]]
        index = len(pending)
        for entry in entries:
            data = pending.pop(0).result()
            if index < len(entries):
                pending.append(pool.submit(fetch, entries[index].key))
                index += 1
            if entry.key.rpartition("/")[0] != prefix:
                prefix, seen = entry.key.rpartition("/")[0], set()
            for line in data.split(b"\n"):
                if not line:
                    continue
                capture_id = _record_id(line)
                if ids is not None and capture_id not in ids:
                    continue
                if capture_id is not None:
                    if capture_id in seen:
                        continue
                    seen.add(capture_id)
                yield line
                given += 1
                if selection.limit is not None and given >= selection.limit:
                    for future in pending:
                        future.cancel()
                    return


_ID = re.compile(rb'"id":"([^"\\]*)"')


def _record_id(line: bytes) -> str | None:
    """A record's id, without decoding it all when it is the first key (as the proxy writes
    records); None when the line holds none."""
    match = _ID.match(line, 1) if line.startswith(b'{"id":"') else None
    if match:
        return match.group(1).decode()
    try:
        found = orjson.loads(line).get("id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


# --- Kafka -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a Kafka read starts or stops: a time (UTC) or an offset (in every partition)."""

    time: datetime | None = None
    offset: int | None = None

    @classmethod
    def parse(cls, text: str, option: str) -> Bound:
        """`2026-11-28T10:00:00Z`, `2026-11-28 10:00`, `2026-11-28` (UTC unless a zone is
        given) or a whole number of 0 or more (an offset); ValueError with the reason."""
        text = text.strip()
        if text.isascii() and text.isdigit() and len(text) <= 19:
            return cls(offset=int(text))
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{option} {text[:40]!r}: use a time (2026-11-28T10:00:00Z) or "
                             "an offset (a whole number)") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            when.timestamp()
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{option} {text[:40]!r}: out of range") from None
        return cls(time=when)


def kafka_records(bootstrap: str, topic: str, start: Bound | None, end: Bound | None,
                  limit: int | None = None, idle_s: float = 2.0) -> Iterator[bytes]:
    """The topic's records from `start` to `end` (end excluded), partition after partition
    interleaved as they come; KafkaError when Kafka cannot be read. Read up front (a replay
    plans its schedule before it sends anything)."""
    return iter(asyncio.run(_read_kafka(bootstrap, topic, start, end, limit, idle_s)))


async def _read_kafka(bootstrap: str, topic: str, start: Bound | None, end: Bound | None,
                      limit: int | None, idle_s: float) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from capture.topics import partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        found = await partitions(bootstrap, topic)
        if not found:
            raise NoCaptures(f"Kafka at {bootstrap} has no topic {topic!r}")
        tps = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(tps)
        first = await consumer.beginning_offsets(tps)
        last = await consumer.end_offsets(tps)

        async def offsets(bound: Bound | None, default: dict) -> dict:
            if bound is None:
                return dict(default)
            if bound.offset is not None:
                return {tp: min(max(bound.offset, first[tp]), last[tp]) for tp in tps}
            assert bound.time is not None
            found = await consumer.offsets_for_times(
                {tp: int(bound.time.timestamp() * 1000) for tp in tps})
            return {tp: last[tp] if found[tp] is None else found[tp].offset for tp in tps}

        begin = await offsets(start, first)
        stop = await offsets(end, last)
        wanted = {tp for tp in tps if begin[tp] < stop[tp]}
        for tp in tps:
            consumer.seek(tp, begin[tp])
        out: list[bytes] = []
        while wanted:
            batches = await consumer.getmany(*wanted, timeout_ms=int(idle_s * 1000))
            if not batches:
                break  # nothing more arrives: the end lies past what the topic holds
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= stop[tp]:
                        wanted.discard(tp)
                        break
                    out.append(message.value)
                    if limit is not None and len(out) >= limit:
                        return out
                if tp in wanted and await consumer.position(tp) >= stop[tp]:
                    wanted.discard(tp)
        return out
    finally:
        await consumer.stop()


# --- TimescaleDB -------------------------------------------------------------------------------

_DB_COLUMNS = ("capture_id::text, app, time, ended_at, duration_ms, host(client_ip), "
               "client_port, method, scheme, host, path, query, http_version, status_code, "
               "reason, request_size, response_size, error, request_headers, response_headers, "
               "request_body, request_body_encoding, request_body_truncated, response_body, "
               "response_body_encoding, response_body_truncated, request_body_withheld, "
               "response_body_withheld")


def db_query(selection: Selection) -> tuple[str, list]:
    """The SELECT of `selection` over http_requests: the scope as a time range and a client,
    `where` as SQL on the table's columns, in time order."""
    conditions, parameters = [], []
    scope = selection.scope
    if scope.date is not None:
        start = datetime.fromisoformat(scope.date).replace(tzinfo=UTC)
        span = timedelta(days=1)
        if scope.hour is not None:
            start, span = start + timedelta(hours=scope.hour), timedelta(hours=1)
        conditions.append("time >= %s AND time < %s")
        parameters += [start, start + span]
    elif scope.hour is not None:
        conditions.append("extract(hour FROM time AT TIME ZONE 'UTC') = %s")
        parameters.append(scope.hour)
    if scope.ip is not None:
        if scope.ip == "unknown":
            conditions.append("client_ip IS NULL")
        else:
            conditions.append("client_ip = %s::inet")
            parameters.append(scope.ip)
    if selection.where is not None:
        conditions.append(f"({selection.where})")
    sql = f"SELECT {_DB_COLUMNS} FROM http_requests"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY time"
    if selection.limit is not None:
        sql += f" LIMIT {int(selection.limit)}"
    return sql, parameters


def _utc(when: datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_of_row(row: tuple) -> dict:
    """An http_requests row as a capture record in JSON form, as far as the table keeps it
    (bodies cut at TIMESCALE_BODY_MAX_BYTES say so by their truncated flag)."""
    (capture_id, app, time, ended_at, duration_ms, client_ip, client_port, method, scheme,
     host, path, query, http_version, status_code, reason, request_size, response_size,
     error, request_headers, response_headers, request_body, request_body_encoding,
     request_body_truncated, response_body, response_body_encoding, response_body_truncated,
     request_body_withheld, response_body_withheld) = row
    record = {
        "v": 2, "id": capture_id, "app": app, "started_at": _utc(time),
        "ended_at": _utc(ended_at) or _utc(time), "duration_ms": duration_ms or 0.0,
        "client_ip": client_ip or "unknown", "client_port": client_port or 0,
        "request": {
            "method": method, "scheme": scheme or "http", "host": host or "", "port": 0,
            "path": path, "query": query or "", "params": {}, "http_version": http_version or "",
            "headers": request_headers or [], "body": request_body or "",
            "body_encoding": request_body_encoding or "utf-8", "body_size": request_size or 0,
            "body_truncated": bool(request_body_truncated),
            "body_withheld": request_body_withheld},
        "response": None, "error": error,
    }
    if status_code is not None:
        record["response"] = {
            "status_code": status_code, "reason": reason or "", "http_version": http_version or "",
            "headers": response_headers or [], "body": response_body or "",
            "body_encoding": response_body_encoding or "utf-8", "body_size": response_size or 0,
            "body_truncated": bool(response_body_truncated),
            "body_withheld": response_body_withheld}
    return record


def db_records(database: str, selection: Selection, batch: int = 2_000) -> Iterator[dict]:
    """The selection's rows of http_requests as records, read through a server-side cursor
    (`batch` rows at a time); LakeError subclasses for a database that cannot be read or a
    bad condition. Never quotes the URL: it may hold a password."""
    import psycopg

    sql, parameters = db_query(selection)
    try:
        with psycopg.connect(database, connect_timeout=10) as conn, \
                conn.cursor(name="tapline_export") as cursor:
            cursor.itersize = batch
            cursor.execute(sql, parameters)
            for row in cursor:
                yield record_of_row(row)
    except (psycopg.errors.SyntaxError, psycopg.errors.UndefinedColumn,
            psycopg.errors.UndefinedFunction, psycopg.errors.DatatypeMismatch,
            psycopg.errors.InvalidTextRepresentation) as e:
        raise lake.BadQuery(f"--where: {str(e).strip().splitlines()[0]}") from None
    except psycopg.Error as e:
        text = str(e).strip()
        raise lake.LakeUnreachable(
            f"the database: {text.splitlines()[0] if text else type(e).__name__}") from None
