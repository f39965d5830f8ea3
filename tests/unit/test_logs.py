"""The log filter of the proxy and the sinks: no line quotes the bytes of a request, a query
string or a secret the redactor knows, however many handlers a line passes."""

from __future__ import annotations

import io
import logging

import pytest

from capture.logs import SecretsOutOfLogs, keep_secrets_out_of_logs, scrub_line
from capture.redact import Redactor

HEAD = b"GET /a?code=s3cr3t HTTP/1.1\r\nHost: h\r\nX-Note: hunter2\r\n"


@pytest.mark.parametrize("data", [
    HEAD,                          # b'...'
    HEAD + b"it's",                # b"..." (a quote inside)
    bytearray(HEAD),               # h11's bytearray(b'...')
    HEAD + b"\xff\x00\\\t'\"",       # escapes, both quotes
])
def test_bytes_are_withheld_with_their_size(data):
    line = scrub_line(f"Client closed connection before completing request headers: {data!r}")
    assert "hunter2" not in line and "s3cr3t" not in line and "Host" not in line
    assert f"[{len(data)} bytes withheld]" in line


def test_words_ending_in_b_and_strings_are_not_bytes():
    assert scrub_line("verb 'x' and b-tree b2'x'") == "verb 'x' and b-tree b2'x'"


def test_a_line_through_two_handlers_is_scrubbed_once():
    first, second = io.StringIO(), io.StringIO()
    logger = logging.getLogger("tapline.test.logs")
    logger.propagate = False
    handlers = [logging.StreamHandler(first), logging.StreamHandler(second)]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        keep_secrets_out_of_logs(None, logger)
        keep_secrets_out_of_logs(None, logger)  # once per handler, however often asked
        assert [len(h.filters) for h in handlers] == [1, 1]
        logger.warning("bad line %s to /x?token=abc", b"GET /y?k=v HTTP/1.1")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    expected = "bad line [19 bytes withheld] to /x?[query withheld]\n"
    assert (first.getvalue(), second.getvalue()) == (expected, expected)


def test_a_traceback_is_scrubbed_with_its_line():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(SecretsOutOfLogs(Redactor(b"k")))
    logger = logging.getLogger("tapline.test.traceback")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"Invalid header line: {b'X-Api-Key: hunter2hunter2'!r}")
        except ValueError:
            logger.exception("mitmproxy has crashed!")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "hunter2" not in text
    assert text.startswith("ERROR mitmproxy has crashed!\nTraceback (most recent call last):")
    assert "ValueError: Invalid header line: [25 bytes withheld]" in text
