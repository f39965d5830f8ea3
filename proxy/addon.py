"""The capture addon: every exchange through the reverse proxy becomes one record on Kafka.

Run it with `python -m proxy` (which starts mitmdump with one reverse listener per route), or
by hand: `mitmdump --mode reverse:http://127.0.0.1:5100@5000 --set keep_host_header=true
-s proxy/addon.py`. Settings come from the environment (proxy/settings.py).

Failure policy: the client's request always wins. A capture that cannot be built or shipped
is dropped and counted in tapline_proxy_dropped_total{reason}, never silently, and never at
the cost of an error or a wait for the client.
"""

from __future__ import annotations

import logging
import os

from mitmproxy import ctx, exceptions, http

from capture import encode
from capture.redact import DEFAULT_FIELDS, DEFAULT_HEADERS, Redactor
from proxy.exchange import (
    build_record,
    frame_for_http1,
    tap_request,
    tap_response,
    unframe_empty,
)
from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer, quiet_kafka_client_logs
from proxy.settings import ProxySettings, SettingsError

log = logging.getLogger(__name__)

CAPTURED = "tapline.captured"


class CaptureAddon:
    def __init__(self, settings: ProxySettings | None = None) -> None:
        self.settings: ProxySettings | None = settings
        self.metrics: ProxyMetrics | None = None
        self.producer: CaptureProducer | None = None
        self.apps: dict[int, str] = {}
        self.redactor: Redactor | None = None

    def load(self, loader) -> None:
        if self.settings is None:
            try:
                self.settings = ProxySettings.from_env()
            except SettingsError as e:
                raise exceptions.OptionsError(str(e)) from None
        self.apps = {route.port: route.app for route in self.settings.routes}
        self.redactor = make_redactor(self.settings)
        self.metrics = ProxyMetrics()
        self.producer = CaptureProducer(self.settings, self.metrics)

    def running(self) -> None:
        assert self.settings and self.metrics and self.producer
        if "keep_host_header" in ctx.options and not ctx.options.keep_host_header:
            log.warning("keep_host_header is off: records will show the Host header mitmproxy "
                        "rewrote, not the client's")
        try:
            self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        except OSError as e:
            log.error("metrics endpoint %s:%d unavailable: %s",
                      self.settings.metrics_host, self.settings.metrics_port, e)
        quiet_kafka_client_logs()
        self.producer.start()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        frame_for_http1(flow)
        tap_request(flow, self.settings.body_max_bytes)

    def request(self, flow: http.HTTPFlow) -> None:
        unframe_empty(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        tap_response(flow, self.settings.body_max_bytes)

    def response(self, flow: http.HTTPFlow) -> None:
        self.capture(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.capture(flow)

    async def done(self) -> None:
        if self.producer is not None:
            await self.producer.close(self.settings.shutdown_timeout_s)
        if self.metrics is not None:
            self.metrics.close()

    def app_of(self, flow: http.HTTPFlow) -> str:
        mode = flow.client_conn.proxy_mode
        return self.apps.get(mode.listen_port()) or mode.data or "unknown"

    def capture(self, flow: http.HTTPFlow) -> None:
        """Build, encode and queue the flow's record; once per flow, whatever happens."""
        if flow.metadata.get(CAPTURED):
            return
        flow.metadata[CAPTURED] = True
        self.metrics.captured.inc()
        try:
            key, value = self.encode(flow, self.settings.body_max_bytes)
            # A record over the topic's cap loses body bytes until it fits (the sizes and
            # truncated flags still tell the truth); one that cannot fit is dropped.
            cap = self.settings.body_max_bytes
            while len(value) > self.producer.max_record_bytes and cap > 0:
                cap //= 4
                key, value = self.encode(flow, cap)
        except Exception:
            log.exception("could not build the capture record of %s", flow.request.url)
            self.producer.drop("encode_error")
            return
        self.producer.offer(key, value)

    def encode(self, flow: http.HTTPFlow, body_cap: int) -> tuple[bytes, bytes]:
        record = build_record(
            flow,
            app=self.app_of(flow),
            body_cap=body_cap,
            trusted=self.settings.trusted_proxies,
            params_body_max=self.settings.params_body_max_bytes,
        )
        if self.redactor is not None:
            self.redactor.redact(record)
        return record.client_ip.encode(), encode(record)


def make_redactor(settings: ProxySettings) -> Redactor | None:
    """The redactor the settings ask for; None (and a warning) when redaction is off."""
    if not settings.redact:
        log.warning("CAPTURE_REDACT is off: credentials will be captured in clear text")
        return None
    key = settings.redact_key
    if key is None:
        key = os.urandom(32)
        log.warning("CAPTURE_REDACT_KEY is not set: using a random key, so credential "
                    "fingerprints change when the proxy restarts")
    return Redactor(key, headers=DEFAULT_HEADERS + settings.redact_headers,
                    fields=DEFAULT_FIELDS + settings.redact_fields)


addons = [CaptureAddon()]
