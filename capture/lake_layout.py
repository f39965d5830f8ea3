"""The lake's key layout: where the lake sink writes a record, and where readers look for it.

    <YYYY-MM-DD>/<HH>/<client-ip>/<topic>-<partition>-<first offset>-<last offset>.jsonl.gz

The date and hour are those of the record's `started_at` in UTC; the client IP is in its
canonical text form (IPv6 without a scope id), or `unknown` for anything that is not an IP
address; the offsets are those of the object's first and last record in its partition. Only
[0-9a-f.:] can stand in the IP segment, so no record can make a key leave its prefix.
(Objects written before 2 December 2026 are named after their first offset alone,
`<topic>-<partition>-<first offset>.jsonl.gz`; the readers read both.)

One home for the writer (sinks/lake.py) and the readers (tapline/lake.py, tapline/captures.py):
pure, no I/O. docs/lake.md describes the layout for people.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC

from capture.record import InvalidRecord, canonical_ip, parse_time

SUFFIX = ".jsonl.gz"
UNKNOWN_IP = "unknown"

_IP_SEGMENT = re.compile(r"[0-9a-f.:]{2,39}")
# Kafka's own rule for topic names: these characters, 1 to 249 of them, never "." or "..".
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


@functools.lru_cache(maxsize=1 << 16)
def ip_segment(client_ip: str) -> str:
    """The client IP as a key segment: its canonical text form, IPv6 without a scope id, or
    `unknown` for anything that is not an IP address. Only [0-9a-f.:] can come out, so no
    record can make a key leave its prefix. (Cached: parsing an address costs as much as
    decoding the record, and a client sends many.)"""
    canonical = canonical_ip(client_ip)
    if canonical is None:
        return UNKNOWN_IP
    # A scope id ("%eth0") names an interface of the host that saw the packet: meaningless in
    # the lake, and free text besides.
    address = canonical.partition("%")[0]
    return address if _IP_SEGMENT.fullmatch(address) else UNKNOWN_IP


def key_prefix(started_at: str, client_ip: str) -> str:
    """`YYYY-MM-DD/HH/ip` of a record: the date and hour of `started_at` in UTC."""
    try:
        when = parse_time(started_at).astimezone(UTC)
    except (OverflowError, ValueError) as e:  # InvalidRecord is a ValueError
        raise InvalidRecord(f"started_at {started_at!r} has no UTC date: {e}") from None
    return (f"{when.year:04d}-{when.month:02d}-{when.day:02d}/{when.hour:02d}/"
            f"{ip_segment(client_ip)}")


def object_key(prefix: str, topic: str, partition: int, first_offset: int,
               last_offset: int) -> str:
    """The key of the object holding a group whose records lie from `first_offset` to
    `last_offset` (both its own records)."""
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise ValueError(f"{topic!r} is not a Kafka topic name")
    if not 0 <= int(first_offset) <= int(last_offset):
        raise ValueError(f"offsets {first_offset}..{last_offset} are not a range")
    return f"{prefix}/{topic}-{int(partition)}-{int(first_offset)}-{int(last_offset)}{SUFFIX}"
