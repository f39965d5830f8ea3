"""The Kafka topics tapline uses, made and checked the same way by the proxy and the sinks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from capture.settings import EnvReader, GiB, KiB, MiB

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_MS = 15_000

# CAPTURE_MAX_RECORD_BYTES: the proxy's and the sinks' reading of it, one range. Kafka's
# max.message.bytes is a 32-bit int, which `message_limit` of 1 GiB stays well under.
MAX_RECORD_BYTES = GiB


def max_record_bytes(reader: EnvReader) -> int:
    """CAPTURE_MAX_RECORD_BYTES, as the proxy and the sinks both read it."""
    return reader.integer("CAPTURE_MAX_RECORD_BYTES", 4 * MiB, minimum=64 * KiB,
                          maximum=MAX_RECORD_BYTES)


def message_limit(max_record_bytes: int) -> int:
    """The topic's max.message.bytes and the producer's max_request_size for a record cap.

    Kafka checks the whole batch as written (framing, key, and compression, which can grow an
    incompressible record slightly), so both limits sit a little above the record cap.
    """
    return max_record_bytes + max_record_bytes // 64 + 4096


def record_cap(limit: int) -> int:
    """The inverse of `message_limit`: the largest record cap that fits under `limit`."""
    return max(1024, (limit - 4096) * 64 // 65)


async def ensure_topic(
    bootstrap_servers: str, topic: str, *, partitions: int, max_record_bytes: int
) -> int | None:
    """Create `topic` when absent; return its max.message.bytes (None if Kafka does not say)."""
    async with _admin(bootstrap_servers) as admin:
        try:
            await admin.create_topics([NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=1,
                topic_configs={"max.message.bytes": str(message_limit(max_record_bytes))},
            )])
            log.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        return await _max_message_bytes(admin, topic)


async def partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The topic's partition numbers, in order; empty when the topic does not exist."""
    async with _admin(bootstrap_servers) as admin:
        described = await admin.describe_topics([topic])
    return sorted(p["partition"] for t in described if t["error_code"] == 0
                  for p in t["partitions"])


async def topic_message_limit(bootstrap_servers: str, topic: str) -> int | None:
    """The topic's max.message.bytes; None when the topic does not exist or Kafka does not say."""
    async with _admin(bootstrap_servers) as admin:
        try:
            return await _max_message_bytes(admin, topic)
        except KafkaError:
            return None


@contextlib.asynccontextmanager
async def _admin(bootstrap_servers: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _max_message_bytes(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})]
    )
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "max.message.bytes":
                    return int(entry[1])
    return None
