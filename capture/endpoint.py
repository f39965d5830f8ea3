"""The Prometheus endpoint every service serves, started the same way everywhere."""

from __future__ import annotations


class StartError(RuntimeError):
    """Something a service needs could not start; the message is the one line to show."""


def serve_metrics(registry, host: str, port: int):
    """Serve `registry` on host:port/metrics from a daemon thread; None when port is 0 (off).

    A port or host that cannot be served is a `StartError`, whatever the socket layer raised
    (OSError for a port in use or a name that does not resolve, OverflowError for a port out
    of range, UnicodeError for a host name IDNA refuses): a service must not keep running
    without the endpoint it was told to serve, and must say so in one line.
    """
    if not port:
        return None
    # Imported here: the proxy's supervisor must set PROMETHEUS_MULTIPROC_DIR before
    # prometheus_client is first imported (proxy/workers.py).
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except (OSError, OverflowError, UnicodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StartError(f"metrics endpoint {host}:{port} unavailable: {reason}") from None
    return server
