"""PROXY_WORKERS: several proxy processes on the same ports, under one supervisor.

The workers share each listen port (SO_REUSEPORT: the kernel spreads new connections), a dead
worker is started again, SIGTERM stops all of them with each one's flush, and the one metrics
endpoint keeps `captured == produced + dropped + queued + in flight` across workers and deaths.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.serving import make_server

from stack import free_port
from stack.support import Process, read_topic, sample, tail, wait_until
from stack.support import accounted as proxy_accounted
from tests.integration import echo_app

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


class Rig:
    def __init__(self, workdir: Path, bootstrap: str, **env: str) -> None:
        self.echo = make_server("127.0.0.1", 0, echo_app.app, threaded=True)
        threading.Thread(target=self.echo.serve_forever, args=(0.05,), daemon=True).start()
        self.port, metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.topic = f"workers-{uuid.uuid4().hex[:8]}"
        self.bootstrap = bootstrap
        # The supervisor's shared metric files go under TMPDIR: the test reads each worker's.
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.proxy = Process([sys.executable, "-m", "proxy"], workdir / "proxy.log", {
            "PROXY_ROUTES": f"echo=http://127.0.0.1:{self.echo.server_port}@{self.port}",
            "PROXY_WORKERS": "2",
            "PROXY_METRICS_PORT": str(metrics_port),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CAPTURE_TOPIC": self.topic,
            "CAPTURE_TOPIC_PARTITIONS": "2",
            "CAPTURE_REDACT_KEY": "test",
            "TMPDIR": str(self.tmp),
            **env,
        })

    def start(self) -> Rig:
        self.proxy.start(self.port, int(self.metrics.split(":")[2].split("/")[0]))
        wait_until(lambda: len(self.workers()) == 2 and self.all_listening(), timeout=30,
                   what="two workers listening")
        return self

    def workers(self) -> set[int]:
        return children(self.proxy.proc.pid)

    def all_listening(self) -> bool:
        """Whether every worker holds a listening socket on the port."""
        return all(self.listens(pid) for pid in self.workers())

    def listens(self, pid: int) -> bool:
        inodes = set()
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == self.port
                        and fields[9] in inodes):
                    return True
        return False

    def captured_by(self, pid: int) -> float:
        """What one worker has counted as captured, from its own shared metrics file."""
        files = glob.glob(str(self.tmp / "tapline-proxy-metrics-*" / f"counter_{pid}.db"))
        for family in MultiProcessCollector.merge(files):
            if family.name == "tapline_proxy_captures":
                return sum(s.value for s in family.samples if s.name.endswith("_total"))
        return 0.0

    def get(self, path: str) -> int:
        # A new connection each time: SO_REUSEPORT spreads connections, not requests.
        with requests.Session() as session:
            return session.get(self.url + path, timeout=10,
                               headers={"Connection": "close"}).status_code

    def burst(self, n: int, marker: str) -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: self.get(f"/echo/{marker}/{i}"), range(n)))

    def accounted(self) -> tuple[float, float, dict[str, float]]:
        return proxy_accounted(self.metrics)

    def close(self) -> int | None:
        code = self.proxy.stop(30)
        self.echo.shutdown()
        self.echo.server_close()
        return code


@pytest.fixture
def rig(tmp_path, kafka):
    rig = Rig(tmp_path, kafka.bootstrap_servers).start()
    yield rig
    rig.close()


@pytest.fixture
def rig_without_kafka(tmp_path):
    # Nothing listens at the bootstrap address: every record stays queued, counted.
    rig = Rig(tmp_path, f"127.0.0.1:{free_port()}").start()
    yield rig
    rig.close()


def test_workers_share_the_port_and_the_metrics_add_up(rig):
    before = rig.workers()
    assert len(before) == 2 and all(rig.listens(pid) for pid in before)
    marker = uuid.uuid4().hex[:12]
    assert rig.burst(200, marker) == [200] * 200
    # Both workers took connections, and the endpoint shows their sum.
    wait_until(lambda: sum(rig.captured_by(pid) for pid in before) == 200, timeout=20,
               what="both workers' captures")
    assert all(rig.captured_by(pid) > 0 for pid in before)
    wait_until(lambda: rig.accounted()[2].get("tapline_proxy_produced_total") == 200,
               timeout=30, what="200 records produced")
    captured, rest, samples = rig.accounted()
    assert captured == rest == 200
    assert sample(samples, "tapline_proxy_workers") == 2
    records = read_topic(rig.bootstrap, rig.topic, expect=200)
    assert len(records) == 200


def test_a_dead_worker_is_started_again_and_what_it_held_is_counted(rig_without_kafka):
    rig = rig_without_kafka
    first = rig.workers()
    marker = uuid.uuid4().hex[:12]
    assert rig.burst(100, marker) == [200] * 100
    wait_until(lambda: rig.accounted()[0] == 100, timeout=20, what="100 captures")
    victim = max(first, key=rig.captured_by)
    held = rig.captured_by(victim)
    assert held > 0
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(rig.workers()) == 2 and victim not in rig.workers()
               and rig.all_listening(), timeout=30, what="a new worker in the dead one's place")
    # Whatever else happened, the proxy kept answering.
    assert rig.burst(50, marker + "b") == [200] * 50
    captured, rest, samples = rig.accounted()
    assert captured == rest == 150
    assert sample(samples, "tapline_proxy_dropped_total", reason="worker_lost") == held
    assert sample(samples, "tapline_proxy_worker_restarts_total") == 1
    assert sample(samples, "tapline_proxy_workers") == 2
    assert sample(samples, "tapline_proxy_queue_records") == 150 - held
    assert "exited with signal 9" in tail(rig.proxy.log, 200)


def test_sigterm_stops_every_worker_after_its_flush(rig):
    workers = rig.workers()
    marker = uuid.uuid4().hex[:12]
    assert rig.burst(120, marker) == [200] * 120
    assert rig.close() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    records = read_topic(rig.bootstrap, rig.topic, expect=120)
    assert len(records) == 120
    log = tail(rig.proxy.log, 400)
    assert log.count("capture producer stopped (worker ") == 2
    # The supervisor's line last: the whole proxy's figures.
    last = [line for line in log.splitlines() if "capture producer stopped: " in line]
    assert len(last) == 1 and "'produced': 120.0" in last[0] and "'dropped': 0.0" in last[0]
    assert not glob.glob(str(rig.tmp / "tapline-proxy-metrics-*"))  # the shared files go


def test_workers_that_cannot_start_stop_the_supervisor(tmp_path):
    port = free_port()
    proxy = Process([sys.executable, "-m", "proxy", "--set", "no_such_option=1"],
                    tmp_path / "proxy.log", {
                        "PROXY_ROUTES": f"x=http://127.0.0.1:9@{port}", "PROXY_WORKERS": "2",
                        "PROXY_METRICS_PORT": "0",
                        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}).start()
    try:
        assert proxy.proc.wait(90) == 1
    finally:
        proxy.stop()
    log = tail(tmp_path / "proxy.log", 400)
    assert "unknown mitmproxy option: no_such_option" in log
    assert "keep dying as they start" in log


def test_an_option_of_a_left_out_addon_stops_one_proxy_too(tmp_path):
    # mitmdump keeps an unknown `--set` for an addon that might load later; the proxy's lean
    # master has none to load, so it is a mistake, named at start.
    proxy = Process([sys.executable, "-m", "proxy", "--set", "anticache=true"],
                    tmp_path / "proxy.log", {
                        "PROXY_ROUTES": f"x=http://127.0.0.1:9@{free_port()}",
                        "PROXY_WORKERS": "1", "PROXY_METRICS_PORT": "0",
                        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}).start()
    try:
        assert proxy.proc.wait(60) == 1
    finally:
        proxy.stop()
    assert "unknown mitmproxy option: anticache" in tail(tmp_path / "proxy.log")
