"""The capture pipeline on real services: Kafka, the apps under gunicorn, and the proxy."""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from stack import free_port
from stack.support import Process
from tests.integration import echo_app

pytestmark = pytest.mark.integration

# The pipelines of the tests fingerprint credentials with this key, so tests can predict them.
REDACT_KEY = b"tapline-test-key"


@dataclass
class Pipeline:
    """Where a test sends traffic, and where the captures of that traffic go."""

    app_a: str  # the proxy's listener in front of app_a
    app_b: str  # ... in front of app_b
    echo: str  # ... in front of the echo app
    metrics: str
    bootstrap: str
    topic: str
    proxy: Process
    workdir: Path

    def ports(self) -> tuple[int, ...]:
        """The proxy's ports: its listeners and its metrics (to start it again)."""
        return tuple(urlsplit(url).port for url in (self.app_a, self.app_b, self.echo,
                                                     self.metrics))


@contextlib.contextmanager
def start_pipeline(workdir: Path, bootstrap: str, *, proxy_prefix: Sequence[str] = (),
                   **proxy_env: str) -> Iterator[Pipeline]:
    """Start app_b, app_a, an echo app and the proxy in front of all three; stop them after.
    `proxy_prefix` goes before the proxy's command (for example `prlimit --fsize=N`)."""
    ports = {name: free_port() for name in (
        "app_a", "app_b", "proxy_a", "proxy_b", "proxy_echo", "metrics")}
    topic = f"captures-{uuid.uuid4().hex[:8]}"
    python = sys.executable

    echo = make_server("127.0.0.1", 0, echo_app.app, threaded=True)
    threading.Thread(target=echo.serve_forever, args=(0.05,), daemon=True).start()

    app_b = Process(
        [python, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{ports['app_b']}",
         "apps.app_b:app"],
        workdir / "app_b.log", {"APP_B_DB": str(workdir / "users.sqlite3")},
    ).start(ports["app_b"])
    app_a = Process(
        [python, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{ports['app_a']}",
         "apps.app_a:app"],
        # app_a calls app_b through the proxy, so those exchanges are captured as well
        workdir / "app_a.log", {"APP_B_URL": f"http://127.0.0.1:{ports['proxy_b']}"},
    ).start(ports["app_a"])
    routes = ",".join([
        f"app_a=http://127.0.0.1:{ports['app_a']}@{ports['proxy_a']}",
        f"app_b=http://127.0.0.1:{ports['app_b']}@{ports['proxy_b']}",
        f"echo=http://127.0.0.1:{echo.server_port}@{ports['proxy_echo']}",
    ])
    env = {
        "PROXY_ROUTES": routes,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CAPTURE_TOPIC": topic,
        "CAPTURE_TOPIC_PARTITIONS": "3",
        "PROXY_METRICS_PORT": str(ports["metrics"]),
        "CAPTURE_REDACT_KEY": REDACT_KEY.decode(),
        **proxy_env,
    }
    proxy = Process([*proxy_prefix, python, "-m", "proxy"], workdir / "proxy.log", env).start(
        ports["proxy_a"], ports["proxy_b"], ports["proxy_echo"], ports["metrics"]
    )
    try:
        yield Pipeline(
            app_a=f"http://127.0.0.1:{ports['proxy_a']}",
            app_b=f"http://127.0.0.1:{ports['proxy_b']}",
            echo=f"http://127.0.0.1:{ports['proxy_echo']}",
            metrics=f"http://127.0.0.1:{ports['metrics']}/metrics",
            bootstrap=bootstrap,
            topic=topic,
            proxy=proxy,
            workdir=workdir,
        )
    finally:
        proxy.stop()
        app_a.stop()
        app_b.stop()
        echo.shutdown()
        echo.server_close()
