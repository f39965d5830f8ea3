"""What the proxy and the sinks need at start and cannot have stops them, with one clear line.

Once the proxy kept serving while its metrics server had raised and its producer had never
started, so every capture was dropped (issue 16). Real processes here, with Kafka unreachable
(nothing is sent: each must stop before it would be).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from stack import free_port

SECRET = "s3cr3t-Pa55w0rd"


def run(module: list[str], env: dict[str, str], timeout: float = 30.0):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PROXY_", "CAPTURE_", "SINK_"))}
    return subprocess.run(
        # mitmproxy logs to stdout when it is not a terminal: one stream, read as the user does.
        [sys.executable, "-m", *module], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
        env={**base, "PROXY_ROUTES": f"a=http://127.0.0.1:{free_port()}@{free_port()}",
             "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "CAPTURE_REDACT_KEY": "test", **env})


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_metrics_port_in_use_stops_the_proxy(workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(["proxy"], {"PROXY_WORKERS": workers, "PROXY_METRICS_PORT": str(port)})
    assert done.returncode == 1, done.stdout
    assert f"metrics endpoint 127.0.0.1:{port} unavailable: Address already in use" in done.stdout
    assert "Traceback" not in done.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_metrics_host_that_does_not_resolve_stops_the_proxy(workers):
    done = run(["proxy"], {"PROXY_WORKERS": workers,
                           "PROXY_METRICS_HOST": "no-such-host.invalid"})
    assert done.returncode == 1, done.stdout
    assert "metrics endpoint no-such-host.invalid:9101 unavailable" in done.stdout
    assert "Traceback" not in done.stdout


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"PROXY_METRICS_PORT": "70000"}, "PROXY_METRICS_PORT=70000 is above the maximum 65535"),
        ({"CAPTURE_SHUTDOWN_TIMEOUT_S": "nan"},
         "CAPTURE_SHUTDOWN_TIMEOUT_S='nan': use a finite number"),
        ({"PROXY_ROUTES": f"a=http://admin:{SECRET}@127.0.0.1:5100@5000"},
         "route 1 (a): the upstream must not hold credentials (user:password@)"),
    ],
)
def test_a_bad_setting_stops_the_proxy_with_one_line(env, says):
    done = run(["proxy"], env)
    assert done.returncode == 2
    prefix = "tapline proxy: PROXY_ROUTES: " if says.startswith("route") else "tapline proxy: "
    assert done.stdout.strip().splitlines() == [prefix + says]
    assert SECRET not in done.stdout


def test_a_metrics_port_in_use_stops_a_sink():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(["sinks", "lake"], {"SINK_METRICS_PORT": str(port)})
    assert done.returncode == 1, done.stdout
    assert done.stdout.strip().splitlines()[-1] == (
        f"tapline sink: metrics endpoint 127.0.0.1:{port} unavailable: Address already in use")


def test_a_bad_setting_stops_a_sink_with_one_line():
    done = run(["sinks", "timescale"], {"SINK_RETRY_MAX_BACKOFF_S": "inf"})
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "tapline sink: SINK_RETRY_MAX_BACKOFF_S='inf': use a finite number"]
