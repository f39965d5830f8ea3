"""Kafka out of reach under steady load, with the proxy's on-disk spool (proxy/spool.py): the
outage, the proxy SIGKILLed during it, and the spool's disk full. Each with its figures, as
in test_scenarios.py (docs/reliability.md); a file of its own so that make test's two workers
can run these beside the other scenarios.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from capture import decode
from stack.support import wait_until
from tests.faults.harness import (
    LEAD_S,
    OUTAGE_S,
    RATE,
    TRAIL_S,
    Figures,
    check,
    duplicates,
    full_pipeline,
    proxy_count,
)
from tests.faults.load import Load

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Kafka's outage: TAPLINE_FAULT_KAFKA_OUTAGE_S=300 for the five minutes of docs/reliability.md.
KAFKA_OUTAGE_S = float(os.environ.get("TAPLINE_FAULT_KAFKA_OUTAGE_S", OUTAGE_S))
# A queue far smaller than the outage's captures: without the spool most would be dropped.
QUEUE_BYTES = 512 << 10


def test_kafka_down_and_back(own_kafka, database, s3, bucket, tmp_path, report):
    bootstrap = own_kafka.bootstrap_servers
    with full_pipeline(tmp_path, bootstrap, database, s3.endpoint_url, bucket,
                       CAPTURE_QUEUE_MAX_BYTES=str(QUEUE_BYTES),
                       CAPTURE_MAX_RECORD_BYTES=str(128 << 10),
                       CAPTURE_SPOOL_DIR=str(tmp_path / "spool")) as full:
        with Load(full.pipeline, RATE) as load:
            time.sleep(LEAD_S)
            own_kafka.kill()  # SIGKILL: a crash, not a clean shutdown
            down = datetime.now(UTC)
            time.sleep(KAFKA_OUTAGE_S)
            during = proxy_count(full.metrics)
            own_kafka.start()  # the same broker: same port, same data
            up = datetime.now(UTC)
            unreachable = (up - down).total_seconds()  # with the broker's start
            time.sleep(TRAIL_S)
        assert own_kafka.bootstrap_servers == bootstrap
        count = full.settle_proxy(timeout=120)
        size = full.wait_caught_up()
        stores = full.stores(size)
        full.stop_sinks()
    # Captures of requests made while Kafka was down that reached it once it was back.
    waited = sum(1 for started in stores.started.values() if down < started < up)
    figures = Figures(f"kafka killed for {KAFKA_OUTAGE_S:.0f} s, spool on", load.tally(),
                      count.captured, count.dropped, stores,
                      [f"kafka back after {unreachable:.1f} s",
                       f"spooled at the end of the outage {during.spooled}",
                       f"outage captures delivered later {waited}",
                       f"duplicates on the topic {duplicates(stores.topic)}"])
    report(figures.line())
    check(figures)
    # The outage's captures waited on disk, not in the queue's 512 KB, and none was lost.
    assert sum(count.dropped.values()) == 0
    assert during.spooled > 0
    assert waited > 0


def test_proxy_killed_while_kafka_is_down(own_kafka, database, s3, bucket, tmp_path, report):
    """SIGKILL of the proxy during the outage, and a new proxy on the same spool: every
    capture that was on disk at the kill reaches both stores, once."""
    bootstrap = own_kafka.bootstrap_servers
    spool = tmp_path / "spool"
    with full_pipeline(tmp_path, bootstrap, database, s3.endpoint_url, bucket,
                       CAPTURE_SPOOL_DIR=str(spool)) as full:
        proxy = full.pipeline.proxy
        with Load(full.pipeline, RATE) as load:
            time.sleep(LEAD_S)
            own_kafka.kill()
            time.sleep(OUTAGE_S / 2)
            before = proxy_count(full.metrics)
            proxy.proc.kill()  # the supervisor; its workers die with it (PDEATHSIG)
            proxy.proc.wait()
            wait_until(lambda: not spool_locked(spool), timeout=10,
                       what="the killed workers to let go of the spool")
            on_disk = spooled_ids(spool)
            proxy.start(*full.pipeline.ports())
            time.sleep(OUTAGE_S / 2)
            own_kafka.start()
            time.sleep(TRAIL_S)
        count = full.settle_proxy(timeout=120)
        size = full.wait_caught_up()
        stores = full.stores(size)
        full.stop_sinks()
    tally = load.tally()
    captured = before.captured + count.captured  # the first proxy's, scraped before the kill
    figures = Figures("proxy SIGKILLed while kafka is down, spool on", tally, captured,
                      count.dropped, stores,
                      [f"on disk at the kill {len(on_disk)}",
                       f"found by the new proxy {count.recovered}",
                       f"of those on the topic {len(on_disk & set(stores.topic))}",
                       f"requests failed while no proxy ran {tally.sent - tally.ok}"])
    report(figures.line())
    assert len(on_disk) > 0
    assert count.recovered == len(on_disk)
    assert on_disk <= set(stores.topic)  # every spooled capture arrived
    assert set(stores.db) == set(stores.lake) == set(stores.topic)
    assert duplicates(stores.db) == duplicates(stores.lake) == 0
    assert sum(count.dropped.values()) == 0


def test_kafka_down_and_the_spools_disk_full(own_kafka, database, s3, bucket, tmp_path,
                                            report):
    """The spool's disk refuses writes partway into the outage: the rest is dropped and
    counted, clients notice nothing, what was spooled arrives. The disk is a file size limit
    on the proxy (`prlimit --fsize`): the kernel refuses the growth (EFBIG) as a full disk
    refuses a write (ENOSPC); one worker, whose files are its log and its spool."""
    limit = 1536 << 10
    with full_pipeline(tmp_path, own_kafka.bootstrap_servers, database, s3.endpoint_url, bucket,
                       proxy_prefix=["prlimit", f"--fsize={limit}"], PROXY_WORKERS="1",
                       CAPTURE_SPOOL_DIR=str(tmp_path / "spool")) as full:
        with Load(full.pipeline, RATE) as load:
            time.sleep(LEAD_S)
            own_kafka.kill()
            wait_until(lambda: proxy_count(full.metrics).dropped["spool_full"] > 0,
                       timeout=120, interval=0.5, what="the spool's disk to refuse a write")
            during = proxy_count(full.metrics)
            time.sleep(TRAIL_S)
            own_kafka.start()
            time.sleep(TRAIL_S)
        count = full.settle_proxy(timeout=120)
        size = full.wait_caught_up()
        stores = full.stores(size)
        full.stop_sinks()
    figures = Figures(f"kafka killed, the spool's disk full at {limit >> 10} KiB", load.tally(),
                      count.captured, count.dropped, stores,
                      [f"spooled when the disk refused {during.spooled}",
                       f"duplicates on the topic {duplicates(stores.topic)}"])
    report(figures.line())
    check(figures)  # clients saw no error; every capture not dropped reached both stores
    assert count.dropped["spool_full"] > 0
    assert during.spooled > 0


def spooled_ids(folder) -> set[str]:
    ids = set()
    for path in folder.glob("worker-*.sqlite"):
        with contextlib.closing(sqlite3.connect(path)) as db:
            ids |= {decode(value).id for (value,) in db.execute("SELECT value FROM spool")}
    return ids


def spool_locked(folder) -> bool:
    """Whether a process still holds a spool file (its WAL index is mapped while open)."""
    names = {str(path) for path in folder.glob("worker-*.sqlite-shm")}
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            if any(name in maps.read_text() for name in names):
                return True
        except OSError:
            continue
    return False
