"""Both sinks under a steady stream: records produced straight to Kafka at a fixed rate for
minutes, while the TimescaleDB and the lake sink consume it with their default settings; every
few seconds each sink's lag (records on the topic not yet committed by its group) and memory.

    .venv/bin/python bench/sustained.py                          # 5,000 records/s for 5 minutes
    .venv/bin/python bench/sustained.py --rate 5000 --seconds 600
    .venv/bin/python bench/sustained.py --quick                  # 500/s for 10 s, as CI does

The records are bench/sink_throughput.py's realistic ones (20 clients), made once as a pool of
20,000 and sent again with a new id each time (the id is the database's key; the bytes are
otherwise the pool's). Keeping up means the lag stays bounded (by what a batch holds: the
lake closes a partition's batch at 32 MiB or 60 s) and memory does not grow; the last lines
say how far behind each sink was at most, at the end of the stream, and how long after it
everything was committed, with each sink's RSS at the start of the stream and at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from bench.sink_throughput import PARTITIONS, cpu_seconds, end_offsets  # noqa: E402
from capture.topics import ensure_topic  # noqa: E402
from stack import (  # noqa: E402
    factories,
    free_port,
    kafka_from_env,
    postgres_from_env,
    s3_from_env,
)
from stack.s3 import create_bucket  # noqa: E402
from stack.support import fresh_database  # noqa: E402

POOL = 20_000
SAMPLE_S = 5.0
TICK_S = 0.05


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pool(clients: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, where the id starts) for POOL realistic records."""
    records = []
    for key, value in factories.realistic(POOL, total=POOL, clients=clients):
        at = value.index(b'"id":"') + 6
        records.append((key, value, at))
    return records


async def produce(bootstrap: str, topic: str, rate: float, seconds: float,
                  records: list[tuple[bytes, bytes, int]], sent: list[int]) -> None:
    """`rate` records a second for `seconds`, in ticks; `sent[0]` counts them."""
    # Uncompressed: the producer shares the two cores with what it measures.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_request_size=8 << 20, max_batch_size=1 << 20)
    await producer.start()
    try:
        began = time.monotonic()
        futures = []
        while (elapsed := time.monotonic() - began) < seconds:
            due = int(min(elapsed + TICK_S, seconds) * rate)
            while sent[0] < due:
                key, value, at = records[sent[0] % len(records)]
                value = value[:at] + str(uuid.uuid4()).encode() + value[at + 36:]
                futures.append(await producer.send(topic, value, key=key))
                sent[0] += 1
            if len(futures) > 10_000:
                await asyncio.gather(*futures)
                futures = []
            await asyncio.sleep(max(0.0, began + elapsed + TICK_S - time.monotonic()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def lags(bootstrap: str, topic: str, groups: dict[str, str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        commits = {}
        for name, group in groups.items():
            try:
                commits[name] = await admin.list_consumer_group_offsets(group)
            except Exception:  # not there yet, or rebalancing
                commits[name] = {}
        # The ends after the commits: a commit read later could pass an end read earlier.
        ends = await end_offsets(bootstrap, topic)
        return {name: sum(end - (committed[tp].offset if tp in committed else 0)
                          for tp, end in ends.items())
                for name, committed in commits.items()}
    finally:
        await admin.close()


async def watch(bootstrap: str, topic: str, groups: dict[str, str], pids: dict[str, int],
                sent: list[int], producing: asyncio.Task, rows: list[dict]) -> None:
    began = time.monotonic()
    while True:
        await asyncio.sleep(SAMPLE_S)
        behind = await lags(bootstrap, topic, groups)
        rows.append({"t": time.monotonic() - began, "sent": sent[0], "lag": behind,
                     "rss": {name: rss_mb(pid) for name, pid in pids.items()},
                     "cpu": {name: cpu_seconds(pid) for name, pid in pids.items()},
                     "producing": not producing.done()})
        row = rows[-1]
        print(f"  {row['t']:6.0f} s  sent {row['sent']:>9,}  "
              + "  ".join(f"{name}: lag {row['lag'][name]:>7,} rss {row['rss'][name]:5.0f} MB"
                          for name in groups), flush=True)
        if producing.done() and not any(behind.values()):
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="records a second")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.seconds = 500.0, 10.0

    with tempfile.TemporaryDirectory(prefix="tapline-sustained-") as tmp:
        workdir = Path(tmp)
        services = [kafka_from_env(workdir / "kafka"), postgres_from_env(workdir / "pg"),
                    s3_from_env(workdir / "s3")]
        for service in services:
            service.start()
        kafka, postgres, s3 = services
        procs: dict[str, subprocess.Popen] = {}
        try:
            topic = f"sustained-{uuid.uuid4().hex[:8]}"
            bootstrap = kafka.bootstrap_servers
            asyncio.run(ensure_topic(bootstrap, topic, partitions=PARTITIONS,
                                     max_record_bytes=4 << 20))
            create_bucket(s3.endpoint_url, topic)
            groups = {name: f"{name}-{topic}" for name in ("timescale", "lake")}
            common = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                      "CAPTURE_TOPIC": topic, "LOG_LEVEL": "WARNING"}
            envs = {
                "timescale": {"DATABASE_URL": fresh_database(postgres.dsn)},
                "lake": {"S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": topic,
                         "S3_ACCESS_KEY_ID": "tapline", "S3_SECRET_ACCESS_KEY": "tapline",
                         **({"SINK_BATCH_MAX_AGE_MS": "2000"} if args.quick else {})},
            }
            for name, env in envs.items():
                log = (workdir / f"{name}.log").open("wb")
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "sinks", name], cwd=ROOT, stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**common, **env, "SINK_GROUP_ID": groups[name],
                         "SINK_METRICS_PORT": str(free_port())})
            records = pool(args.clients)
            print(f"load average: {os.getloadavg()[0]:.2f}; {args.rate:,.0f} records/s for "
                  f"{args.seconds:g} s, {sum(len(r[1]) for r in records) / len(records):,.0f} B a "
                  "record on average", flush=True)
            rows: list[dict] = []
            sent = [0]

            async def run() -> float:
                producing = asyncio.create_task(
                    produce(bootstrap, topic, args.rate, args.seconds, records, sent))
                watching = asyncio.create_task(watch(
                    bootstrap, topic, groups, {n: p.pid for n, p in procs.items()}, sent,
                    producing, rows))
                await producing
                ended = time.monotonic()
                await asyncio.wait_for(watching, timeout=600)
                return time.monotonic() - ended

            caught_up_s = asyncio.run(run())
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"the {name} sink exited; see {workdir / name}.log")
            during = [r for r in rows if r["producing"]] or rows
            total = sum((asyncio.run(end_offsets(bootstrap, topic))).values())
            print(f"\nsent {sent[0]:,} records ({total:,} on the topic) in {args.seconds:g} s "
                  f"({sent[0] / args.seconds:,.0f} a second); "
                  f"every record committed by both sinks {caught_up_s:.0f} s (at most "
                  f"{SAMPLE_S:g} s more) after the last was sent")
            for name in groups:
                first, last = during[0], during[-1]
                cpu = (last["cpu"][name] - first["cpu"][name]) / max(
                    1, last["sent"] - first["sent"]) * 1e6
                print(f"  {name:<9} lag at most {max(r['lag'][name] for r in during):>8,} "
                      f"records while producing (at its end {last['lag'][name]:,}); RSS "
                      f"{first['rss'][name]:.0f} MB at {first['t']:.0f} s, "
                      f"{last['rss'][name]:.0f} MB at {last['t']:.0f} s, at most "
                      f"{max(r['rss'][name] for r in during):.0f} MB; {cpu:.1f} us of CPU "
                      "a record")
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(60)
            for service in reversed(services):
                service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
