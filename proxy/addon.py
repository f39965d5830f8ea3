"""The capture addon: every exchange through the reverse proxy becomes one record on Kafka.

Run it with `python -m proxy` (which starts mitmdump with one reverse listener per route), or
by hand: `mitmdump --mode reverse:http://127.0.0.1:5100@5000 --set keep_host_header=true
-s proxy/addon.py`. Settings come from the environment (proxy/settings.py).

Failure policy: the client's request always wins. A capture that cannot be built or shipped
is dropped and counted in tapline_proxy_dropped_total{reason}, never silently, and never at
the cost of an error or a wait for the client. The record is built (and redacted) after the
hook has returned, once mitmproxy has handed the answer to the client: redaction is bounded
(`CAPTURE_REDACT_BUDGET_MS`), but it is never on the client's clock. No log line carries a
query string, a header value or a body: the logs are not redacted.
"""

from __future__ import annotations

import asyncio
import logging
import os

from mitmproxy import ctx, exceptions, http

from capture.endpoint import StartError
from capture.logs import keep_secrets_out_of_logs
from capture.record import shrink
from capture.redact.redactor import Policy, Redactor
from proxy.exchange import build_record
from proxy.kafka_logs import quiet_kafka_client_logs
from proxy.metrics import ProxyMetrics
from proxy.producer import CaptureProducer
from proxy.settings import ProxySettings, SettingsError
from proxy.spool import SpoolUnusable
from proxy.taps import frame_for_http1, tap_request, tap_response, unframe_empty

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
        # Before the listeners open: mitmproxy's lines about a client quote its bytes.
        keep_secrets_out_of_logs(self.redactor)
        self.metrics = ProxyMetrics()
        self.producer = CaptureProducer(self.settings, self.metrics)

    def running(self) -> None:
        assert self.settings and self.metrics and self.producer
        if "keep_host_header" in ctx.options and not ctx.options.keep_host_header:
            log.warning("keep_host_header is off: records will show the Host header mitmproxy "
                        "rewrote, not the client's")
        try:
            self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
        except StartError as e:
            # An error at start: mitmproxy's error check stops the proxy (exit status 1).
            log.error("%s", e)
            return
        quiet_kafka_client_logs()
        keep_secrets_out_of_logs(self.redactor)  # and on any handler added since
        try:
            self.producer.start()
        except SpoolUnusable as e:
            log.error("%s", e)  # mitmproxy's error check stops the proxy (exit status 1)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        frame_for_http1(flow)
        tap_request(flow, self.settings.body_max_bytes)

    def request(self, flow: http.HTTPFlow) -> None:
        unframe_empty(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        tap_response(flow, self.settings.body_max_bytes)

    def response(self, flow: http.HTTPFlow) -> None:
        self.capture_soon(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self.capture_soon(flow)

    def capture_soon(self, flow: http.HTTPFlow) -> None:
        """Capture the flow once mitmproxy has sent the answer on: it does so right after
        this hook, before the event loop runs what is scheduled here."""
        try:
            asyncio.get_running_loop().call_soon(self.capture, flow)
        except RuntimeError:  # no loop (hooks called by hand): now
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
            key, value = self.encode(flow)
        except Exception as e:
            # The exception's text and traceback could quote the exchange: only its type.
            log.error("could not build the capture record of a %s request to %s: %s",
                      flow.request.method, self.app_of(flow), type(e).__name__)
            self.producer.drop("encode_error")
            return
        self.producer.offer(key, value)

    def encode(self, flow: http.HTTPFlow) -> tuple[bytes, bytes]:
        record = build_record(
            flow,
            app=self.app_of(flow),
            body_cap=self.settings.body_max_bytes,
            trusted=self.settings.trusted_proxies,
            params_body_max=self.settings.params_body_max_bytes,
            redactor=self.redactor,
        )
        # A record over the topic's cap loses body bytes until it fits (the sizes and
        # truncated flags still tell the truth); one that cannot fit is dropped.
        return record.client_ip.encode(), shrink(record, self.producer.max_record_bytes)


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
    return Redactor(key, Policy(
        unscanned=settings.unscanned_bodies,
        form_files=settings.form_files,
        emails=settings.redact_emails,
        budget_ms=settings.redact_budget_ms,
        body_max_bytes=settings.body_max_bytes,
        params_body_max_bytes=settings.params_body_max_bytes,
        extra_mark=settings.redact_fields,
        extra_fingerprint=settings.redact_headers,
        safe=settings.redact_keep_names,
    ))


addons = [CaptureAddon()]
