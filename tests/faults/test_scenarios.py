"""Faults under steady load, each with its figures: requests sent and answered, captures
counted by the proxy, rows in the database, records in the lake, drops by reason, duplicates.

Each scenario runs the whole pipeline on real services, starts the load, breaks one part
while the load runs, lets the load go on a little after the part is back, stops the load,
waits until both sinks have committed every record on the topic, and then compares every
capture id on the topic with those in PostgreSQL and in the lake (docs/reliability.md).
"""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stack import Postgres
from stack.support import fresh_database, sample, wait_until
from tests.faults.harness import (
    LEAD_S,
    OUTAGE_S,
    RATE,
    SINKS,
    TRAIL_S,
    Figures,
    check,
    duplicates,
    final_count,
    full_pipeline,
    proxy_count,
)
from tests.faults.load import Load
from tests.sinks.lake_fixtures import committed

pytestmark = [pytest.mark.faults, pytest.mark.integration]

KILLS = 3  # SIGKILLs of each sink
POSTGRES_DOWN_S = 5.0
# The stalled lake sink: the group's shortest session (Kafka's minimum), which is also how long
# a rebalance waits for a member; a stalled PUT must not time out on its own before it lands.
STALL_ENV = {"SINK_SESSION_TIMEOUT_MS": "6000", "SINK_HEARTBEAT_INTERVAL_MS": "1000",
             "S3_TIMEOUT_S": "60"}
AFTER_TAKEOVER_S = 2.0  # the new owner at work before the stalled sink's PUTs land


def test_sinks_killed_again_and_again(kafka, database, s3, bucket, tmp_path, report):
    seed = random.randrange(1 << 16)
    with full_pipeline(tmp_path, kafka.bootstrap_servers, database, s3.endpoint_url,
                       bucket) as full:
        with Load(full.pipeline, RATE) as load:
            time.sleep(LEAD_S)

            def kill_again_and_again(name: str, rng: random.Random) -> None:
                for kill in range(KILLS):
                    # Each kill comes at a random moment once the sink is at work again.
                    wait_until(lambda: full.written(name) > 0, timeout=60,
                               what=f"the {name} sink to write")
                    time.sleep(rng.uniform(0.0, 1.0))
                    full.kill_sink(name)
                    # The first restart is a plain one, in the killed sink's group, and waits
                    # for Kafka to expire the dead member; later ones resume from the same
                    # commits in a copy of the group, to keep the run short.
                    full.restart_sink(name, copy=kill > 0)

            with ThreadPoolExecutor(len(SINKS)) as pool:
                for done in [pool.submit(kill_again_and_again, name, random.Random(seed + n))
                             for n, name in enumerate(SINKS)]:
                    done.result()
            time.sleep(TRAIL_S)
        count = full.settle_proxy()
        size = full.wait_caught_up()
        stores = full.stores(size)
        again = {name: full.read_again(name, len(stores.topic)) for name in SINKS}
        full.stop_sinks()
    figures = Figures(f"each sink SIGKILLed {KILLS} times", load.tally(), count.captured,
                      count.dropped, stores,
                      [f"read again after kills, at least: db {again['timescale']}, "
                       f"lake {again['lake']}",
                       f"second copies in the lake's objects {duplicates(stores.lake_objects)}",
                       f"seed {seed}"])
    report(figures.line())
    check(figures)
    assert sum(count.dropped.values()) == 0


def test_postgres_restarted_while_s3_is_unreachable(kafka, s3, bucket, tmp_path, report):
    # One scenario for the two stores, as one load run: each sink has its own store, so the
    # faults do not mask each other, and the run stays short. A PostgreSQL cluster of its own:
    # restarting the suite's would disturb the other tests.
    own = Postgres(tmp_path / "pg")
    own.start()
    try:
        database = fresh_database(own.dsn)
        with full_pipeline(tmp_path, kafka.bootstrap_servers, database, s3.endpoint_url,
                           bucket) as full:
            with Load(full.pipeline, RATE) as load:
                time.sleep(LEAD_S)
                full.forwarder.set("reset")  # every connection to S3 reset, new ones too
                s3_back = time.monotonic() + OUTAGE_S
                time.sleep(OUTAGE_S / 3)
                own.stop()
                pg_down = time.monotonic()
                time.sleep(POSTGRES_DOWN_S)
                own.start()
                pg_down = time.monotonic() - pg_down  # with the cluster's start
                time.sleep(max(0.0, s3_back - time.monotonic()))
                full.forwarder.set("up")
                time.sleep(TRAIL_S)
            count = full.settle_proxy()
            size = full.wait_caught_up()
            retries = {name: full.write_retries(name) for name in SINKS}
            stores = full.stores(size)
            full.stop_sinks()
    finally:
        own.close()
    figures = Figures(
        f"postgres stopped {POSTGRES_DOWN_S:.0f} s, s3 unreachable {OUTAGE_S:.0f} s",
        load.tally(), count.captured, count.dropped, stores,
        [f"postgres back after {pg_down:.1f} s",
         f"write retries: db {retries['timescale']}, lake {retries['lake']}"])
    report(figures.line())
    check(figures)
    assert sum(count.dropped.values()) == 0
    # Each sink did meet its store down, and S3 was refused to it.
    assert retries["timescale"] > 0 and retries["lake"] > 0
    assert full.forwarder.accepted["reset"] > 0


def test_proxy_stopped(kafka, database, s3, bucket, tmp_path, report):
    # Records wait up to half a second in the Kafka client before they are sent, so that the
    # stop always finds some in flight: the proxy must flush them or count them.
    with full_pipeline(tmp_path, kafka.bootstrap_servers, database, s3.endpoint_url, bucket,
                       KAFKA_LINGER_MS="500") as full:
        proxy = full.pipeline.proxy.proc
        load = Load(full.pipeline, RATE).start()
        try:
            time.sleep(5.0)
            # Stop at a moment when records wait to be sent: a batch lingers 500 ms and the
            # next starts with the next capture, so such a moment comes within a few scrapes.
            before = wait_until(lambda: (c := proxy_count(full.metrics)).queued + c.in_flight
                                and c, timeout=10, interval=0.01,
                                what="records in flight in the proxy")
            proxy.send_signal(signal.SIGTERM)
        finally:
            tally = load.stop()
        assert proxy.wait(30) == 0
        final = final_count(full.pipeline.proxy.log)
        size = full.wait_caught_up()
        stores = full.stores(size)
        full.stop_sinks()
    # The proxy's last words count its drops by reason, those of the stop included.
    dropped = {reason: int(n) for reason, n in final["dropped_by_reason"].items()}
    assert sum(dropped.values()) == final["dropped"]
    failed = tally.sent - tally.ok
    figures = Figures("proxy SIGTERM", tally, int(final["captured"]), dropped, stores,
                      [f"in flight at the stop {before.queued + before.in_flight}",
                       f"requests failed at the stop {failed}"])
    report(figures.line())
    check(figures, clients_see_errors=True)
    # Only requests in flight as the proxy stopped may fail: at most one per client.
    assert failed <= 4, tally.failed
    assert before.in_flight + before.queued > 0  # the stop did find records to flush
    assert final["captured"] == final["produced"] + final["dropped"]
    assert len(stores.topic) == final["produced"]


def test_a_stalled_lake_sink_loses_its_partitions_and_replaces_nothing(kafka, database, s3,
                                                                        bucket, tmp_path, report):
    # Two lake sinks in one group. The first one's S3 traffic is held, bytes and all, while a
    # batch's PUTs are on the wire; the group gives its partitions to the second, which reads
    # from the last commit, cuts its batches otherwise and commits; then the held PUTs land.
    with full_pipeline(tmp_path, kafka.bootstrap_servers, database, s3.endpoint_url, bucket,
                       lake_settings=STALL_ENV) as full:
        group = full.envs["lake"]["SINK_GROUP_ID"]
        bootstrap, topic = kafka.bootstrap_servers, full.pipeline.topic

        def lake_committed() -> int:
            return committed(bootstrap, group, topic)

        def lost(key: str) -> int:
            return int(sample(full.sinks[key].metrics(), "tapline_sink_lost_batches_total",
                              sink="lake"))

        with Load(full.pipeline, RATE) as load:
            time.sleep(LEAD_S)
            wait_until(lambda: full.written("lake") > 0, timeout=30, what="the lake sink to write")
            full.forwarder.set("pause")
            wait_until(lambda: full.forwarder.held > 0, timeout=30,
                       what="a PUT of the lake sink held on its way to S3")
            held_at = lake_committed()
            stalled = time.monotonic()
            # The second sink talks to S3 directly, and batches longer: another cut.
            full.start_replica("lake-2", "lake", S3_ENDPOINT_URL=s3.endpoint_url,
                               SINK_BATCH_MAX_AGE_MS="1500")
            wait_until(lambda: lake_committed() > held_at, timeout=60, interval=0.2,
                       what="the second lake sink to take over and commit")
            took_over = time.monotonic() - stalled
            time.sleep(AFTER_TAKEOVER_S)
            over = lake_committed()
            held = full.forwarder.held
            full.forwarder.set("up")  # the held PUTs land now, over what the second committed
            wait_until(lambda: lost("lake") > 0, timeout=60,
                       what="the stalled sink to find its partitions gone")
            time.sleep(TRAIL_S)
        count = full.settle_proxy()
        size = full.wait_caught_up()
        dropped_batches = lost("lake")
        stores = full.stores(size)
        full.stop_sinks()
    figures = Figures("a lake sink's S3 held until another took over", load.tally(),
                      count.captured, count.dropped, stores,
                      [f"taken over after {took_over:.1f} s",
                       f"held request chunks {held}",
                       f"batches dropped by the stalled sink {dropped_batches}",
                       f"second copies in the lake's objects {duplicates(stores.lake_objects)}"])
    report(figures.line())
    check(figures)
    assert sum(count.dropped.values()) == 0
    # The held PUTs landed after the other sink had committed past the batch they belong to.
    assert held > 0 and over > held_at
    assert dropped_batches > 0
    # And they did land, beside what the other sink committed (with names of the first offset
    # only, over it): records of theirs are in two objects, and read once.
    assert duplicates(stores.lake_objects) > 0
