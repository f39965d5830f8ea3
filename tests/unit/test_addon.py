"""The addon's hooks, called with mitmproxy's test context; no Kafka is reached here."""

import asyncio
import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from capture import decode
from proxy.addon import CaptureAddon
from proxy.settings import ProxySettings

ENV = {
    "PROXY_ROUTES": "app_a=http://127.0.0.1:5100@5000,app_b=http://127.0.0.1:5101@5001",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens: the producer never starts
    "CAPTURE_BODY_MAX_BYTES": "1024",
    "CAPTURE_MAX_RECORD_BYTES": "65536",
    "CAPTURE_QUEUE_MAX_BYTES": "200000",
    "PROXY_METRICS_PORT": "0",
}


def make_flow(port=5000, body=b"", status=200):
    request = tutils.treq(method=b"POST", path=b"/jobs", content=body,
                          headers=http.Headers([(b"Host", b"127.0.0.1:%d" % port)]))
    flow = tflow.tflow(req=request, resp=tutils.tresp(status_code=status))
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:http://127.0.0.1:9@{port}")
    return flow


def queued_records(addon):
    return [decode(value) for _key, value, _t in addon.producer.backlog.queue]


@pytest.fixture
def addon():
    addon = CaptureAddon(ProxySettings.from_env(ENV))
    with taddons.context(addon):
        yield addon


async def test_one_record_per_flow_with_app_from_listener(addon):
    with taddons.context(addon) as tctx:
        await tctx.cycle(addon, make_flow(5000))
        await tctx.cycle(addon, make_flow(5001, status=401))
        await asyncio.sleep(0)  # the records are built once the hook has returned
    records = queued_records(addon)
    assert [(r.app, r.response.status_code) for r in records] == [("app_a", 200), ("app_b", 401)]
    assert addon.metrics.value("tapline_proxy_captures_total") == 2


async def test_key_is_the_client_ip(addon):
    flow = make_flow()
    flow.client_conn.peername = ("2001:db8::5", 1234, 0, 0)
    addon.response(flow)
    await asyncio.sleep(0)
    key, _value, _t = addon.producer.backlog.queue[0]
    assert key == b"2001:db8::5"


async def test_the_record_is_built_after_the_hook_returns(addon):
    # mitmproxy sends the answer on right after the response hook; the capture work (record,
    # redaction, encoding) waits for the event loop's next turn, off the client's clock.
    addon.response(make_flow())
    assert len(addon.producer.backlog.queue) == 0
    await asyncio.sleep(0)
    assert len(addon.producer.backlog.queue) == 1


def test_error_after_response_is_not_a_second_record(addon):
    flow = make_flow()
    addon.response(flow)
    flow.error = tflow.terr("client disconnected")
    addon.error(flow)
    assert len(addon.producer.backlog.queue) == 1


def test_failed_exchange_is_captured(addon):
    flow = tflow.tflow(err=True)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@5001")
    addon.error(flow)
    (record,) = queued_records(addon)
    assert record.response is None and record.error == "error"


def test_unknown_listener_is_named_after_its_upstream(addon):
    flow = make_flow(port=6000)
    addon.response(flow)
    assert queued_records(addon)[0].app == "http://127.0.0.1:9"


def test_record_over_the_topic_cap_loses_body_bytes_not_the_record():
    env = dict(ENV, CAPTURE_BODY_MAX_BYTES=str(1 << 20), CAPTURE_MAX_RECORD_BYTES=str(70_000))
    addon = CaptureAddon(ProxySettings.from_env(env))
    with taddons.context(addon):
        addon.response(make_flow(body=b"x" * 500_000))
    (record,) = queued_records(addon)
    assert record.request.body_size == 500_000
    assert record.request.body_truncated
    assert 0 < len(record.request.body) < 70_000


def test_full_queue_drops_and_counts():
    addon = CaptureAddon(ProxySettings.from_env(dict(ENV, CAPTURE_QUEUE_MAX_BYTES="65536")))
    with taddons.context(addon):
        for _ in range(60):
            addon.response(make_flow(body=b"y" * 1000))  # about 1.5 KB a record
    queued = len(addon.producer.backlog.queue)
    dropped = addon.metrics.value("tapline_proxy_dropped_total", reason="queue_full")
    assert queued >= 1 and dropped >= 1
    assert queued + dropped == 60
    assert addon.producer.backlog.queued_bytes <= 65536


def test_broken_flow_is_dropped_and_counted_not_raised(addon):
    flow = make_flow()
    flow.client_conn.peername = None  # nothing to build a client from
    addon.response(flow)
    assert addon.metrics.value("tapline_proxy_dropped_total", reason="encode_error") == 1


def test_bad_setting_is_an_options_error(monkeypatch):
    monkeypatch.setenv("CAPTURE_BODY_MAX_BYTES", "lots")
    addon = CaptureAddon()
    with (
        pytest.raises(exceptions.OptionsError, match="CAPTURE_BODY_MAX_BYTES"),
        taddons.context(addon),
    ):
        pass


async def test_shutdown_without_kafka_counts_every_capture():
    addon = CaptureAddon(ProxySettings.from_env(dict(ENV, CAPTURE_SHUTDOWN_TIMEOUT_S="0.3")))
    with taddons.context(addon):
        addon.running()
        for _ in range(5):
            addon.response(make_flow())
        await asyncio.sleep(0.1)
        await addon.done()
        m = addon.metrics
        assert m.value("tapline_proxy_captures_total") == 5
        assert m.value("tapline_proxy_produced_total") == 0
        assert m.dropped_total() == 5
        assert m.value("tapline_proxy_kafka_errors_total", error="KafkaConnectionError") >= 1
        addon.response(make_flow())  # after shutdown: dropped, counted
        await asyncio.sleep(0)
        assert m.value("tapline_proxy_dropped_total", reason="shutdown") == 6


def test_http2_body_without_length_is_framed_for_the_app_and_not_recorded(addon):
    flow = make_flow(body=b"")
    flow.request.http_version = "HTTP/2.0"
    flow.request.raw_content = None
    addon.requestheaders(flow)
    assert flow.request.headers["transfer-encoding"] == "chunked"
    flow.request.stream(b"z" * 10)  # the body streams through the tap
    addon.request(flow)
    assert flow.request.headers["transfer-encoding"] == "chunked"
    addon.response(flow)
    (record,) = queued_records(addon)
    assert all(name.lower() != "transfer-encoding" for name, _ in record.request.headers)
    assert (record.request.body, record.request.body_size) == ("z" * 10, 10)


def test_http2_request_without_body_reaches_the_app_as_sent(addon):
    flow = make_flow(body=b"")
    flow.request.http_version = "HTTP/2.0"
    flow.request.raw_content = None
    addon.requestheaders(flow)
    flow.request.raw_content = b""  # the stream ended with the headers
    addon.request(flow)
    assert "transfer-encoding" not in flow.request.headers


def test_log_lines_lose_query_strings_and_secrets():
    from capture.logs import SecretsOutOfLogs
    from capture.redact import Redactor

    record = logging.LogRecord("mitmproxy", logging.WARNING, __file__, 1,
                               "bad request %s from %s", ("GET /x?token=abc HTTP/1.1",
                                                          "Authorization: Bearer t0k3n-value"),
                               None)
    assert SecretsOutOfLogs(Redactor(b"k")).filter(record)
    line = record.getMessage()
    assert "token=abc" not in line and "t0k3n-value" not in line
    assert line.startswith("bad request GET /x?[query withheld] HTTP/1.1 from ")


def test_an_error_that_quotes_the_client_is_redacted_in_the_record(addon):
    flow = tflow.tflow(err=True)
    flow.error = tflow.terr("HTTP/1 protocol error: bad line b'GET /?password=hunter2 HTTP'")
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9@5001")
    addon.error(flow)
    (record,) = queued_records(addon)
    assert "hunter2" not in record.error and "password=" in record.error
