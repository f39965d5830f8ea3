"""The proxy's settings, read from the environment in this one place.

Every name here appears, with the same meaning, in the README's configuration table and in
docker-compose.yml. Defaults suit one host: apps on 5100/5101 behind the proxy on 5000/5001.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from config import EnvReader, SettingsError
from proxy.exchange import Network, parse_networks

__all__ = [
    "DEFAULT_ROUTES", "ProxySettings", "Route", "SettingsError", "parse_listen_hosts",
    "parse_routes",
]

DEFAULT_ROUTES = "app_a=http://127.0.0.1:5100@5000,app_b=http://127.0.0.1:5101@5001"

_ROUTE = re.compile(r"^(?P<app>[A-Za-z0-9_.-]+)=(?P<upstream>https?://[^@\s]+)@(?P<port>\d+)$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


@dataclass(frozen=True, slots=True)
class Route:
    """One reverse-proxy listener: clients reach `app` on `port`, which forwards to `upstream`."""

    app: str
    upstream: str
    port: int

    @property
    def mode(self) -> str:
        """The listener as a mitmproxy `--mode` spec (on mitmdump's `--listen-host`)."""
        return f"reverse:{self.upstream}@{self.port}"

    def mode_on(self, host: str) -> str:
        """The listener on `host` as a mitmproxy `--mode` spec. mitmproxy splits the host
        from the port at the last colon, so an IPv6 address goes in without brackets."""
        return f"reverse:{self.upstream}@{host}:{self.port}"


def parse_routes(spec: str) -> tuple[Route, ...]:
    """`name=URL@PORT,...` (mitmproxy's reverse-mode syntax with a name in front)."""
    routes = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        match = _ROUTE.match(part)
        if match is None:
            raise SettingsError(
                f"PROXY_ROUTES: {part!r} is not NAME=http://HOST:PORT@LISTEN_PORT"
            )
        port = int(match["port"])
        if not 0 < port < 65536:
            raise SettingsError(f"PROXY_ROUTES: listen port {port} is out of range")
        routes.append(Route(match["app"], match["upstream"].rstrip("/"), port))
    if not routes:
        raise SettingsError("PROXY_ROUTES names no route")
    ports = [route.port for route in routes]
    if len(set(ports)) != len(ports):
        raise SettingsError(f"PROXY_ROUTES: a listen port is used twice ({spec})")
    return tuple(routes)


def parse_listen_hosts(spec: str) -> tuple[str, ...]:
    """Comma-separated addresses (or host names) for every listener to bind, in order.

    One socket per address: `127.0.0.1,::1` serves IPv4 and IPv6 loopback clients alike.
    """
    hosts = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            host = str(ipaddress.ip_address(part))
        except ValueError:
            if not _HOSTNAME.match(part) or ".." in part:
                raise SettingsError(
                    f"PROXY_LISTEN_HOST: {part!r} is neither an IP address nor a host name"
                ) from None
            host = part
        if host in hosts:
            raise SettingsError(f"PROXY_LISTEN_HOST: {host} is listed twice")
        hosts.append(host)
    if not hosts:
        raise SettingsError("PROXY_LISTEN_HOST names no address")
    return tuple(hosts)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything the proxy can be told. Sizes are bytes, times as their names say."""

    routes: tuple[Route, ...]
    listen_hosts: tuple[str, ...]
    workers: int
    event_loop: str
    kafka_bootstrap_servers: str
    topic: str
    topic_partitions: int
    max_record_bytes: int
    body_max_bytes: int
    params_body_max_bytes: int
    queue_max_bytes: int
    shutdown_timeout_s: float
    linger_ms: int
    max_batch_bytes: int
    compression: str | None
    trusted_proxies: tuple[Network, ...]
    metrics_host: str
    metrics_port: int
    log_connections: bool
    redact: bool
    redact_key: bytes | None
    redact_headers: tuple[str, ...]
    redact_fields: tuple[str, ...]
    redact_keep_names: tuple[str, ...]
    redact_emails: bool
    redact_budget_ms: float
    unscanned_bodies: str
    form_files: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxySettings:
        env = os.environ if env is None else env
        reader = EnvReader(env)
        compression = reader.text("KAFKA_COMPRESSION", "zstd")
        if compression not in ("none", "gzip", "lz4", "zstd", "snappy"):
            raise SettingsError(
                f"KAFKA_COMPRESSION={compression!r}: use none, gzip, lz4, zstd or snappy"
            )
        try:
            trusted = parse_networks(reader.text("PROXY_TRUSTED_PROXIES", ""))
        except ValueError as e:
            raise SettingsError(f"PROXY_TRUSTED_PROXIES: {e}") from None
        settings = cls(
            routes=parse_routes(reader.text("PROXY_ROUTES", DEFAULT_ROUTES)),
            # Blank is the default, loopback, never "every interface".
            listen_hosts=parse_listen_hosts(reader.text("PROXY_LISTEN_HOST", "") or "127.0.0.1"),
            workers=reader.integer("PROXY_WORKERS", default_workers(), minimum=1),
            event_loop=_choice(reader, "PROXY_EVENT_LOOP", ("uvloop", "asyncio")),
            kafka_bootstrap_servers=reader.text("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            topic=reader.text("CAPTURE_TOPIC", "http-captures"),
            topic_partitions=reader.integer("CAPTURE_TOPIC_PARTITIONS", 6, minimum=1),
            max_record_bytes=reader.integer("CAPTURE_MAX_RECORD_BYTES", 4 << 20, minimum=64 << 10),
            body_max_bytes=reader.integer("CAPTURE_BODY_MAX_BYTES", 1 << 20, minimum=0),
            params_body_max_bytes=reader.integer("CAPTURE_PARAMS_BODY_MAX_BYTES", 16 << 10,
                                                 minimum=0),
            queue_max_bytes=reader.integer("CAPTURE_QUEUE_MAX_BYTES", 64 << 20, minimum=1),
            shutdown_timeout_s=reader.number("CAPTURE_SHUTDOWN_TIMEOUT_S", 5.0),
            linger_ms=reader.integer("KAFKA_LINGER_MS", 25, minimum=0),
            max_batch_bytes=reader.integer("KAFKA_MAX_BATCH_BYTES", 4 << 20, minimum=1024),
            compression=None if compression == "none" else compression,
            trusted_proxies=trusted,
            metrics_host=reader.text("PROXY_METRICS_HOST", "127.0.0.1"),
            metrics_port=reader.integer("PROXY_METRICS_PORT", 9101, minimum=0),
            log_connections=reader.flag("PROXY_LOG_CONNECTIONS", False),
            redact=reader.flag("CAPTURE_REDACT", True),
            redact_key=reader.text("CAPTURE_REDACT_KEY", "").encode() or None,
            redact_headers=_names(reader.text("CAPTURE_REDACT_HEADERS", "")),
            redact_fields=_names(reader.text("CAPTURE_REDACT_FIELDS", "")),
            redact_keep_names=_names(reader.text("CAPTURE_REDACT_KEEP_NAMES", "")),
            redact_emails=reader.flag("CAPTURE_REDACT_EMAILS", True),
            redact_budget_ms=reader.number("CAPTURE_REDACT_BUDGET_MS", 100.0),
            unscanned_bodies=_choice(reader, "CAPTURE_UNSCANNED_BODIES", ("withhold", "keep")),
            form_files=_choice(reader, "CAPTURE_FORM_FILES", ("withhold", "keep")),
        )
        if settings.queue_max_bytes < settings.max_record_bytes:
            raise SettingsError(
                "CAPTURE_QUEUE_MAX_BYTES must hold at least one record of "
                f"CAPTURE_MAX_RECORD_BYTES ({settings.max_record_bytes})"
            )
        return settings


def default_workers() -> int:
    """PROXY_WORKERS when unset: the CPUs this process may run on (its affinity mask, which
    a container's cpuset narrows; a CPU quota does not show here, so set it there)."""
    return len(os.sched_getaffinity(0))


def _choice(reader: EnvReader, name: str, choices: tuple[str, ...]) -> str:
    value = reader.text(name, choices[0]).lower() or choices[0]
    if value not in choices:
        raise SettingsError(f"{name}={value!r}: use {' or '.join(choices)}")
    return value


def _names(spec: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in spec.split(",") if name.strip())
