"""In-memory stand-ins for what the consumer loop (sinks/loop.py) asks of Kafka, for its unit
tests, and a sink whose write hangs. tests/sinks and tests/faults run the loop on a real
broker."""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord, TopicPartition

from sinks.loop import Fence, Sink, unfenced

TP = TopicPartition("t", 0)


class Coordinator:
    generation = 4
    member_id = "sink-a"


class Consumer:
    """What the loop asks of an AIOKafkaConsumer in a group."""

    def __init__(self) -> None:
        self._coordinator = Coordinator()
        self.assigned = {TP}
        self.commits: list[dict] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})

    def highwater(self, _tp) -> None:
        return None

    def expel(self) -> None:
        """What aiokafka does when a heartbeat hears that the group has moved on."""
        self._coordinator.generation, self._coordinator.member_id = -1, ""


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


def records(first: int, n: int) -> list[ConsumerRecord]:
    return [ConsumerRecord(TP.topic, TP.partition, offset, 0, 0, None, b"{}", None, 0, 2, [])
            for offset in range(first, first + n)]
