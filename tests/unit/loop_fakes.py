"""In-memory stand-ins for what the consumer loop (sinks/loop.py) asks of Kafka, for its unit
tests: a consumer in a group over per-partition logs, a producer for dead letters, and
sinks that hang or record what they were given. tests/sinks and tests/faults run the loop
on a real broker.

The consumer follows aiokafka's eager protocol: a rebalance first calls the listener's
on_partitions_revoked with the whole old assignment (which assignment() still returns
meanwhile, in the old generation), then moves to a new generation and assignment, and reads
each partition it is given again from its last commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka.errors import ConsumerStoppedError, IllegalStateError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, TopicPartition

from capture.topics import message_limit
from sinks.loop import ConsumerLoop, Fence, Sink, _Listener, unfenced

TP = TopicPartition("t", 0)


def record(tp: TopicPartition, offset: int, value: bytes = b"{}",
           key: bytes | None = None) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, value, None,
                          len(key or b""), len(value), [])


def records(first: int, n: int) -> list[ConsumerRecord]:
    return [record(TP, offset) for offset in range(first, first + n)]


@dataclass
class Coordinator:
    """Where aiokafka keeps the group generation and member id (sinks.loop._generation)."""

    generation: int = 4
    member_id: str = "sink-a"


class Consumer:
    """What the loop asks of an AIOKafkaConsumer in a group.

    `events`, shared with the other fakes of a test, gets ("commit", {partition: offset}) for
    each commit, in order; `commits` has the same offsets by TopicPartition."""

    def __init__(self, assigned: Iterable[TopicPartition] = (TP,),
                 events: list | None = None) -> None:
        self._coordinator = Coordinator()
        self._last_generation = self._coordinator.generation
        self.assigned = set(assigned)
        self.events = [] if events is None else events
        self.logs: dict[TopicPartition, list[ConsumerRecord]] = defaultdict(list)
        self.position: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.polls: list[tuple[int, int | None]] = []  # (timeout_ms, max_records) per getmany
        self.listener = None
        self.subscribed: list[str] = []
        self.stopped = False
        self._arrived = asyncio.Event()

    # -- the test's side --

    def produce(self, tp: TopicPartition, *values: bytes) -> None:
        """Append records to a partition's log."""
        log = self.logs[tp]
        log.extend(record(tp, len(log), value) for value in values)
        self._arrived.set()

    def expel(self) -> None:
        """What aiokafka does when a heartbeat hears that the group has moved on."""
        self._coordinator.generation, self._coordinator.member_id = -1, ""

    async def rebalance(self, assigned: Iterable[TopicPartition]) -> None:
        """A rebalance: revoke everything (the listener waits as long as it takes), then a
        new generation with `assigned`, each partition read from its last commit."""
        if self.listener is not None:
            await self.listener.on_partitions_revoked(set(self.assigned))
        self._last_generation += 1
        self._coordinator.generation = self._last_generation
        self._coordinator.member_id = "sink-a"
        self.assigned = set(assigned)
        self.position = {tp: self.committed.get(tp, 0) for tp in self.assigned}
        if self.listener is not None:
            await self.listener.on_partitions_assigned(set(self.assigned))
        self._arrived.set()

    # -- AIOKafkaConsumer's --

    def subscribe(self, topics, listener=None) -> None:
        self.subscribed, self.listener = list(topics), listener

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.logs[tp]) if tp in self.logs else None

    async def getmany(self, *partitions, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict:
        assert not partitions, "the loop fetches from all its partitions"
        if self.stopped:
            raise ConsumerStoppedError()
        self.polls.append((timeout_ms, max_records))
        await asyncio.sleep(0)  # a fetch lets the other tasks run, even with records ready
        got = self._take(max_records)
        if not got and timeout_ms:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_ms / 1000)
            got = self._take(max_records)
        return got

    def _take(self, max_records: int | None) -> dict[TopicPartition, list[ConsumerRecord]]:
        room = max_records or 500
        got = {}
        for tp in sorted(self.assigned):
            start = self.position.get(tp, 0)
            batch = self.logs[tp][start:start + room]
            if batch:
                got[tp] = batch
                self.position[tp] = start + len(batch)
                room -= len(batch)
            if not room:
                break
        return got

    async def commit(self, offsets) -> None:
        for tp in offsets:
            if tp not in self.assigned:  # as aiokafka's commit says
                raise IllegalStateError(f"Partition {tp} is not assigned")
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        self.commits.append(committed)
        self.committed.update(committed)
        self.events.append(("commit", {tp.partition: offset for tp, offset in committed.items()}))

    async def stop(self) -> None:
        self.stopped = True


@dataclass
class DeadLetter:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


class Producer:
    """What the loop asks of an AIOKafkaProducer: send, whose future says how it went.

    `too_large(value, headers)` says which sends the broker refuses as too large: with
    `early`, send raises MessageSizeTooLargeError itself (over max_request_size), else its
    future does."""

    def __init__(self, events: list | None = None) -> None:
        self.events = [] if events is None else events
        self.sent: list[DeadLetter] = []
        self.refused: list[DeadLetter] = []
        self.too_large: Callable[[bytes, dict[str, bytes]], bool] = lambda value, headers: False
        self.early = False
        self.stopped = False

    async def send(self, topic, value, key=None, headers=None) -> asyncio.Future:
        letter = DeadLetter(topic, key, value, dict(headers or []))
        future = asyncio.get_running_loop().create_future()
        if self.too_large(letter.value, letter.headers):
            self.refused.append(letter)
            if self.early:
                raise MessageSizeTooLargeError()
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.sent.append(letter)
            self.events.append(("dead", int(letter.headers["source_partition"]),
                                int(letter.headers["source_offset"])))
            future.set_result(None)
        return future

    async def stop(self) -> None:
        self.stopped = True


def plug(loop: ConsumerLoop, consumer: Consumer, producer: Producer) -> None:
    """Make `loop.run()` find its topic at once and connect to these fakes, as `_connect`
    would to Kafka: the consumer subscribed with the loop's rebalance listener."""
    async def there() -> bool:
        return True

    async def connect() -> None:
        consumer.subscribe([loop.settings.topic], listener=_Listener(loop))
        loop._consumer, loop._producer = consumer, producer
        loop._dlq_limit = message_limit(loop.settings.max_record_bytes)

    loop._wait_for_topic = there
    loop._connect = connect


class HangingSink(Sink):
    """A sink whose write hangs until released, and checks the fence before it 'PUTs'."""

    name = "lake"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.written: list[list[int]] = []

    def prepare(self, message: ConsumerRecord) -> bytes:
        return message.value

    async def write(self, items, fence: Fence = unfenced) -> None:
        self.started.set()
        await self.release.wait()
        fence()
        self.written.append([item.message.offset for item in items])
