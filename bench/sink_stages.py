"""Each stage of a sink against its limit, in one run on one topic: how fast Kafka gives the
records, how fast the sink's own preparation goes on top of that, how fast the store takes the
prepared rows or objects, and the sink itself; with the CPU each process spent per record.

    .venv/bin/python bench/sink_stages.py                         # both sinks, 200,000 records
    .venv/bin/python bench/sink_stages.py --sink lake --clients 20 --sizes   # 50k, 200k, 800k
    .venv/bin/python bench/sink_stages.py --quick                 # a small run, as CI does

The stages, each over the whole topic (`--records` realistic records, as bench/sink_throughput.py
makes them):

- **consume**: an aiokafka consumer with the sink's fetch settings, `getmany` 20,000 at a time,
  values untouched;
- **consume + prepare**: the same, and the sink's `prepare` on each record (for TimescaleDB the
  row, for the lake the record's check and key), the result dropped;
- **group + gzip** (the lake): the topic cut per partition into the sink's batches
  (SINK_BATCH_MAX_RECORDS, SINK_BATCH_MAX_BYTES), each grouped into objects and compressed;
- **store alone**: the same batches, prepared outside the clock; then only the store's part is
  timed: for TimescaleDB the sink's own write of the rows (COPY on one connection, one
  transaction a batch), for the lake the PUTs of the compressed objects (s3fs, PUT_CONCURRENCY
  at once);
- **sink**: `python -m sinks NAME` in its own process from its start to the group's last commit;
  its rate is the steady part (from 10% to 90% of the records committed), as in
  bench/sink_throughput.py.

CPU is read from /proc: "client" is this process for the first three stages and the sink's
process for the last; "store" is the PostgreSQL server (every backend) or the S3 server; "kafka"
is the broker. `sink / slowest` is the sink's rate over the slowest stage's: 1.0 means the sink
goes as fast as its slowest part allows. Every stage writes to a store of its own (a new
database, a new bucket), and the sink's run is checked to have written every record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from bench.sink_throughput import (  # noqa: E402
    PARTITIONS,
    count_objects,
    cpu_seconds,
    end_offsets,
    fill,
    listening_pid,
    run_process,
)
from stack import kafka_from_env, postgres_from_env, s3_from_env  # noqa: E402
from stack.s3 import create_bucket  # noqa: E402
from stack.support import fresh_database  # noqa: E402

SIZES = (50_000, 200_000, 800_000)
GETMANY_RECORDS = 20_000
PUT_PRICE_PER_1000 = 0.005  # S3 Standard PUT requests, USD, us-east-1 list price


# --- reading the topic -----------------------------------------------------------------------


def consumer_for(env: dict[str, str]) -> AIOKafkaConsumer:
    """A consumer outside any group with the sink's own fetch settings."""
    from capture.topics import message_limit
    from sinks.settings import LoopSettings

    settings = LoopSettings.from_env("timescale", env)
    return AIOKafkaConsumer(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=message_limit(settings.max_record_bytes),
        fetch_max_bytes=max(64 << 20, message_limit(settings.max_record_bytes)))


async def each_batch(env: dict[str, str], topic: str, total: int, on_messages) -> None:
    """`on_messages(tp, messages)` for every batch `getmany` gives, until `total` were read."""
    consumer = consumer_for(env)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        seen = 0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=GETMANY_RECORDS)
            for tp, messages in batches.items():
                seen += len(messages)
                await on_messages(tp, messages)
    finally:
        await consumer.stop()


class Clock:
    """Wall and CPU time of what is measured, with the services' CPU meanwhile."""

    def __init__(self, services: dict[str, int | None]) -> None:
        self.services = services

    def __enter__(self) -> Clock:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self._services = {name: cpu_seconds(pid) for name, pid in self.services.items() if pid}
        return self

    def __exit__(self, *_exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = {"client": time.process_time() - self._cpu,
                    **{name: cpu_seconds(self.services[name]) - began
                       for name, began in self._services.items()}}


def stage_consume(env, topic, total, services, prepare=None) -> dict:
    async def on_messages(_tp, messages) -> None:
        if prepare is not None:
            for message in messages:
                prepare(message)

    with Clock(services) as clock:
        asyncio.run(each_batch(env, topic, total, on_messages))
    return {"records": total, "seconds": clock.wall, "cpu": clock.cpu}


def stage_store(sink_name: str, env: dict[str, str], topic: str, total: int,
                services: dict[str, int | None]) -> dict:
    """The store's write alone: batches cut as the sink cuts them, prepared off the clock."""
    from sinks.__main__ import make_sink
    from sinks.lake import ndjson_gz, plan_objects
    from sinks.loop import Item
    from sinks.settings import LoopSettings

    settings = LoopSettings.from_env(sink_name, env)
    os.environ.update(env)
    sink = make_sink(sink_name)
    spent = {"store": {"records": total, "seconds": 0.0, "cpu": {}, "objects": 0, "bytes": 0},
             "compress": {"records": total, "seconds": 0.0, "cpu": {}}}
    pending: dict[TopicPartition, tuple[list, int]] = {}

    def add(stage: str, clock: Clock) -> None:
        spent[stage]["seconds"] += clock.wall
        for name, value in clock.cpu.items():
            spent[stage]["cpu"][name] = spent[stage]["cpu"].get(name, 0.0) + value

    async def write(items: list) -> None:
        if sink_name == "timescale":
            rows = [item.prepared for item in items]
            with Clock(services) as clock:
                await asyncio.to_thread(sink._write, rows)
        else:
            with Clock(services) as compressing:
                objects = plan_objects(items)
                bodies = [ndjson_gz(o.lines, sink.settings.gzip_level) for o in objects]
            add("compress", compressing)
            spent["store"]["objects"] += len(objects)
            spent["store"]["bytes"] += sum(map(len, bodies))
            with Clock(services) as clock:
                await sink.put(objects, bodies)
        add("store", clock)

    async def on_messages(tp, messages) -> None:
        items, nbytes = pending.get(tp, ([], 0))
        for message in messages:
            items.append(Item(message, sink.prepare(message)))
            nbytes += len(message.value)
            if (len(items) >= settings.batch_max_records
                    or nbytes >= settings.batch_max_bytes):
                await write(items)
                items, nbytes = [], 0
        pending[tp] = (items, nbytes)

    async def main() -> None:
        await sink.start()
        try:
            await each_batch(env, topic, total, on_messages)
            for items, _nbytes in pending.values():
                if items:
                    await write(items)
        finally:
            await sink.close()

    asyncio.run(main())
    return spent


def stage_sink(sink_name: str, env: dict[str, str], ends, workdir: Path,
               services: dict[str, int | None]) -> dict:
    run_env = {**env, "SINK_GROUP_ID": f"stages-{uuid.uuid4().hex[:8]}"}
    result = run_process(sink_name, run_env, ends, workdir, services)
    total = sum(ends.values())
    if result["written"] != total or result["dead"]:
        raise SystemExit(f"the {sink_name} sink wrote {result['written']:.0f} and "
                         f"dead-lettered {result['dead']:.0f} of {total}")
    cpu = dict(result["cpu_s"])
    cpu["client"] = cpu.pop("sink")
    steady = {"records": result["steady_records"], "seconds": result["steady_s"], "cpu": cpu}
    if result["steady_records"] <= 0:  # a run too short for a middle: the whole drain
        steady = {"records": total, "seconds": result["drain_s"], "cpu": {}}
    return {**steady, "peak_rss_mb": result["peak_rss_mb"], "drain_s": result["drain_s"]}


# --- one sink, one size ----------------------------------------------------------------------


def own_store(sink_name: str, env: dict[str, str], postgres_dsn: str | None) -> dict[str, str]:
    """The environment of one stage: a store nobody else wrote to."""
    if sink_name == "timescale":
        return {**env, "DATABASE_URL": fresh_database(postgres_dsn)}
    bucket = f"stage-{uuid.uuid4().hex[:10]}"
    create_bucket(env["S3_ENDPOINT_URL"], bucket)
    return {**env, "S3_BUCKET": bucket}


def run_sink(sink_name: str, env: dict[str, str], topic: str, ends, workdir: Path,
             services: dict[str, int | None], postgres_dsn: str | None) -> list[tuple]:
    from sinks.__main__ import make_sink

    total = sum(ends.values())
    stages = []
    stages.append(("consume", stage_consume(env, topic, total, services)))
    os.environ.update(own_store(sink_name, env, postgres_dsn))
    prepare = make_sink(sink_name).prepare
    stages.append(("consume + prepare", stage_consume(env, topic, total, services, prepare)))
    store_env = own_store(sink_name, env, postgres_dsn)
    store = stage_store(sink_name, store_env, topic, total, services)
    if sink_name == "lake":
        stages.append(("group + gzip", store["compress"]))
    stages.append(("store alone", store["store"]))
    sink_env = own_store(sink_name, env, postgres_dsn)
    sink = stage_sink(sink_name, sink_env, ends, workdir, services)
    if sink_name == "lake":
        sink["objects"] = count_objects(sink_env, topic)
    stages.append(("sink", sink))
    return stages


def print_stages(sink_name: str, total: int, clients: int, stages: list[tuple]) -> None:
    store = "postgres" if sink_name == "timescale" else "s3"
    print(f"\n{sink_name}, {total:,} records, {clients:,} clients")
    print(f"  {'stage':<18} {'records/s':>10}  {'cpu us/record: client':>21} "
          f"{store:>8} {'kafka':>6}  peak_rss_mb")
    rates = {}
    for name, result in stages:
        rate = result["records"] / result["seconds"] if result["seconds"] else float("inf")
        rates[name] = rate
        per = {k: v / result["records"] * 1e6 for k, v in result["cpu"].items()}
        rss = f"{result['peak_rss_mb']:.0f}" if "peak_rss_mb" in result else "-"
        print(f"  {name:<18} {rate:>10,.0f}  {per.get('client', 0):>21.1f} "
              f"{per.get(store, 0):>8.1f} {per.get('kafka', 0):>6.1f}  {rss:>11}")
    slowest = min((r, n) for n, r in rates.items() if n != "sink")
    print(f"  sink / slowest stage ({slowest[1]}): {rates['sink'] / slowest[0]:.2f}")
    sink = dict(stages)["sink"]
    print(f"  sink drain from its start: {sink['drain_s']:.1f} s")
    if "objects" in sink:
        per_million = sink["objects"] / total * 1e6
        store = dict(stages)["store alone"]
        print(f"  objects: {sink['objects']:,} ({total / sink['objects']:,.0f} records an "
              f"object, {store['bytes'] / store['objects'] / 1e6:.2f} MB compressed on "
              f"average as the store stage cut them); PUTs per million records: "
              f"{per_million:,.0f} (${per_million / 1000 * PUT_PRICE_PER_1000:.2f} at S3's "
              "list price)")
    print(flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", choices=["timescale", "lake", "both"], default="both")
    parser.add_argument("--records", type=int, nargs="+", default=[200_000])
    parser.add_argument("--sizes", action="store_true", help="50,000, 200,000 and 800,000")
    parser.add_argument("--clients", type=int, default=20, help="client IPs (default 20)")
    parser.add_argument("--rate", type=float, default=None,
                        help="records a second the records' times say they came at (default: "
                             "over 6 hours, as bench/sink_throughput.py); the lake's objects "
                             "follow the hours the records fall in")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the sinks, e.g. --set SINK_BATCH_MAX_AGE_MS=1000")
    parser.add_argument("--quick", action="store_true", help="2,000 records, as CI does")
    args = parser.parse_args()
    sizes = list(SIZES) if args.sizes else args.records
    if args.quick:
        sizes = [2000]
    sinks = ["timescale", "lake"] if args.sink == "both" else [args.sink]
    extra = dict(item.split("=", 1) for item in args.set)

    with tempfile.TemporaryDirectory(prefix="tapline-stages-") as tmp:
        workdir = Path(tmp)
        kafka = kafka_from_env(workdir / "kafka")
        kafka.start()
        started = [kafka]
        try:
            env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "LOG_LEVEL": "WARNING",
                   **extra}
            addresses = {"kafka": kafka.bootstrap_servers}
            postgres_dsn = None
            if "timescale" in sinks:
                postgres = postgres_from_env(workdir / "postgres")
                postgres.start()
                started.append(postgres)
                postgres_dsn = postgres.dsn
                addresses["postgres"] = postgres.dsn
            if "lake" in sinks:
                s3 = s3_from_env(workdir / "s3")
                s3.start()
                started.append(s3)
                env.update({"S3_ENDPOINT_URL": s3.endpoint_url, "S3_ACCESS_KEY_ID": "tapline",
                            "S3_SECRET_ACCESS_KEY": "tapline"})
                addresses["s3"] = s3.endpoint_url
            services = {name: listening_pid(int(address.rsplit(":", 1)[1].split("/")[0]))
                        for name, address in addresses.items()}
            print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                  "(1 and 5 min)", flush=True)
            for total in sizes:
                topic = f"stages-{uuid.uuid4().hex[:8]}"
                spread_s = total / args.rate if args.rate else 6 * 3600
                fill(kafka.bootstrap_servers, topic, total, args.clients, spread_s)
                ends = asyncio.run(end_offsets(kafka.bootstrap_servers, topic))
                if sum(ends.values()) != total:
                    raise SystemExit(f"the topic holds {sum(ends.values())}, not {total}")
                for sink_name in sinks:
                    topic_env = {**env, "CAPTURE_TOPIC": topic}
                    if args.quick and sink_name == "lake":  # not the lake's minute for 2,000
                        topic_env.setdefault("SINK_BATCH_MAX_AGE_MS", "1000")
                    stages = run_sink(sink_name, topic_env, topic, ends, workdir, services,
                                      postgres_dsn)
                    print_stages(sink_name, total, args.clients, stages)
        finally:
            for service in reversed(started):
                service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
