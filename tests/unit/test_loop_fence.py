"""The consumer loop's fence: a batch is written and committed only while this consumer is
still the member, in the generation its records were read in, that holds their partitions.
Kafka's side is an in-memory stand-in for the few things the loop asks of its consumer (the
group's generation, the assignment, commit: tests/unit/loop_fakes.py); tests/faults runs the
same on a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition

from capture.settings import SettingsError
from sinks.loop import ConsumerLoop, PartitionLost, Sink
from sinks.metrics import SinkMetrics
from sinks.settings import LoopSettings
from tests.unit.loop_fakes import TP, Consumer, HangingSink, records


def loop_with(sink: Sink) -> tuple[ConsumerLoop, Consumer]:
    loop = ConsumerLoop(sink, LoopSettings.from_env("lake", {"SINK_RETRY_MAX_BACKOFF_S": "0.01"}),
                        SinkMetrics("lake"))
    consumer = Consumer()
    loop._consumer = consumer
    return loop, consumer


async def test_a_batch_of_an_owned_partition_is_written_and_committed():
    sink = HangingSink()
    sink.release.set()
    loop, consumer = loop_with(sink)
    loop._add(TP, records(0, 5))
    await loop._flush([TP])
    assert sink.written == [[0, 1, 2, 3, 4]]
    assert consumer.commits == [{TP: 5}]


@pytest.mark.parametrize("lose", ["expelled", "new generation", "partition moved"])
async def test_a_partition_lost_while_its_write_hangs_is_neither_written_nor_committed(lose):
    sink = HangingSink()
    loop, consumer = loop_with(sink)
    loop._add(TP, records(0, 5))
    flush = asyncio.create_task(loop._flush([TP]))
    await sink.started.wait()
    if lose == "expelled":
        consumer.expel()
    elif lose == "new generation":  # rejoined: the commit would be taken, for another's partition
        consumer._coordinator.generation += 1
    else:
        consumer.assigned = {TopicPartition("t", 1)}
    sink.release.set()
    await flush  # no error: the loop goes on with its other partitions
    assert sink.written == [] and consumer.commits == []
    assert loop.metrics.value("tapline_sink_lost_batches_total") == 1
    # Nor anything read after it for that partition: a commit would pass over the lost batch.
    loop._add(TP, records(5, 3))
    await loop._flush([TP])
    assert sink.written == [] and consumer.commits == []
    await loop.revoke({TP})  # once revoked, it may come back and be read from its commit
    assert TP not in loop._broken


async def test_a_commit_retried_after_a_rejoin_is_not_sent():
    sink = HangingSink()
    sink.release.set()
    loop, consumer = loop_with(sink)
    loop._add(TP, records(0, 5))

    real_commit = consumer.commit

    async def commit_once_unreachable(offsets) -> None:
        if consumer.commit is commit_once_unreachable:
            consumer.commit = real_commit
            consumer._coordinator.generation += 1  # by the time the retry comes, rejoined
            raise KafkaConnectionError("coordinator unreachable")

    consumer.commit = commit_once_unreachable
    await loop._flush([TP])
    assert sink.written == [[0, 1, 2, 3, 4]]
    assert consumer.commits == []
    assert loop.metrics.value("tapline_sink_lost_batches_total") == 1


def test_the_fence_says_which_partition_and_why():
    loop, consumer = loop_with(HangingSink())
    loop._add(TP, records(0, 1))
    fence = loop._fence({TP: loop._pending[TP]})
    fence()
    consumer.expel()
    with pytest.raises(PartitionLost, match=r"t\[0\] is no longer this consumer's \(read in "
                                            r"generation 4, now out of the group\)"):
        fence()


def test_the_group_timeouts_are_settings_and_the_heartbeat_fits_in_the_session():
    settings = LoopSettings.from_env("lake", {"SINK_SESSION_TIMEOUT_MS": "6000",
                                              "SINK_HEARTBEAT_INTERVAL_MS": "1000"})
    assert (settings.session_timeout_ms, settings.heartbeat_interval_ms) == (6000, 1000)
    with pytest.raises(SettingsError, match="SINK_HEARTBEAT_INTERVAL_MS=3000 must be at most a "
                                            "third of SINK_SESSION_TIMEOUT_MS=6000"):
        LoopSettings.from_env("lake", {"SINK_SESSION_TIMEOUT_MS": "6000"})
