"""The consumer loop both sinks stand on: a consumer group, batches, commits, dead letters.

Delivery is at least once: offsets are committed only after everything before them is
durably written (or dead-lettered), and the sinks make that exactly once in effect by writing
idempotently. Failure policy, in order:

- a record that can never be written (not JSON, unknown version, invalid fields, or refused by
  the store as data) goes to the dead-letter topic with its reason and original bytes; a dead
  letter larger than the dead-letter topic takes is cut to fit (headers say so, with the
  original's size and SHA-256), and one the broker still refuses as too large goes as a
  reference alone (no payload): a dead letter is never retried forever for its size;
- any other write error is taken as transient (store down, connection reset): the batch is
  retried with backoff and the offsets do not move; the sink never skips data to stay alive;
- on SIGTERM/SIGINT the pending batch gets one try to finish; if it cannot, it is abandoned
  uncommitted and re-read on the next start.

One batch is written at a time, in the background: while it is written (and committed), the
loop goes on fetching and preparing the next one until the partitions that are due hold a
whole batch, so decoding and the store's work overlap. Batches stay in offset order: the next
write starts only after the last one is committed. When a write fails for good (the process
is stopping), nothing after it is written or committed: what was prepared behind it is
re-read on the next start.

A batch belongs to the group generation it was read in. Before each PUT (the sink asks) and
before each commit the loop checks that this consumer is still that generation's member and
still holds the batch's partitions; when it is not (its write hung past the group's
timeouts and another member took them over), it drops the batch, writes and commits nothing
more for those partitions, and goes on: their new owner reads them again from the last
commit. A check cannot stop a PUT already in flight: the sinks' writes are made so that a late
one cannot replace what another wrote (docs/lake.md, "Fencing").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from capture import InvalidRecord
from capture.topics import ensure_topic, message_limit, partitions, record_cap, topic_message_limit
from sinks.metrics import SinkMetrics
from sinks.settings import LoopSettings

log = logging.getLogger(__name__)

WRITING_POLL_MS = 10  # how long a fetch may wait while a batch is being written
FETCH_STEP_RECORDS = 500  # records fetched and prepared between two looks at the write
TOPIC_WAIT_S = 0.5  # how often a sink looks for a topic that is not there yet
REASON_MAX_BYTES = 1024  # a dead letter's reason header, cut past this
REFERENCE_REASON_BYTES = 200  # the reason of a dead letter with no room for its payload

Headers = list[tuple[str, bytes]]


def dead_letter_headers(message: ConsumerRecord, reason: str, sink: str) -> Headers:
    """What a dead letter says about itself: why, which sink, where the original lies."""
    return [
        ("reason", _cut_utf8(reason, REASON_MAX_BYTES)),
        ("sink", sink.encode()),
        ("source_topic", message.topic.encode()),
        ("source_partition", str(message.partition).encode()),
        ("source_offset", str(message.offset).encode()),
    ]


def fit_dead_letter(key: bytes | None, value: bytes, headers: Headers,
                    limit: int) -> tuple[bytes, Headers]:
    """The dead letter's value and headers, cut to fit a topic whose max.message.bytes is
    `limit`: unchanged when it fits, else the value's first bytes with `truncated: true`,
    `original_size` and `original_sha256` (hex) added."""
    if DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers) <= limit:
        return value, headers
    headers = [*headers, *_original(value, b"true")]
    # Headroom for the varints that grow with the length of the value.
    room = limit - DefaultRecordBatchBuilder.estimate_size_in_bytes(key, b"", headers) - 16
    if room < 0:  # not even the headers fit: a shorter reason, and no payload
        headers = [(k, v[:REFERENCE_REASON_BYTES].decode("utf-8", "ignore").encode()
                    if k == "reason" else v) for k, v in headers]
    return value[:max(0, room)], headers


def reference_dead_letter(message: ConsumerRecord, reason: str, sink: str) -> Headers:
    """The headers of a dead letter without payload: what names the original and why."""
    headers = dead_letter_headers(message, reason, sink)
    headers[0] = ("reason", _cut_utf8(reason, REFERENCE_REASON_BYTES))
    return [*headers, *_original(message.value or b"", b"reference")]


def _original(value: bytes, truncated: bytes) -> Headers:
    return [("truncated", truncated), ("original_size", str(len(value)).encode()),
            ("original_sha256", hashlib.sha256(value).hexdigest().encode())]


def _cut_utf8(text: str, max_bytes: int) -> bytes:
    data = text.encode("utf-8", "replace")
    return data if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore").encode()


class PermanentWriteError(Exception):
    """The store refused the data itself: retrying the same items cannot succeed."""


class PartitionLost(Exception):
    """This consumer no longer owns a partition of the batch: write and commit nothing more."""


Fence = Callable[[], None]  # raises PartitionLost once the batch's partitions are another's


def unfenced() -> None:
    """The fence of a write outside any consumer group (tests, tools)."""


@dataclass(slots=True)
class Item:
    """One consumed record, prepared for its sink."""

    message: ConsumerRecord
    prepared: Any


class Sink(ABC):
    """What a sink supplies to the loop. `prepare` is pure and runs as each record arrives
    (decode, use, drop); `write` makes a batch durable or raises."""

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, migrate: whatever must happen before the first write."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    def prepare(self, message: ConsumerRecord) -> Any:
        """The record in the form `write` wants; raises InvalidRecord for a poison record."""

    @abstractmethod
    async def write(self, items: Sequence[Item], fence: Fence = unfenced) -> None:
        """Write durably; PermanentWriteError when the data is refused, anything else is
        taken as transient. Call `fence()` before each request that writes: it raises
        PartitionLost, to be let through, once the batch's partitions are another's."""


@dataclass
class _Pending:
    items: list[Item] = field(default_factory=list)
    dead: list[tuple[ConsumerRecord, str]] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0
    last_offset: int = -1
    generation: int | None = None  # the group generation its first record was read in

    def __bool__(self) -> bool:
        return self.last_offset >= 0


class Stopping(Exception):
    """Raised inside a retry when the loop was asked to stop."""


class ConsumerLoop:
    def __init__(self, sink: Sink, settings: LoopSettings, metrics: SinkMetrics) -> None:
        self.sink = sink
        self.settings = settings
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self._pending: dict[TopicPartition, _Pending] = {}
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dlq_limit = 0  # the dead-letter topic's max.message.bytes, learnt on connect
        self._summary = {"batches": 0, "written": 0, "dead_lettered": 0}
        self._last_summary = time.monotonic()
        self._writing: asyncio.Task | None = None  # the batch being written, at most one
        # Partitions whose write failed for good: nothing more is written or committed for
        # them, so no commit can pass over their lost batch; they are re-read from the last
        # commit, after a restart or by their next owner.
        self._broken: set[TopicPartition] = set()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Consume until `stop()`; returns after a clean shutdown."""
        s = self.settings
        if not await self._with_retry("find the topic", self._wait_for_topic):
            return  # stopped before the topic was there
        await self._with_retry("connect to Kafka", self._connect)
        await self._with_retry("start the sink", self.sink.start)
        consumer = self._consumer
        assert consumer is not None
        log.info("%s sink consuming %s as group %s", self.sink.name, s.topic, s.group_id)
        try:
            if not hasattr(getattr(consumer, "_coordinator", None), "generation"):
                raise RuntimeError("this aiokafka keeps no group generation where the sink "
                                   "looks for it (sinks/loop.py, _generation): the sink "
                                   "cannot fence its writes; use the aiokafka of "
                                   "requirements.txt")
            try:
                while not self.stopping.is_set():
                    if self._writing is not None and (self._writing.done()
                                                      or self._next_batch_ready()):
                        await self._finish_write()  # a batch ahead is enough: wait for the store
                    if self._writing is None:
                        # The next batch goes to the store before anything more is fetched and
                        # prepared: the store is the slower part, it should never wait on us.
                        due = self._due()
                        if due:
                            self._writing = asyncio.create_task(self._flush(due))
                    writing = self._writing is not None
                    batches = await consumer.getmany(
                        # While a write runs, come back soon to start the next one when it ends.
                        timeout_ms=min(s.poll_timeout_ms, WRITING_POLL_MS) if writing
                        else s.poll_timeout_ms,
                        # Small steps: the loop comes back to start the next write soon after one
                        # ends, rather than after preparing a whole batch.
                        max_records=min(s.batch_max_records, FETCH_STEP_RECORDS),
                    )
                    for tp, messages in batches.items():
                        self._add(tp, messages)
                    self._log_summary()
                await self._finish_write()
            except Stopping:
                # Asked to stop while the batch in flight was being retried: it is
                # abandoned uncommitted (said in _flush_taken), its partitions are
                # broken, and the stop goes on as any stop does.
                pass
            # One try to finish what is pending; what fails is re-read on the next start.
            with contextlib.suppress(Stopping):
                await self._flush(list(self._pending), final=True)
        finally:
            if self._writing is not None and not self._writing.done():
                self._writing.cancel()
                with contextlib.suppress(BaseException):
                    await self._writing
            await self._shutdown()

    async def _finish_write(self) -> None:
        """Wait for the batch being written; its error, if any, ends the loop."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing  # raises what the write raised

    def _next_batch_ready(self) -> bool:
        """Whether the partitions that are due hold a whole batch: fetching more now would
        only make the next batch bigger than the settings say."""
        s = self.settings
        due = [self._pending[tp] for tp in self._due()]
        return (sum(len(p.items) + len(p.dead) for p in due) >= s.batch_max_records
                or any(p.nbytes >= s.batch_max_bytes for p in due))

    # --- connecting ------------------------------------------------------------------------

    async def _wait_for_topic(self) -> bool:
        """Wait until the topic exists; False when asked to stop first.

        The proxy makes the capture topic, with its partition count and message cap
        (capture/topics.py); a consumer that subscribed first would have the broker make it
        with its own defaults (one partition) where it creates topics on demand, so the sink
        waits.
        """
        s = self.settings
        said = False
        while not self.stopping.is_set():
            if await partitions(s.kafka_bootstrap_servers, s.topic):
                if said:
                    log.info("%s sink: topic %s is there", self.sink.name, s.topic)
                return True
            if not said:
                log.info("%s sink: topic %s does not exist yet; waiting for the proxy to "
                         "create it", self.sink.name, s.topic)
                said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), TOPIC_WAIT_S)
        return False

    async def _connect(self) -> None:
        s = self.settings
        # A dead-letter topic we create takes any message the topic holds, even one over our
        # own cap (a producer with a larger cap wrote it). One that exists already may take
        # less: its real limit is what dead letters are cut to (fit_dead_letter).
        limit = await topic_message_limit(s.kafka_bootstrap_servers, s.topic)
        dlq_cap = max(s.max_record_bytes, record_cap(limit) if limit else 0)
        dlq_limit = await ensure_topic(s.kafka_bootstrap_servers, s.dlq_topic, partitions=1,
                                       max_record_bytes=dlq_cap)
        self._dlq_limit = min(dlq_limit or message_limit(dlq_cap), message_limit(dlq_cap))
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers, acks="all",
            max_request_size=message_limit(dlq_cap) + 4096,
            # A batch of several dead letters must fit the topic's limit as well as each one.
            max_batch_size=min(16384, self._dlq_limit),
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=message_limit(s.max_record_bytes),
            fetch_max_bytes=max(64 << 20, message_limit(s.max_record_bytes)),
            # The rebalance timeout is the session timeout too (aiokafka's default): a member
            # whose revoke callback waits longer than that on a write loses its partitions.
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
        )
        try:
            await producer.start()
            await consumer.start()
        except BaseException:
            await producer.stop()
            await consumer.stop()
            raise
        consumer.subscribe([s.topic], listener=_Listener(self))
        self._producer, self._consumer = producer, consumer

    async def _shutdown(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self.sink.close()
        self._log_summary(force=True)

    # --- batching --------------------------------------------------------------------------

    def _add(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> None:
        pending = self._pending.setdefault(tp, _Pending())
        if not pending:
            pending.since = time.monotonic()
            pending.generation = self._generation()
        for message in messages:
            self.metrics.consumed.inc()
            size, cap = len(message.value or b""), self.settings.max_record_bytes
            if size > cap:
                pending.dead.append(
                    (message, f"oversized: {size} bytes, over CAPTURE_MAX_RECORD_BYTES ({cap})"))
            else:
                try:
                    pending.items.append(Item(message, self.sink.prepare(message)))
                except InvalidRecord as e:
                    pending.dead.append((message, f"invalid record: {e}"))
            pending.nbytes += size
            pending.last_offset = message.offset

    def _due(self) -> list[TopicPartition]:
        s = self.settings
        now = time.monotonic()
        return [
            tp for tp, p in self._pending.items()
            if p and (len(p.items) + len(p.dead) >= s.batch_max_records
                      or p.nbytes >= s.batch_max_bytes
                      or (now - p.since) * 1000 >= s.batch_max_age_ms)
        ]

    async def _flush(self, partitions: list[TopicPartition], *, final: bool = False) -> None:
        """Write, dead-letter and commit the pending batches of these partitions."""
        async with self._lock:
            taken = {tp: self._pending.pop(tp) for tp in partitions
                     if self._pending.get(tp) and tp not in self._broken}
            if not taken:
                return
            try:
                await self._flush_taken(taken, final=final)
            except PartitionLost as e:
                # Not an error of ours: the group gave the partitions to another member while
                # this batch was being written. Nothing more is written or committed for them
                # here (until they are revoked and, maybe, given back).
                self._broken.update(taken)
                self.metrics.lost_batches.inc()
                log.warning("%s: %s; dropping a batch of %d records uncommitted, their new "
                            "owner reads them again", self.sink.name, e,
                            sum(len(p.items) + len(p.dead) for p in taken.values()))
            except BaseException:
                self._broken.update(taken)
                raise

    # --- ownership -------------------------------------------------------------------------

    def _generation(self) -> int | None:
        """The group generation this consumer is a member of; None when it is in none (it
        was never let in, or the group expelled it: aiokafka then forgets its member id).
        aiokafka keeps these on its coordinator and says them nowhere else."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        if not getattr(coordinator, "member_id", "") or not isinstance(generation, int):
            return None
        return generation if generation >= 0 else None

    def _fence(self, taken: dict[TopicPartition, _Pending]) -> Fence:
        """A check that this consumer still owns the partitions of the batch `taken`, in the
        generation their records were read in; raises PartitionLost when it does not."""
        def fence() -> None:
            assert self._consumer is not None
            now = self._generation()
            assigned = self._consumer.assignment()
            for tp, pending in taken.items():
                if now is None or now != pending.generation or tp not in assigned:
                    raise PartitionLost(
                        f"{tp.topic}[{tp.partition}] is no longer this consumer's (read in "
                        f"generation {pending.generation}, now "
                        f"{'out of the group' if now is None else f'generation {now}'})")
        return fence

    async def _flush_taken(self, taken: dict[TopicPartition, _Pending], *, final: bool) -> None:
        started = time.monotonic()
        items = [item for p in taken.values() for item in p.items]
        dead = [d for p in taken.values() for d in p.dead]
        fence = self._fence(taken)
        try:
            fence()
            refused = await self._write(items, fence, final=final) if items else []
            dead += refused
            if dead:
                fence()
                await self._with_retry("send dead letters", self._send_dead, dead,
                                       final=final)
        except Stopping:
            log.warning("abandoning a batch of %d records uncommitted", len(items))
            raise
        await self._commit({tp: p.last_offset + 1 for tp, p in taken.items()}, fence)
        written = len(items) - len(refused)
        self.metrics.written.inc(written)
        self.metrics.dead_lettered.inc(len(dead))
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        self._summary["batches"] += 1
        self._summary["dead_lettered"] += len(dead)
        self._summary["written"] += written
        log.debug("%s: wrote %d records, %d dead letters, in %.3f s", self.sink.name,
                  written, len(dead), time.monotonic() - started)
        self._update_lag(taken)

    async def _write(self, items: list[Item], fence: Fence, *,
                     final: bool) -> list[tuple[ConsumerRecord, str]]:
        """Write items; split a refused batch to find the records the store refuses."""
        try:
            await self._with_retry("write", self.sink.write, items, fence, final=final,
                                   permanent=PermanentWriteError)
            return []
        except PermanentWriteError as e:
            if len(items) == 1:
                return [(items[0].message, f"refused by {self.sink.name}: {e}")]
        middle = len(items) // 2
        return (await self._write(items[:middle], fence, final=final)
                + await self._write(items[middle:], fence, final=final))

    async def _with_retry(self, what: str, fn, *args, final: bool = False,
                          permanent: type[Exception] | None = None) -> Any:
        delay = 0.1
        while True:
            try:
                return await fn(*args)
            except (asyncio.CancelledError, PartitionLost):
                raise
            except Exception as e:
                if permanent is not None and isinstance(e, permanent):
                    raise
                if final or self.stopping.is_set():
                    raise Stopping from e
                self.metrics.retries.inc()
                log.warning("%s: could not %s (%s); retrying in %.1f s",
                            self.sink.name, what, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, self.settings.retry_max_backoff_s)

    async def _send_dead(self, dead: list[tuple[ConsumerRecord, str]]) -> None:
        assert self._producer is not None
        futures = []
        for message, reason in dead:
            value, headers = fit_dead_letter(
                message.key, message.value or b"",
                dead_letter_headers(message, reason, self.sink.name), self._dlq_limit)
            futures.append(await self._send_one(message, value, headers))
        results = await asyncio.gather(*futures, return_exceptions=True)
        too_large = []
        for (message, reason), result in zip(dead, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                too_large.append((message, reason))
            elif isinstance(result, BaseException):
                raise result
        # The broker refused a dead letter as too large even cut (its limit shrank since we
        # asked, or counts differently): the reference alone, rather than retry forever.
        references = [await self._send_one(message, b"",
                                           reference_dead_letter(message, reason, self.sink.name))
                      for message, reason in too_large]
        refused = set()
        for (message, _reason), result in zip(too_large, await asyncio.gather(
                *references, return_exceptions=True), strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                refused.add(id(message))
                log.error("%s: %s refuses even a reference to %s[%d]@%d as too large; the "
                          "record stays only in its own topic", self.sink.name,
                          self.settings.dlq_topic, message.topic, message.partition,
                          message.offset)
            elif isinstance(result, BaseException):
                raise result
        for message, reason in dead:
            if id(message) not in refused:
                log.warning("%s: dead-lettered %s[%d]@%d: %s", self.sink.name, message.topic,
                            message.partition, message.offset, reason)

    async def _send_one(self, message: ConsumerRecord, value: bytes,
                        headers: Headers) -> asyncio.Future:
        """Send one dead letter; a failure, even one found before sending, comes as the
        future's exception."""
        assert self._producer is not None
        try:
            return await self._producer.send(self.settings.dlq_topic, value, key=message.key,
                                             headers=headers)
        except MessageSizeTooLargeError as e:  # over max_request_size, found before sending
            future = asyncio.get_running_loop().create_future()
            future.set_exception(e)
            return future

    async def _commit(self, offsets: dict[TopicPartition, int], fence: Fence) -> None:
        consumer = self._consumer
        assert consumer is not None
        commit = {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}

        async def fenced_commit() -> None:
            # Before every try: aiokafka sends a commit with the generation it is in at that
            # moment, so a commit retried after this consumer rejoined the group would be
            # taken for partitions that are now another's.
            fence()
            await consumer.commit(commit)

        try:
            # Kafka unreachable for a moment: retry, rather than go on past an uncommitted
            # offset (a crash then would read again all that came after it).
            await self._with_retry("commit", fenced_commit, permanent=CommitFailedError)
        except (CommitFailedError, Stopping) as e:
            # The group moved on (a rebalance): the new owner re-reads from the last commit,
            # and idempotent writes make the repeat harmless.
            log.warning("%s: commit failed (%s); the records will be read again",
                        self.sink.name, e)

    def _update_lag(self, taken: dict[TopicPartition, _Pending]) -> None:
        assert self._consumer is not None
        for tp, pending in taken.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self.metrics.lag(tp.partition, max(0, highwater - pending.last_offset - 1))

    def _log_summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_summary >= 60:
            log.info("%s: %d batches, %d records written, %d dead-lettered", self.sink.name,
                     self._summary["batches"], self._summary["written"],
                     self._summary["dead_lettered"])
            self._last_summary = now

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        """Partitions leave this consumer: commit what is done for them, first."""
        with contextlib.suppress(Stopping):
            await self._flush([tp for tp in revoked if tp in self._pending], final=True)
        for tp in revoked:
            self._pending.pop(tp, None)  # not written: the new owner reads them again
            self._broken.discard(tp)  # and if it comes back here, it is re-read from its commit


class _Listener(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked) -> None:
        await self.loop.revoke(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("%s: assigned %s", self.loop.sink.name,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)))
