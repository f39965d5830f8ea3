"""The consumer loop (sinks/loop.py) run whole, against in-memory Kafka (tests/unit/loop_fakes.py):
when offsets are committed, one write in flight, dead letters and refused-batch splitting,
transient errors, rebalances, broken partitions and stopping. tests/sinks runs both sinks on a
real broker; test_loop_fence.py has the fence's own cases."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from capture import InvalidRecord
from sinks.loop import ConsumerLoop, Fence, PartitionLost, PermanentWriteError, Sink, unfenced
from sinks.metrics import SinkMetrics
from sinks.settings import LoopSettings
from tests.unit.loop_fakes import TP, Consumer, Producer, plug

TP1 = TopicPartition("t", 1)
Batch = list[tuple[int, int]]  # (partition, offset) of each record of a write


class Store(Sink):
    """A sink that says in `events` when each write starts ("write") and ends ("written"),
    and fails as told: `faults` are raised by the next writes in turn, a batch holding a
    record of `refuse` is refused as data, one holding a record of `lose` raises
    PartitionLost (once). With `hold`, each write waits for a permit of `permits`."""

    name = "timescale"

    def __init__(self, events: list) -> None:
        self.events = events
        self.prepared: list[int] = []
        self.attempts: list[Batch] = []
        self.written: list[Batch] = []
        self.faults: list[Exception] = []
        self.refuse: set[tuple[int, int]] = set()
        self.lose: set[tuple[int, int]] = set()
        self.hold = False
        self.permits = asyncio.Semaphore(0)
        self.in_flight = self.most_in_flight = 0

    def prepare(self, message: ConsumerRecord) -> bytes:
        self.prepared.append(message.offset)
        if message.value.startswith(b"invalid"):
            raise InvalidRecord("not JSON")
        return message.value

    async def write(self, items, fence: Fence = unfenced) -> None:
        batch = [(item.message.partition, item.message.offset) for item in items]
        self.attempts.append(batch)
        self.events.append(("write", batch))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold:
                await self.permits.acquire()
            fence()
            if self.faults:
                raise self.faults.pop(0)
            if lost := self.lose.intersection(batch):
                self.lose -= lost
                raise PartitionLost("t[0] is another's now")
            if refused := sorted(self.refuse.intersection(batch)):
                raise PermanentWriteError(f"row {refused[0][1]} violates a check constraint")
            self.written.append(batch)
            self.events.append(("written", batch))
        finally:
            self.in_flight -= 1

    def let_go(self) -> None:
        """Writes run freely from now on, the one waiting (there is one at most) included."""
        self.hold = False
        self.permits.release()


@dataclass
class Rig:
    loop: ConsumerLoop
    consumer: Consumer
    producer: Producer
    sink: Store
    events: list
    task: asyncio.Task | None = field(default=None)

    def start(self) -> None:
        self.task = asyncio.create_task(self.loop.run())

    async def stop(self) -> None:
        self.loop.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 2)

    def value(self, metric: str) -> float:
        return self.loop.metrics.value(f"tapline_sink_{metric}_total")


def rig(records: int = 3, assigned=(TP,), **env: str) -> Rig:
    """A loop of the TimescaleDB sink whose batches close at `records` records (never by
    age), on fakes of Kafka."""
    settings = LoopSettings.from_env("timescale", {
        "CAPTURE_TOPIC": "t", "SINK_BATCH_MAX_RECORDS": str(records),
        "SINK_BATCH_MAX_AGE_MS": "3600000", "SINK_POLL_TIMEOUT_MS": "5",
        "SINK_RETRY_MAX_BACKOFF_S": "0.01", **env})
    events: list = []
    consumer, producer, sink = Consumer(assigned, events), Producer(events), Store(events)
    loop = ConsumerLoop(sink, settings, SinkMetrics("timescale"))
    plug(loop, consumer, producer)
    return Rig(loop, consumer, producer, sink, events)


async def until(condition: Callable[[], bool], what: str, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {seconds} s")
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Time for the loop to go round a few times (a fetch while writing waits 10 ms)."""
    await asyncio.sleep(0.05)


def values(n: int, first: int = 0) -> list[bytes]:
    return [b'{"n": %d}' % i for i in range(first, first + n)]


def offsets(writes: list[Batch], partition: int) -> list[int]:
    return [offset for batch in writes for p, offset in batch if p == partition]


def commits_of(rig: Rig) -> list[dict[int, int]]:
    return [event[1] for event in rig.events if event[0] == "commit"]


def assert_commits_follow_writes(events: list) -> None:
    """Each commit moves its partitions forward, and only past records already written or
    dead-lettered: every offset below it, since the partition's previous commit."""
    done: dict[int, set[int]] = {}
    last: dict[int, int] = {}
    for event in events:
        if event[0] == "written":
            for partition, offset in event[1]:
                done.setdefault(partition, set()).add(offset)
        elif event[0] == "dead":
            done.setdefault(event[1], set()).add(event[2])
        elif event[0] == "commit":
            for partition, offset in event[1].items():
                assert offset > last.get(partition, 0), (event, last)
                missing = set(range(last.get(partition, 0), offset)) - done.get(partition, set())
                assert not missing, f"{event} passes over unwritten offsets {sorted(missing)}"
                last[partition] = offset


# --- 1. commit order -------------------------------------------------------------------------


async def test_offsets_are_committed_after_their_write_in_order_one_write_at_a_time():
    r = rig(records=3, assigned=(TP, TP1))
    r.consumer.produce(TP, *values(10))
    r.consumer.produce(TP1, *values(7))
    r.start()
    await until(lambda: r.value("consumed") == 17, "all read")
    await settle()
    # Batches are written as they fill; what is left of each partition is less than a batch,
    # not due: it waits for the stop, which writes what is pending.
    before = {p: offsets(r.sink.written, p) for p in (0, 1)}
    assert 10 - 3 < len(before[0]) < 10 and 7 - 3 < len(before[1]) < 7
    await r.stop()
    assert r.sink.written[-1] == [(0, o) for o in range(len(before[0]), 10)] + [
        (1, o) for o in range(len(before[1]), 7)]
    assert offsets(r.sink.written, 0) == list(range(10))
    assert offsets(r.sink.written, 1) == list(range(7))
    assert_commits_follow_writes(r.events)
    assert r.consumer.committed == {TP: 10, TP1: 7}
    # One write at a time, each committed before the next starts.
    steps = [event[0] for event in r.events]
    assert steps == ["write", "written", "commit"] * (len(steps) // 3)
    assert r.sink.most_in_flight == 1
    assert {max_records for _, max_records in r.consumer.polls} == {3}
    assert r.value("written") == 17 and r.value("write_retries") == 0


async def test_while_a_slow_write_runs_the_next_batch_is_read_but_waits_for_its_commit():
    r = rig(records=3)
    r.sink.hold = True
    r.consumer.produce(TP, *values(12))
    r.start()
    await until(lambda: r.value("consumed") == 6, "the next batch read")
    await settle()
    # One batch ahead is read and prepared, no more; nothing is committed yet.
    assert r.value("consumed") == 6
    assert r.sink.attempts == [[(0, 0), (0, 1), (0, 2)]]
    assert r.consumer.commits == []
    r.sink.permits.release()
    await until(lambda: len(r.sink.attempts) == 2, "the second write started")
    assert r.events == [("write", [(0, 0), (0, 1), (0, 2)]), ("written", [(0, 0), (0, 1), (0, 2)]),
                        ("commit", {0: 3}), ("write", [(0, 3), (0, 4), (0, 5)])]
    r.sink.let_go()
    await until(lambda: r.consumer.committed.get(TP) == 12, "all committed")
    await r.stop()
    assert r.sink.written == [[(0, o), (0, o + 1), (0, o + 2)] for o in range(0, 12, 3)]
    assert commits_of(r) == [{0: 3}, {0: 6}, {0: 9}, {0: 12}]
    assert_commits_follow_writes(r.events)
    assert r.sink.most_in_flight == 1


async def test_a_batch_due_by_age_waits_for_the_write_in_flight():
    r = rig(records=100, SINK_BATCH_MAX_AGE_MS="0")  # every batch is due as soon as read
    r.sink.hold = True
    r.consumer.produce(TP, *values(4))
    r.start()
    await until(lambda: r.sink.attempts, "the first write started")
    r.consumer.produce(TP, *values(4, 4))
    await until(lambda: r.value("consumed") == 8, "read while the first is written")
    await settle()
    # Due, but short of a whole batch: the loop goes on reading and starts no second write.
    assert r.sink.attempts == [[(0, o) for o in range(4)]] and r.consumer.commits == []
    r.sink.permits.release()
    await until(lambda: len(r.sink.attempts) == 2, "the second write started")
    assert [event[0] for event in r.events] == ["write", "written", "commit", "write"]
    assert r.events[-1] == ("write", [(0, o) for o in range(4, 8)])
    r.sink.let_go()
    await until(lambda: r.consumer.committed.get(TP) == 8, "all committed")
    await r.stop()
    assert commits_of(r) == [{0: 4}, {0: 8}] and r.sink.most_in_flight == 1


# --- 2. dead letters -------------------------------------------------------------------------


async def test_a_refused_batch_is_split_until_the_refused_record_alone_is_dead_lettered():
    r = rig(records=8)
    r.sink.refuse = {(0, 5)}
    r.consumer.produce(TP, *values(8))
    r.start()
    await until(lambda: r.consumer.commits, "committed")
    await r.stop()
    batch = [(0, o) for o in range(8)]
    assert r.sink.attempts == [batch, batch[:4], batch[4:], batch[4:6], batch[4:5], batch[5:6],
                               batch[6:]]
    assert r.sink.written == [batch[:4], batch[4:5], batch[6:]]
    [letter] = r.producer.sent
    assert (letter.topic, letter.key, letter.value) == ("t.dlq", None, b'{"n": 5}')
    assert letter.headers == {
        "reason": b"refused by timescale: row 5 violates a check constraint",
        "sink": b"timescale", "source_topic": b"t", "source_partition": b"0",
        "source_offset": b"5"}
    assert r.consumer.commits == [{TP: 8}]
    assert r.events[-2:] == [("dead", 0, 5), ("commit", {0: 8})]
    assert_commits_follow_writes(r.events)
    assert (r.value("written"), r.value("dead_lettered"), r.value("write_retries")) == (7, 1, 0)


async def test_invalid_and_oversized_records_are_dead_lettered_and_the_rest_written():
    big = b"x" * (64 * 1024 + 1)
    r = rig(records=4, CAPTURE_MAX_RECORD_BYTES=str(64 * 1024))
    r.consumer.produce(TP, b"{}", b"invalid!", big, b"{}")
    r.start()
    await until(lambda: r.consumer.commits, "committed")
    await r.stop()
    assert r.sink.prepared == [0, 1, 3]  # an oversized record is not even decoded
    assert r.sink.written == [[(0, 0), (0, 3)]]
    assert [(d.value, d.headers["reason"], d.headers["source_offset"])
            for d in r.producer.sent] == [
        (b"invalid!", b"invalid record: not JSON", b"1"),
        (big, b"oversized: 65537 bytes, over CAPTURE_MAX_RECORD_BYTES (65536)", b"2")]
    assert r.consumer.commits == [{TP: 4}]
    assert_commits_follow_writes(r.events)
    assert (r.value("written"), r.value("dead_lettered")) == (2, 2)


async def test_a_batch_of_dead_letters_alone_is_committed_without_a_write():
    r = rig(records=2)
    r.consumer.produce(TP, b"invalid 1", b"invalid 2")
    r.start()
    await until(lambda: r.consumer.commits, "committed")
    await r.stop()
    assert r.sink.attempts == []
    assert [d.headers["source_offset"] for d in r.producer.sent] == [b"0", b"1"]
    assert r.events == [("dead", 0, 0), ("dead", 0, 1), ("commit", {0: 2})]


@pytest.mark.parametrize("refused", ["by the broker", "before sending", "even its reference"])
async def test_a_dead_letter_refused_as_too_large_goes_as_a_reference(refused):
    r = rig(records=1)
    r.producer.early = refused == "before sending"
    if refused == "even its reference":
        r.producer.too_large = lambda value, headers: True
    else:  # a reference has no payload
        r.producer.too_large = lambda value, headers: bool(value)
    r.consumer.produce(TP, b"invalid record")
    r.start()
    await until(lambda: r.consumer.commits, "committed")
    await r.stop()
    # Never retried for its size: the record is committed past either way.
    assert r.consumer.commits == [{TP: 1}] and r.value("write_retries") == 0
    assert [d.value for d in r.producer.refused][:1] == [b"invalid record"]
    if refused == "even its reference":
        assert r.producer.sent == [] and len(r.producer.refused) == 2
        return
    [reference] = r.producer.sent
    assert reference.value == b""
    assert (reference.headers["truncated"], reference.headers["original_size"],
            reference.headers["original_sha256"], reference.headers["source_offset"]) == (
        b"reference", b"14", hashlib.sha256(b"invalid record").hexdigest().encode(), b"0")
    assert reference.headers["reason"] == b"invalid record: not JSON"


# --- 3. transient errors ---------------------------------------------------------------------


async def test_a_write_that_fails_for_a_while_is_retried_and_committed_after_it_succeeds():
    r = rig(records=3)
    r.sink.faults = [ConnectionResetError("store down"), ConnectionResetError("store down")]
    commits_at_each_try = []
    write = r.sink.write

    async def watched(items, fence=unfenced):
        commits_at_each_try.append(list(r.consumer.commits))
        await write(items, fence)

    r.sink.write = watched
    r.consumer.produce(TP, *values(3))
    r.start()
    await until(lambda: r.consumer.commits, "committed")
    await r.stop()
    batch = [(0, 0), (0, 1), (0, 2)]
    assert r.sink.attempts == [batch] * 3
    assert commits_at_each_try == [[], [], []]
    assert r.sink.written == [batch]
    assert r.consumer.commits == [{TP: 3}]
    assert (r.value("write_retries"), r.value("written")) == (2, 3)


# --- 4. rebalances ---------------------------------------------------------------------------


async def test_a_revoke_waits_for_the_write_in_flight_then_commits_what_is_pending():
    r = rig(records=3, assigned=(TP, TP1))
    r.sink.hold = True
    r.consumer.produce(TP, *values(5))
    r.consumer.produce(TP1, *values(1))
    r.start()
    await until(lambda: r.value("consumed") == 6, "all read")
    await settle()
    assert r.sink.attempts == [[(0, 0), (0, 1), (0, 2)]]  # what is pending is not due
    rebalance = asyncio.create_task(r.consumer.rebalance({TP1}))
    await settle()
    assert not rebalance.done() and r.consumer.commits == []  # the revoke waits for the write
    r.sink.let_go()
    await asyncio.wait_for(rebalance, 2)
    assert commits_of(r) == [{0: 3}, {0: 5, 1: 1}]
    assert [sorted(batch) for batch in r.sink.written] == [[(0, 0), (0, 1), (0, 2)],
                                                           [(0, 3), (0, 4), (1, 0)]]
    # TP is another's now; TP1 goes on from its commit.
    r.consumer.produce(TP, *values(2, 5))
    r.consumer.produce(TP1, *values(3, 1))
    await until(lambda: r.consumer.committed[TP1] == 4, "TP1 committed")
    await r.stop()
    assert offsets(r.sink.written, 0) == list(range(5))
    assert offsets(r.sink.written, 1) == list(range(4))
    assert commits_of(r) == [{0: 3}, {0: 5, 1: 1}, {1: 4}]
    assert_commits_follow_writes(r.events)


async def test_records_read_during_a_revoke_are_dropped_and_read_again_from_the_commit():
    r = rig(records=3)
    r.sink.hold = True
    r.consumer.produce(TP, *values(5))
    r.start()
    await until(lambda: r.value("consumed") == 5, "all read")
    rebalance = asyncio.create_task(r.consumer.rebalance({TP}))  # given back at once
    r.sink.permits.release()
    await until(lambda: len(r.sink.attempts) == 2, "the revoke's write started")
    assert r.sink.attempts[1] == [(0, 3), (0, 4)]
    r.consumer.produce(TP, *values(2, 5))  # read while the revoke's write runs
    await until(lambda: r.value("consumed") == 7, "read during the revoke")
    r.sink.let_go()
    await asyncio.wait_for(rebalance, 2)
    assert commits_of(r) == [{0: 3}, {0: 5}]
    await until(lambda: r.value("consumed") == 9, "read again after the rebalance")
    await r.stop()
    assert r.sink.written == [[(0, 0), (0, 1), (0, 2)], [(0, 3), (0, 4)], [(0, 5), (0, 6)]]
    assert commits_of(r) == [{0: 3}, {0: 5}, {0: 7}]
    assert r.value("lost_batches") == 0


async def test_a_member_expelled_while_its_write_hangs_drops_the_batch_and_reads_it_again():
    r = rig(records=3)
    r.sink.hold = True
    r.consumer.produce(TP, *values(3))
    r.start()
    await until(lambda: r.sink.attempts, "the write started")
    r.consumer.expel()  # the heartbeat heard that the group moved on; a rejoin follows
    rebalance = asyncio.create_task(r.consumer.rebalance({TP}))
    await settle()
    assert not rebalance.done()  # the revoke waits for the write in flight
    r.sink.let_go()
    await asyncio.wait_for(rebalance, 2)
    assert r.sink.written == [] and r.consumer.commits == []
    assert r.value("lost_batches") == 1
    # Given back in the new generation: read again from the last commit, written once.
    await until(lambda: r.consumer.commits, "committed in the new generation")
    await r.stop()
    assert r.sink.attempts == [[(0, 0), (0, 1), (0, 2)]] * 2
    assert r.sink.written == [[(0, 0), (0, 1), (0, 2)]]
    assert commits_of(r) == [{0: 3}]
    assert r.value("consumed") == 6


# --- 5. broken partitions --------------------------------------------------------------------


async def test_a_partition_whose_batch_was_lost_is_left_alone_until_revoked():
    r = rig(records=2, assigned=(TP, TP1))
    r.sink.lose = {(0, 0)}
    r.consumer.produce(TP, *values(2))
    r.start()
    await until(lambda: r.value("lost_batches") == 1, "the batch lost")
    r.consumer.produce(TP, *values(4, 2))
    r.consumer.produce(TP1, *values(4))
    await until(lambda: r.consumer.committed.get(TP1) == 4, "TP1 committed")
    await until(lambda: r.value("consumed") == 10, "all read")
    await settle()
    # TP's later records are read, but neither written nor committed: a commit would pass
    # over its lost batch. TP1 goes on.
    assert offsets(r.sink.attempts, 0) == [0, 1]
    assert r.sink.written == [[(1, 0), (1, 1)], [(1, 2), (1, 3)]]
    assert all(0 not in commit for commit in commits_of(r))
    # Revoked and given back: read again from its last commit (none), and written.
    await r.consumer.rebalance({TP, TP1})
    await until(lambda: r.consumer.committed.get(TP) == 6, "TP committed")
    await r.stop()
    assert offsets(r.sink.written, 0) == list(range(6))
    assert offsets(r.sink.written, 1) == list(range(4))
    assert Counter(offsets(r.sink.attempts, 0)) == Counter([0, 1, *range(6)])
    assert_commits_follow_writes(r.events)
    assert r.value("lost_batches") == 1


# --- 6. stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("fails", [False, True])
async def test_on_stop_the_pending_batch_gets_one_try(fails):
    r = rig(records=10)
    r.sink.faults = [ConnectionResetError("store down")] * 2 if fails else []
    r.consumer.produce(TP, *values(3))
    r.start()
    await until(lambda: r.value("consumed") == 3, "all read")
    await settle()
    assert r.sink.attempts == []  # three records are no batch of ten yet
    await r.stop()  # returns: a failed last try is no error
    batch = [(0, 0), (0, 1), (0, 2)]
    assert r.sink.attempts == [batch]
    assert r.value("write_retries") == 0
    if fails:  # abandoned uncommitted: read again on the next start
        assert r.sink.written == [] and r.consumer.commits == []
    else:
        assert r.sink.written == [batch] and r.consumer.commits == [{TP: 3}]
    assert r.consumer.stopped and r.producer.stopped


async def test_a_stop_while_a_write_is_being_retried_is_a_clean_stop():
    # The store is down: the batch in flight is retried with backoff when SIGTERM comes. The
    # retry stops, the batch is abandoned uncommitted, nothing behind it is written, and
    # run() returns as from any stop: the process exits 0, no traceback.
    r = rig(records=3)
    r.sink.faults = [ConnectionResetError("store down")] * 50
    r.consumer.produce(TP, *values(5))
    r.start()
    await until(lambda: len(r.sink.attempts) >= 2, "the write retried")
    await r.stop()
    assert r.sink.written == [] and r.consumer.commits == []
    assert {batch[0] for batch in r.sink.attempts} == {(0, 0)}  # only the first batch tried
    assert r.consumer.stopped and r.producer.stopped
