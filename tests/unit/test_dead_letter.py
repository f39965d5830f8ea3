"""A dead letter cut to fit the dead-letter topic's max.message.bytes (sinks.loop)."""

import hashlib

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from sinks.loop import dead_letter_headers, fit_dead_letter, reference_dead_letter

VALUE = bytes(range(256)) * 400  # 102,400 bytes


def message(value: bytes = VALUE) -> ConsumerRecord:
    return ConsumerRecord("http-captures", 2, 7, 0, 0, b"10.0.0.1", value, None, len(b"10.0.0.1"),
                          len(value), [])


@pytest.mark.parametrize("limit", [700, 2_000, 20_000, 102_000])
def test_a_dead_letter_over_the_limit_is_cut_to_fit_and_says_so(limit):
    headers = dead_letter_headers(message(), "oversized: " + "é" * 2000, "timescale")
    value, headers = fit_dead_letter(b"10.0.0.1", VALUE, headers, limit)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(b"10.0.0.1", value, headers) <= limit
    assert VALUE.startswith(value) and len(value) < len(VALUE) and (limit < 2_000 or value)
    said = dict(headers)
    assert (said["truncated"], said["original_size"], said["original_sha256"]) == (
        b"true", b"102400", hashlib.sha256(VALUE).hexdigest().encode())
    assert said["reason"].decode().startswith("oversized: é") and len(said["reason"]) <= 1024
    assert limit >= 2_000 or len(said["reason"]) <= 200
    assert (said["source_partition"], said["source_offset"]) == (b"2", b"7")


def test_a_dead_letter_that_fits_is_unchanged():
    headers = dead_letter_headers(message(b"small"), "invalid record: x", "lake")
    assert fit_dead_letter(b"k", b"small", headers, 1_000) == (b"small", headers)


def test_a_reference_names_the_original_without_its_bytes():
    said = dict(reference_dead_letter(message(), "x" * 5000, "lake"))
    assert (said["truncated"], said["original_size"], said["source_topic"]) == (
        b"reference", b"102400", b"http-captures")
    assert len(said["reason"]) == 200
