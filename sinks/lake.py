"""The S3 data lake sink: every capture, byte for byte, as gzip-compressed NDJSON objects.

The layout, `<YYYY-MM-DD>/<HH>/<client-ip>/<topic>-<partition>-<first>-<last>.jsonl.gz`, is
capture/lake_layout.py's, which the readers import too (docs/lake.md). One object holds, in
offset order, the records of one batch of one partition that share date, hour and client IP;
each line is exactly the bytes that were on the topic.

The pure parts (the layout's keys, `plan_objects`, `ndjson_gz`) decide everything that
matters; `LakeSink` is a thin shell that compresses and PUTs.

Failure policy: S3 never refuses a capture as data, so this sink never raises
PermanentWriteError. Whatever fails (S3 unreachable, 5xx, timeouts, a missing bucket, wrong
credentials) is raised as it is and the loop retries the whole batch with backoff; rewriting
the objects that did get written is harmless because their names and bytes are the same.
Before each PUT the sink calls the loop's `fence`, which raises PartitionLost once the
batch's partitions are another's: a sink that lost them stops writing. What it had on the wire
already cannot replace what another wrote, because a name fixes the bytes (see
`plan_objects`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.structs import ConsumerRecord
from zlib_ng import zlib_ng

from capture import InvalidRecord, decode_json
from capture.lake_layout import key_prefix, object_key
from capture.settings import EnvReader, SettingsError, shown
from sinks.loop import Fence, Item, PartitionLost, Sink, unfenced

log = logging.getLogger(__name__)

PUT_CONCURRENCY = 16  # PUTs of a batch in flight at once; docs/lake.md has the measurements
# One layer of quick retries inside a write: botocore's standard mode (2 attempts, with
# jitter, on connection errors, throttling and 5xx); s3fs adds none on top. Past that the
# error reaches the loop, which backs off, retries the batch and counts it in its metric.
BOTOCORE_MAX_ATTEMPTS = 2
S3FS_RETRIES = 1


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LakeSettings:
    """Where the lake is, how objects are compressed, how long S3 may take to answer.

    `endpoint_url` None means AWS S3 itself. `access_key_id` and `secret_access_key` None
    mean the standard AWS credential chain (environment, profile, instance role). Defaults
    suit a local S3 server: moto or MinIO on 127.0.0.1:9000 with keys tapline/tapline-secret;
    with S3_ENDPOINT_URL empty (AWS) the keys default to the credential chain instead.
    """

    endpoint_url: str | None
    bucket: str
    region: str
    access_key_id: str | None = field(repr=False)
    secret_access_key: str | None = field(repr=False)
    gzip_level: int
    timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LakeSettings:
        reader = EnvReader(os.environ if env is None else env)
        endpoint = reader.text("S3_ENDPOINT_URL", "http://127.0.0.1:9000").rstrip("/") or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise SettingsError("S3_ENDPOINT_URL: use http://host:port or "
                                "https://host, or leave it empty for AWS S3")
        bucket = reader.text("S3_BUCKET", "captures")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise SettingsError(f"S3_BUCKET={shown(bucket)} is not a valid bucket name")
        key = reader.text("S3_ACCESS_KEY_ID", "tapline" if endpoint else "")
        secret = reader.text("S3_SECRET_ACCESS_KEY", "tapline-secret" if endpoint else "")
        if bool(key) != bool(secret):
            raise SettingsError("set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither "
                                "(empty: the standard AWS credential chain)")
        level = reader.integer("LAKE_GZIP_LEVEL", 6, minimum=1, maximum=9)
        timeout_s = reader.number("S3_TIMEOUT_S", 30.0, maximum=3600.0, above_minimum=True)
        return cls(
            endpoint_url=endpoint,
            bucket=bucket,
            region=reader.text("S3_REGION", "us-east-1") or "us-east-1",
            access_key_id=key or None,
            secret_access_key=secret or None,
            gzip_level=level,
            timeout_s=timeout_s,
        )

    def filesystem(self, *, asynchronous: bool):
        """An s3fs filesystem for this lake (sync for scripts and the CLI, async for the sink)."""
        import s3fs
        from aiobotocore.session import AioSession

        # A session of our own: s3fs keeps one it did not create across reconnects, and with
        # it this handler.
        session = AioSession()
        session.register("before-send.s3.PutObject", _no_expect_continue)
        fs = s3fs.S3FileSystem(
            session=session,
            endpoint_url=self.endpoint_url,
            key=self.access_key_id,
            secret=self.secret_access_key,
            client_kwargs={"region_name": self.region},
            config_kwargs={
                "connect_timeout": self.timeout_s,
                "read_timeout": self.timeout_s,
                "retries": {"max_attempts": BOTOCORE_MAX_ATTEMPTS, "mode": "standard"},
                "max_pool_connections": PUT_CONCURRENCY,
            },
            asynchronous=asynchronous,
            skip_instance_cache=True,
        )
        fs.retries = S3FS_RETRIES
        return fs


# --- objects: pure ---------------------------------------------------------------------------


@dataclass(slots=True)
class LakeObject:
    """One object to write: its key and its lines (raw records, in offset order)."""

    key: str
    lines: list[bytes]


def plan_objects(items: Iterable[Item]) -> list[LakeObject]:
    """Group a batch by (topic, partition, date, hour, ip), in offset order; each group is one
    object named after the offsets of its first and its last record in this batch.

    Why no write can lose a record, whoever makes it and whenever it lands: a name fixes the
    bytes. The records of one partition that share a prefix and lie from offset f to offset
    l are the same on every read of the log, so every batch, of any cut, by any sink, that
    writes the name `prefix/topic-p-f-l` writes the same lines (`prepare` is deterministic,
    and `ndjson_gz` has no time in it). Overwriting an object can only put the same bytes
    back; a stale writer (a sink that lost its partitions while its PUT hung, and whose PUT
    lands after the new owner wrote and committed) adds an object, never replaces one.

    What it costs: after a crash between a write and its commit, or a stalled writer's late
    PUT, a record can be in two objects, under names whose ranges overlap. The committed
    batches alone still hold every record once; the extra copies are whole, identical
    records, and readers count each capture once by its `id` (the DuckDB view `captures` in
    tapline/lake.py does). With names of the first offset alone, a late PUT of a shorter cut
    replaced the committed object and lost the records past its end (tests/unit/test_lake.py
    replays both, and random crash schedules).
    """
    groups: dict[tuple[str, int, str], tuple[int, int, list[bytes]]] = {}
    for item in items:
        message = item.message
        prefix, raw = item.prepared
        group = (message.topic, message.partition, prefix)
        found = groups.get(group)
        if found is None:
            groups[group] = (message.offset, message.offset, [raw])
        else:
            found[2].append(raw)
            groups[group] = (found[0], message.offset, found[2])
    return [LakeObject(object_key(prefix, topic, partition, first, last), lines)
            for (topic, partition, prefix), (first, last, lines) in groups.items()]


def ndjson_gz(lines: Sequence[bytes], level: int = 6) -> bytes:
    """The lines as gzip-compressed NDJSON, one line each. The gzip header has no time in it,
    so the same lines always give the same bytes: a rewritten object equals the first.

    zlib-ng rather than the standard zlib: the same format, at level 6 about 2.5 times less
    CPU for objects about 5% larger (docs/decisions.md)."""
    return zlib_ng.compress(b"\n".join([*lines, b""]), level, wbits=16 + zlib_ng.MAX_WBITS)


# --- errors ----------------------------------------------------------------------------------


class BucketMissing(Exception):
    """The lake's bucket does not exist. Creating it is the deployment's job, not the sink's."""

    def __init__(self, settings: LakeSettings) -> None:
        where = settings.endpoint_url or "AWS S3"
        endpoint = f" --endpoint-url {settings.endpoint_url}" if settings.endpoint_url else ""
        super().__init__(
            f"bucket {settings.bucket!r} does not exist at {where}: create it (for example "
            f"`aws s3 mb s3://{settings.bucket}{endpoint}`) or set S3_BUCKET; the lake sink "
            "waits and retries, it does not create buckets")


class ObjectsNotWritten(Exception):
    """Some objects of a batch could not be written; the batch is retried whole."""


# --- the sink --------------------------------------------------------------------------------


def _no_expect_continue(request, **_kwargs) -> None:
    """Send each PUT whole, without `Expect: 100-continue`. botocore asks for it on every PUT;
    for objects this small it only costs a round trip, and when S3 drops the connection
    aiohttp leaves the failed 100-continue wait as an unretrieved task that logs a traceback
    (the request itself fails and is retried as usual). The header is not signed."""
    request.headers.pop("Expect", None)


class LakeSink(Sink):
    """Writes each batch as gzip NDJSON objects to S3 with s3fs's async API.

    Why async s3fs rather than its sync API in threads: the loop is asyncio already, and the
    sync API is itself a wrapper that runs these same coroutines on an event loop in a
    thread of fsspec's, so threads would add a hop per call and nothing else. The PUTs of one
    batch run concurrently (at most PUT_CONCURRENCY), and compression, which releases the
    GIL, runs in a worker thread so the consumer keeps fetching.
    """

    name = "lake"

    def __init__(self, settings: LakeSettings) -> None:
        self.settings = settings
        self._fs = None
        self._client = None

    async def start(self) -> None:
        if self._client is None:
            fs = self.settings.filesystem(asynchronous=True)
            self._client = await fs.set_session()
            self._fs = fs
        try:
            await self._fs._call_s3("head_bucket", Bucket=self.settings.bucket)
        except FileNotFoundError:
            error = BucketMissing(self.settings)
            log.error("%s", error)
            raise error from None
        except PermissionError:
            # Keys that may only PUT objects (s3:PutObject, the least the sink needs) may not
            # ask about the bucket (s3:ListBucket); the first PUT tells whether it is there.
            log.info("lake sink: these credentials may not check bucket %r; going on",
                     self.settings.bucket)
        log.info("lake sink: writing to s3://%s at %s", self.settings.bucket,
                 self.settings.endpoint_url or "AWS S3")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._fs = self._client, None, None
            await client.close()

    def prepare(self, message: ConsumerRecord) -> tuple[str, bytes]:
        value = message.value
        if not value:
            raise InvalidRecord("empty message")
        if b"\n" in value or b"\r" in value:
            # Only whitespace between JSON tokens can hold a raw line break, and the proxy
            # writes none; storing it would split one record over two NDJSON lines.
            raise InvalidRecord("a line break in the record: NDJSON holds one record a line")
        record = decode_json(value)  # validated as `decode` does, without the dataclasses
        return key_prefix(record["started_at"], record["client_ip"]), value

    async def write(self, items: Sequence[Item], fence: Fence = unfenced) -> None:
        assert self._fs is not None, "start() first"
        objects = plan_objects(items)
        level = self.settings.gzip_level
        bodies = await asyncio.to_thread(lambda: [ndjson_gz(o.lines, level) for o in objects])
        await self.put(objects, bodies, fence)

    async def put(self, objects: Sequence[LakeObject], bodies: Sequence[bytes],
                  fence: Fence = unfenced) -> None:
        """PUT compressed objects, at most PUT_CONCURRENCY at once; raises what `write` says."""
        slots = asyncio.Semaphore(PUT_CONCURRENCY)

        async def put(key: str, body: bytes) -> None:
            async with slots:
                fence()  # raises PartitionLost once the partitions are another's
                # One PUT below 100 MB (s3fs's 2 x 50 MB chunk), multipart above: either way
                # the object becomes visible whole, or not at all.
                await self._fs._pipe_file(f"{self.settings.bucket}/{key}", body)

        results = await asyncio.gather(
            *(put(o.key, body) for o, body in zip(objects, bodies, strict=True)),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        for error in failed:
            if isinstance(error, asyncio.CancelledError | PartitionLost):
                raise error
        first = failed[0]
        if isinstance(first, FileNotFoundError):  # s3fs's word for NoSuchBucket
            error = BucketMissing(self.settings)
            log.error("%s", error)
            raise error from first
        raise ObjectsNotWritten(
            f"{len(failed)} of {len(objects)} objects not written to "
            f"s3://{self.settings.bucket}: {type(first).__name__}: {first}") from first
