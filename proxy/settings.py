"""The proxy's settings, read from the environment in this one place.

Every name here appears, with the same meaning, in docs/configuration.md's table and in
docker-compose.yml. Defaults suit one host: apps on 5100/5101 behind the proxy on 5000/5001.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from capture.settings import (
    DEFAULT_BOOTSTRAP_SERVERS,
    DEFAULT_TOPIC,
    EnvReader,
    GiB,
    KiB,
    MiB,
    SettingsError,
)
from capture.topics import MAX_RECORD_BYTES, max_record_bytes
from proxy.exchange import Network, parse_networks
from proxy.spool import folder_of

__all__ = [
    "DEFAULT_ROUTES", "ProxySettings", "Route", "SettingsError", "parse_listen_hosts",
    "parse_routes",
]

MAX_WORKERS = 256
MAX_PARTITIONS = 10_000
MAX_BODY_BYTES = GiB
MAX_WAIT_S = 3600.0  # the longest flush or budget a setting may ask for

DEFAULT_ROUTES = "app_a=http://127.0.0.1:5100@5000,app_b=http://127.0.0.1:5101@5001"

_APP = re.compile(r"[A-Za-z0-9_.-]+")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
# Upstreams are often container names, which may hold underscores (compose's `app_a`).
_UPSTREAM_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


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
    """`name=URL@PORT,...` (mitmproxy's reverse-mode syntax with a name in front).

    The upstream is a scheme, a host and a port, nothing more: mitmproxy's reverse mode would
    drop a path or query without a word, and credentials in it would be sent to the app and
    shown in every listing of the routes. Errors name the route by its number and name, never
    by its text, which may hold such credentials.
    """
    routes = []
    for number, part in enumerate((p.strip() for p in spec.split(",") if p.strip()), 1):
        name, equals, rest = part.partition("=")
        upstream, at, listen = rest.rpartition("@")
        where = f"PROXY_ROUTES: route {number}"
        if _APP.fullmatch(name):
            where += f" ({name})"
        if not (equals and at and _APP.fullmatch(name) and listen.isdigit()):
            raise SettingsError(f"{where} is not NAME=http://HOST:PORT@LISTEN_PORT")
        port = int(listen)
        if not 0 < port < 65536:
            raise SettingsError(f"{where}: listen port {port} is out of range")
        routes.append(Route(name, _upstream(upstream, where), port))
    if not routes:
        raise SettingsError("PROXY_ROUTES names no route")
    ports = [route.port for route in routes]
    if len(set(ports)) != len(ports):
        raise SettingsError(f"PROXY_ROUTES: a listen port is used twice ({sorted(ports)})")
    return tuple(routes)


def _upstream(url: str, where: str) -> str:
    """`url` as `scheme://host:port`, or an error that says what is wrong without the URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SettingsError(f"{where}: the upstream's port is not a number from 1 to 65535"
                            ) from None
    if parts.scheme not in ("http", "https") or not url.startswith(f"{parts.scheme}://"):
        raise SettingsError(f"{where}: the upstream must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SettingsError(f"{where}: the upstream must not hold credentials (user:password@)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise SettingsError(f"{where}: the upstream takes no path, query or fragment "
                            "(mitmproxy's reverse mode forwards the client's path as it is)")
    host = parts.hostname
    if not host or any(c.isspace() for c in url):
        raise SettingsError(f"{where}: the upstream names no host")
    if port == 0:
        raise SettingsError(f"{where}: the upstream's port is not a number from 1 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(f"{where}: the upstream's host is not an address") from None
    elif not _UPSTREAM_HOST.match(host) or ".." in host:
        raise SettingsError(f"{where}: the upstream's host is not a host name or address")
    return f"{parts.scheme}://{parts.netloc}"


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
    spool_dir: Path | None
    spool_max_bytes: int
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
            workers=reader.integer("PROXY_WORKERS", default_workers(), minimum=1,
                                   maximum=MAX_WORKERS),
            event_loop=reader.choice("PROXY_EVENT_LOOP", ("uvloop", "asyncio")),
            kafka_bootstrap_servers=reader.text("KAFKA_BOOTSTRAP_SERVERS",
                                                DEFAULT_BOOTSTRAP_SERVERS),
            topic=reader.text("CAPTURE_TOPIC", DEFAULT_TOPIC),
            topic_partitions=reader.integer("CAPTURE_TOPIC_PARTITIONS", 6, minimum=1,
                                            maximum=MAX_PARTITIONS),
            max_record_bytes=max_record_bytes(reader),
            body_max_bytes=reader.integer("CAPTURE_BODY_MAX_BYTES", 1 * MiB, minimum=0,
                                          maximum=MAX_BODY_BYTES),
            params_body_max_bytes=reader.integer("CAPTURE_PARAMS_BODY_MAX_BYTES", 16 * KiB,
                                                 minimum=0, maximum=MAX_BODY_BYTES),
            queue_max_bytes=reader.integer("CAPTURE_QUEUE_MAX_BYTES", 64 * MiB, minimum=1,
                                           maximum=64 * GiB),
            spool_dir=folder_of(reader.text("CAPTURE_SPOOL_DIR", "")),
            spool_max_bytes=reader.integer("CAPTURE_SPOOL_MAX_BYTES", 4 * GiB, minimum=MiB,
                                           maximum=1 << 40),
            shutdown_timeout_s=reader.number("CAPTURE_SHUTDOWN_TIMEOUT_S", 5.0,
                                             maximum=MAX_WAIT_S),
            linger_ms=reader.integer("KAFKA_LINGER_MS", 25, minimum=0, maximum=60_000),
            max_batch_bytes=reader.integer("KAFKA_MAX_BATCH_BYTES", 4 * MiB, minimum=KiB,
                                           maximum=MAX_RECORD_BYTES),
            compression=None if compression == "none" else compression,
            trusted_proxies=trusted,
            metrics_host=reader.text("PROXY_METRICS_HOST", "127.0.0.1"),
            metrics_port=reader.port("PROXY_METRICS_PORT", 9101, zero="off"),
            log_connections=reader.flag("PROXY_LOG_CONNECTIONS", False),
            redact=reader.flag("CAPTURE_REDACT", True),
            redact_key=reader.text("CAPTURE_REDACT_KEY", "").encode() or None,
            redact_headers=_names(reader.text("CAPTURE_REDACT_HEADERS", "")),
            redact_fields=_names(reader.text("CAPTURE_REDACT_FIELDS", "")),
            redact_keep_names=_names(reader.text("CAPTURE_REDACT_KEEP_NAMES", "")),
            redact_emails=reader.flag("CAPTURE_REDACT_EMAILS", True),
            redact_budget_ms=reader.number("CAPTURE_REDACT_BUDGET_MS", 100.0,
                                           maximum=MAX_WAIT_S * 1000),
            unscanned_bodies=reader.choice("CAPTURE_UNSCANNED_BODIES", ("withhold", "keep")),
            form_files=reader.choice("CAPTURE_FORM_FILES", ("withhold", "keep")),
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


def _names(spec: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in spec.split(",") if name.strip())
