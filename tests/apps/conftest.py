"""Fixtures that serve the sample apps on real loopback sockets: in a thread, or under gunicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server

REPO_ROOT = Path(__file__).resolve().parents[2]

GUNICORN_BOOT_TIMEOUT_S = 15.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a loopback port nothing listens on (at the time of the call)."""
    return _closed_port


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[..., str]]:
    """A function serving a WSGI app on a free loopback port in a thread; returns the base URL."""
    servers: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def serve(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _wait_until_serving(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + GUNICORN_BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        try:
            requests.get(url, timeout=1)  # any answer, even 404/405, means a worker is up
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.05)
    raise RuntimeError(f"gunicorn did not answer on {url} within {GUNICORN_BOOT_TIMEOUT_S} s")


@pytest.fixture
def gunicorn(free_port, tmp_path) -> Iterator[Callable[..., str]]:
    """A function that runs ``module:app`` under gunicorn on a free port; returns its base URL.

    Extra environment variables are passed as keyword arguments. All servers stop at teardown.
    """
    procs: list[subprocess.Popen] = []

    def run(target: str, workers: int = 2, **env: str) -> str:
        port = free_port()
        # A file, not a pipe: nobody reads the log while gunicorn runs; a full pipe would block it.
        log_path = tmp_path / f"gunicorn-{port}.log"
        cmd = [
            sys.executable, "-m", "gunicorn",
            "-w", str(workers),
            "-b", f"127.0.0.1:{port}",
            "--graceful-timeout", "2",
            target,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=log
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_until_serving(proc, url, log_path)
        return url

    yield run
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
