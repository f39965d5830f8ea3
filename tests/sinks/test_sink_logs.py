"""No line of a sink's log carries a header value or a query string from a record: a
dead-lettered record's reason is logged, and reasons are built from what the record holds."""

from __future__ import annotations

import uuid

import orjson
import pytest

from stack import factories
from stack.support import produce, read_topic_with_headers, wait_until
from tests.sinks.conftest import SinkProcess, count_rows
from tests.sinks.test_timescale import sink_env

pytestmark = pytest.mark.integration


def test_dead_letter_lines_quote_no_header_value_or_query(kafka, database, tmp_path):
    topic = f"sink-logs-{uuid.uuid4().hex[:8]}"
    in_header, in_query = (f"opensesame{uuid.uuid4().hex[:10]}" for _ in range(2))
    good = factories.encoded(3)
    bad_pair = orjson.loads(good[0][1])
    bad_pair["request"]["headers"].append(["X-Note", in_header, "extra"])
    bad_time = orjson.loads(good[1][1]) | {"started_at": f"/login?code={in_query}"}
    poison = [(b"k1", orjson.dumps(bad_pair)), (b"k2", orjson.dumps(bad_time))]
    produce(kafka.bootstrap_servers, topic, good[2:] + poison)
    sink = SinkProcess("timescale", tmp_path,
                       sink_env(kafka.bootstrap_servers, topic, database)).start()
    try:
        dead = read_topic_with_headers(kafka.bootstrap_servers, f"{topic}.dlq", expect=2)
        reasons = {key: headers["reason"] for key, _v, headers in dead}
        assert "request.headers[" in reasons[b"k1"] and in_header not in reasons[b"k1"]
        wait_until(lambda: count_rows(database) == 1, what="the good row")
        log = wait_until(lambda: sink.log.read_text().count("dead-lettered") >= 2
                         and sink.log.read_text(), timeout=15, what="the dead-letter lines")
    finally:
        sink.stop()
    assert "not a [name, value] pair" in log and "not an ISO 8601 time" in log
    assert in_header not in log and in_query not in log
