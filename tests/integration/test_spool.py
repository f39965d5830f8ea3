"""The proxy's on-disk spool (CAPTURE_SPOOL_DIR): captures that cannot go to Kafka wait on disk,
survive the proxy's restart and SIGKILL, go out in order once Kafka is back, and a spool
that cannot take more drops and counts while clients notice nothing. Real broker, real proxy
processes, real files.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import uuid
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from capture import decode
from stack import free_port
from stack.support import Process, accounted, read_topic, sample, scrape, wait_until
from tests.integration import echo_app

pytestmark = pytest.mark.integration

class SpoolRig:
    """The echo app, and a one-worker proxy in front of it with a spool under `workdir`."""

    def __init__(self, workdir: Path, bootstrap: str, *, prefix: list[str] | None = None,
                 **env: str) -> None:
        self.echo = make_server("127.0.0.1", 0, echo_app.app, threaded=True)
        threading.Thread(target=self.echo.serve_forever, args=(0.05,), daemon=True).start()
        self.port, metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.topic = f"spool-{uuid.uuid4().hex[:8]}"
        self.bootstrap = bootstrap
        self.spool = workdir / "spool"
        self.workdir = workdir
        self.runs = 0
        self.prefix = prefix or []
        self.env = {
            "PROXY_ROUTES": f"echo=http://127.0.0.1:{self.echo.server_port}@{self.port}",
            "PROXY_WORKERS": "1",
            "PROXY_METRICS_PORT": str(metrics_port),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CAPTURE_TOPIC": self.topic,
            "CAPTURE_TOPIC_PARTITIONS": "2",
            "CAPTURE_REDACT_KEY": "test",
            "CAPTURE_SPOOL_DIR": str(self.spool),
            **env,
        }
        self.proxy: Process | None = None

    def start(self) -> Process:
        self.runs += 1
        self.proxy = Process([*self.prefix, sys.executable, "-m", "proxy"],
                             self.workdir / f"proxy-{self.runs}.log", self.env)
        return self.proxy.start(self.port, int(self.metrics.split(":")[2].split("/")[0]))

    def send(self, n: int, start: int = 0, body: bytes = b"") -> None:
        with requests.Session() as session:
            for i in range(start, start + n):
                answer = session.post(f"{self.url}/echo?n={i}", data=body, timeout=10)
                assert answer.status_code == 200

    def count(self, name: str, **labels: str) -> float:
        return sample(scrape(self.metrics), name, **labels)

    def accounting(self) -> tuple[float, float]:
        """(captured + recovered, produced + dropped + queued + spooled + in flight)."""
        return accounted(self.metrics)[:2]

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.echo.shutdown()


def spooled_numbers(folder: Path) -> list[int]:
    """The request numbers (`?n=`) of the records in the spool's files, in their order."""
    numbers = []
    for path in sorted(folder.glob("worker-*.sqlite")):
        with sqlite3.connect(path) as db:
            for (value,) in db.execute("SELECT value FROM spool ORDER BY at, rowid"):
                numbers.append(int(decode(value).request.query.removeprefix("n=")))
    return numbers


def numbers_on_topic(rig: SpoolRig, expect: int) -> list[int]:
    return [int(decode(value).request.query.removeprefix("n="))
            for _, value in read_topic(rig.bootstrap, rig.topic, expect=expect, timeout=60)]


@pytest.fixture
def rig_for(tmp_path):
    rigs = []

    def make(bootstrap: str, **kwargs) -> SpoolRig:
        rig = SpoolRig(tmp_path, bootstrap, **kwargs)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def test_kafka_down_the_proxy_killed_and_restarted_every_spooled_capture_arrives(
        own_kafka, rig_for):
    rig = rig_for(own_kafka.bootstrap_servers)
    proxy = rig.start()
    rig.send(50)  # Kafka up: straight to it, the spool stays empty
    wait_until(lambda: rig.count("tapline_proxy_produced_total") == 50, what="50 produced")
    assert rig.count("tapline_proxy_spool_records") == 0
    assert spooled_numbers(rig.spool) == []

    own_kafka.kill()
    rig.send(300, start=50)  # every request still answered
    wait_until(lambda: rig.count("tapline_proxy_spool_records") == 300, timeout=60,
               what="the outage's 300 captures on disk")
    assert rig.count("tapline_proxy_queue_records") == 0
    captured, accounted = rig.accounting()
    assert captured == accounted == 350

    proxy.proc.kill()  # SIGKILL: no flush, no goodbye
    proxy.proc.wait()
    on_disk = spooled_numbers(rig.spool)
    assert on_disk == list(range(50, 350))  # all of them, in the order captured

    rig.start()  # Kafka still down: the new proxy finds them and keeps them
    assert rig.count("tapline_proxy_spool_recovered_total") == 300
    assert rig.count("tapline_proxy_spool_records") == 300
    own_kafka.start()
    wait_until(lambda: rig.count("tapline_proxy_spool_records") == 0, timeout=90,
               what="the spool sent")
    assert rig.count("tapline_proxy_produced_total") == 300
    numbers = numbers_on_topic(rig, expect=350)
    assert sorted(numbers) == list(range(350))  # every capture, none twice
    # One client, one key, one partition: the topic has them in the order they were made.
    assert numbers == list(range(350))
    assert spooled_numbers(rig.spool) == []


def test_a_proxy_stopped_while_kafka_is_down_keeps_its_queue_on_disk(rig_for):
    unreachable = f"127.0.0.1:{free_port()}"
    rig = rig_for(unreachable, CAPTURE_SHUTDOWN_TIMEOUT_S="1")
    proxy = rig.start()
    rig.send(120)
    assert proxy.stop() == 0
    log = proxy.log.read_text()
    assert "'dropped': 0.0" in log and "'spooled': 120.0" in log, log[-2000:]
    assert sorted(spooled_numbers(rig.spool)) == list(range(120))


@pytest.mark.parametrize("limit", ["cap", "disk"])
def test_a_spool_that_cannot_take_more_drops_and_counts_and_clients_notice_nothing(
        own_kafka, rig_for, limit):
    own_kafka.kill()
    if limit == "cap":
        rig = rig_for(own_kafka.bootstrap_servers, CAPTURE_SPOOL_MAX_BYTES=str(1 << 20))
    else:
        # The kernel refuses to let any file of the proxy grow past 2 MiB, as a full disk
        # refuses a write (EFBIG instead of ENOSPC; Python ignores SIGXFSZ).
        rig = rig_for(own_kafka.bootstrap_servers, prefix=["prlimit", f"--fsize={2 << 20}"])
    rig.start()
    body = b"x" * 20_000
    rig.send(200, body=body)  # 200 records of about 20 KB: 4 MB, more than fits
    wait_until(lambda: rig.count("tapline_proxy_queue_records") == 0, timeout=60,
               what="the queue emptied into the spool or dropped")
    dropped = rig.count("tapline_proxy_dropped_total", reason="spool_full")
    spooled = rig.count("tapline_proxy_spool_records")
    assert dropped > 0 and spooled > 0
    assert dropped + spooled == 200
    captured, accounted = rig.accounting()
    assert captured == accounted == 200
    # Another connection reads the files: give the last transaction a moment to show in it
    # (a count that stays apart still fails).
    wait_until(lambda: len(spooled_numbers(rig.spool)) == spooled, timeout=10,
               what="the spooled records in the spool's files")
    on_disk = spooled_numbers(rig.spool)
    assert len(on_disk) == spooled
    # Kafka back: what the spool holds drains, even from a disk too full to delete from.
    own_kafka.start()
    wait_until(lambda: rig.count("tapline_proxy_spool_records") == 0, timeout=90,
               what="the spool sent")
    assert rig.count("tapline_proxy_produced_total") == spooled
    assert sorted(numbers_on_topic(rig, expect=int(spooled))) == sorted(on_disk)
