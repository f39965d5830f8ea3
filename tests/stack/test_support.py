"""The topic helpers the tests and the benches share, against a real Kafka."""

from __future__ import annotations

import uuid

from stack.support import produce, topic_exists, topic_size


def test_a_topic_that_is_not_there_has_nothing_on_it(kafka):
    topic = f"absent-{uuid.uuid4().hex[:8]}"
    assert not topic_exists(kafka.bootstrap_servers, topic)
    assert topic_size(kafka.bootstrap_servers, topic) == 0


def test_the_size_counts_every_partition(kafka):
    topic = f"sized-{uuid.uuid4().hex[:8]}"
    # Keys spread the messages over the three partitions; the size is their sum.
    produce(kafka.bootstrap_servers, topic,
            [(f"key-{i}".encode(), b"value") for i in range(30)], partitions=3)
    assert topic_exists(kafka.bootstrap_servers, topic)
    assert topic_size(kafka.bootstrap_servers, topic) == 30
