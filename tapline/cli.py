"""`tapline`: the command line. Each command parses, calls a function, and turns known errors
into one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from capture import InvalidRecord, decode


def summary_line(data: bytes) -> str:
    """One capture as a line a person reads: when, app, client, method, path, status, time."""
    try:
        record = decode(data)
    except InvalidRecord as e:
        return f"(not a valid capture record: {e})"
    status = record.response.status_code if record.response else "ERR"
    target = record.request.path + (f"?{record.request.query}" if record.request.query else "")
    line = (f"{record.started_at} {record.app:<6} {record.client_ip:<15} "
            f"{record.request.method:<6} {target} {status} {record.duration_ms:.1f}ms")
    return line + (f" error={record.error!r}" if record.error else "")


async def tail(bootstrap: str, topic: str, *, from_beginning: bool, raw: bool,
               limit: int | None) -> int:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    shown = 0
    try:
        async for message in consumer:
            line = message.value.decode("utf-8", "replace") if raw else summary_line(
                message.value)
            print(line, flush=True)
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        await consumer.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tapline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    tail_cmd = commands.add_parser(
        "tail", help="print captures as they arrive on the topic",
        description="Print captures as they arrive on the topic, one line each.")
    tail_cmd.add_argument("--bootstrap", default=os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), help="Kafka (KAFKA_BOOTSTRAP_SERVERS)")
    tail_cmd.add_argument("--topic", default=os.environ.get("CAPTURE_TOPIC", "http-captures"),
                          help="the capture topic (CAPTURE_TOPIC)")
    tail_cmd.add_argument("--from-beginning", action="store_true",
                          help="start at the oldest capture instead of the next one")
    tail_cmd.add_argument("--json", action="store_true", help="print the records as JSON")
    tail_cmd.add_argument("-n", "--limit", type=int, help="stop after this many captures")
    args = parser.parse_args(argv)
    # Kafka errors are reported in one line below; the client's own log would repeat them.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    try:
        return asyncio.run(tail(args.bootstrap, args.topic, from_beginning=args.from_beginning,
                                raw=args.json, limit=args.limit))
    except KafkaError as e:
        print(f"tapline: Kafka at {args.bootstrap}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
