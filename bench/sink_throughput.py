"""How fast a sink drains a topic: fill it with N realistic records, start the sink, time it
until every offset is committed, and report records per second, cost per record and peak memory.

    .venv/bin/python bench/sink_throughput.py --sink timescale            # 200,000 records
    .venv/bin/python bench/sink_throughput.py --sink lake --sizes         # 50k, 200k and 800k
    .venv/bin/python bench/sink_throughput.py --sink timescale --profile  # where the time goes
    .venv/bin/python bench/sink_throughput.py --quick                     # a small run, as CI does

The records (stack.factories.realistic): 2,000 client IPs (--clients), started_at in time
order over 6 hours, one body in 20 of 20 KB, a 4 KB response one time in 10, six partitions
keyed by client IP. The clock starts when the sink process is started (so it includes the
sink's start: migration check, joining the group) and stops when the group's committed offset
of every partition equals the partition's end offset, read from Kafka itself, not from the
sink. "steady" is the rate in the middle of the drain: from the first look at the group's
offsets that finds 10% of the records committed to the first that finds 90%, or to the last
commit before none came for 3 s (no start-up, no migration, and no last batches waiting out
SINK_BATCH_MAX_AGE_MS at the end of the topic); the CPU columns are what the sink,
the store's server and Kafka's broker spent per record meanwhile (from /proc).

`--profile` runs the sink in this process under cProfile instead (the threads the sink hands
work to included) and prints where the time went, grouped into Kafka, decode, validate and
transform, write, and the rest; profiling slows everything, so its drain time is not a figure.

Services come from the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, S3_ENDPOINT_URL)
or are started on loopback by the stack launcher. Each run uses a new topic, group and
database, so runs do not disturb each other.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from stack import (  # noqa: E402
    factories,
    free_port,
    kafka_from_env,
    postgres_from_env,
    s3_from_env,
)
from stack.s3 import create_bucket  # noqa: E402
from stack.support import fresh_database, produce, sample, scrape  # noqa: E402

SIZES = (50_000, 200_000, 800_000)
PARTITIONS = 6
FILL_CHUNK = 25_000  # records made and produced at a time, so 800k never sit in memory
STALL_S = 3.0  # no commit for this long before 90%: the steady part ended at the last one


# --- the topic -------------------------------------------------------------------------------


def fill(bootstrap: str, topic: str, records: int, clients: int,
         spread_s: float = 6 * 3600) -> None:
    """`records` realistic records, their times in order over `spread_s` seconds."""
    for first in range(0, records, FILL_CHUNK):
        produce(bootstrap, topic, factories.realistic(
            min(FILL_CHUNK, records - first), first=first, total=records, clients=clients,
            spread_s=spread_s), partitions=PARTITIONS)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def wait_committed(bootstrap: str, group: str, ends: dict[TopicPartition, int],
                         alive=lambda: True, on_poll=lambda committed: None,
                         interval_s: float = 0.1) -> None:
    """Until the group's committed offsets reach `ends` on every partition; `on_poll` gets
    the number of records committed so far at each look."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            if not alive():
                raise SystemExit("the sink exited before it committed everything")
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except Exception:  # the group may not exist yet, or be rebalancing
                committed = {}
            done = {tp: committed[tp].offset if tp in committed else 0 for tp in ends}
            on_poll(sum(done.values()))
            if all(done[tp] >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(interval_s)
    finally:
        await admin.close()


# --- one run in its own process --------------------------------------------------------------


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children, live and reaped (0 when it is gone)."""
    def fields(p: int | str) -> list[str]:
        text = Path(f"/proc/{p}/stat").read_text()
        return text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces

    try:
        own = fields(pid)
    except OSError:
        return 0.0
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                stat = fields(child.name)
            except OSError:
                continue
            if stat[1] == str(pid):
                ticks += int(stat[11]) + int(stat[12])
    return ticks * _TICK_S


def listening_pid(port: int) -> int | None:
    """The process listening on a TCP port of this machine (services' CPU is measured)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_process(sink: str, env: dict[str, str], ends: dict[TopicPartition, int],
                workdir: Path, services: dict[str, int | None], consumers: int = 1) -> dict:
    """Time the sink from its start to the last commit. Also from 10% to 90% of the records
    committed, or to the last commit before the commits stall for STALL_S (the steady part: no
    start-up, no batches left to age at the end), with the CPU that the sink and the services
    spent meanwhile, read from /proc. With `consumers` above 1, that many sink processes
    share the group (and the partitions); their CPU is summed, their peak RSS is the
    largest of them."""
    ports = [free_port() for _ in range(consumers)]
    logs = [workdir / f"{env['CAPTURE_TOPIC']}-{n}.log" for n in range(consumers)]
    peak = 0
    first: dict = {}
    last: dict = {}
    moved: dict = {}  # the last look that found more committed than the one before
    total = sum(ends.values())
    procs: list[subprocess.Popen] = []

    def cpu() -> dict[str, float]:
        return {"sink": sum(cpu_seconds(proc.pid) for proc in procs),
                **{name: cpu_seconds(p) for name, p in services.items() if p}}

    def peak_now() -> int:
        return max(peak_rss_kb(proc.pid) for proc in procs)

    began = time.perf_counter()
    try:
        for port, log_path in zip(ports, logs, strict=True):
            run_env = {**os.environ, **env, "SINK_METRICS_PORT": str(port),
                       "LOG_LEVEL": "WARNING"}
            with log_path.open("wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "sinks", sink], cwd=ROOT,
                                              env=run_env, stdout=log,
                                              stderr=subprocess.STDOUT))

        def on_poll(committed: int) -> None:
            nonlocal peak
            peak = max(peak, peak_now())
            now = time.perf_counter()
            if committed >= 0.1 * total and not first:
                first.update(at=now, committed=committed, cpu=cpu())
            elif first and not last:
                if committed >= 0.9 * total:
                    last.update(at=now, committed=committed, cpu=cpu())
                elif committed > moved.get("committed", -1):
                    moved.update(at=now, committed=committed, cpu=cpu())
                elif now - moved["at"] >= STALL_S:
                    # Nothing committed for a while before 90%: the rest waits for its batch
                    # to age (SINK_BATCH_MAX_AGE_MS), the end of a finite topic, not the rate.
                    last.update(moved)

        try:
            asyncio.run(wait_committed(env["KAFKA_BOOTSTRAP_SERVERS"], env["SINK_GROUP_ID"],
                                       ends, alive=lambda: all(p.poll() is None for p in procs),
                                       on_poll=on_poll))
        except SystemExit:
            raise SystemExit(f"a sink exited early; see {logs}") from None
        ended = time.perf_counter()
        peak = max(peak, peak_now())
        if not last:  # the whole middle came in one commit: the end stands for 90%
            last.update(at=ended, committed=total, cpu=cpu())
        metrics = [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    return {"drain_s": ended - began, "peak_rss_mb": peak / 1024,
            "steady_records": last["committed"] - first["committed"],
            "steady_s": last["at"] - first["at"],
            "cpu_s": {name: last["cpu"][name] - first["cpu"][name] for name in last["cpu"]},
            "written": sum(sample(m, "tapline_sink_written_total", sink=sink) for m in metrics),
            "dead": sum(sample(m, "tapline_sink_dead_lettered_total", sink=sink)
                        for m in metrics)}


# --- one run in this process, profiled -------------------------------------------------------


def run_profiled(sink_name: str, env: dict[str, str], ends: dict[TopicPartition, int],
                 records: int) -> dict:
    os.environ.update({**env, "SINK_METRICS_PORT": "0"})
    from sinks.__main__ import make_sink
    from sinks.loop import ConsumerLoop
    from sinks.metrics import SinkMetrics
    from sinks.settings import LoopSettings

    settings = LoopSettings.from_env(sink_name)
    sink = make_sink(sink_name)
    metrics = SinkMetrics(sink_name)
    loop = ConsumerLoop(sink, settings, metrics)
    thread_profiles: list[cProfile.Profile] = []
    thread_seconds = [0.0]
    to_thread = asyncio.to_thread

    async def profiled_to_thread(fn, /, *args, **kwargs):
        def run():
            profile = cProfile.Profile()
            began = time.perf_counter()
            try:
                return profile.runcall(fn, *args, **kwargs)
            finally:
                thread_seconds[0] += time.perf_counter() - began
                thread_profiles.append(profile)
        return await to_thread(run)

    async def main() -> None:
        task = asyncio.create_task(loop.run())
        await wait_committed(env["KAFKA_BOOTSTRAP_SERVERS"], env["SINK_GROUP_ID"], ends,
                             alive=lambda: not task.done())
        loop.stop()
        await task

    asyncio.to_thread = profiled_to_thread
    profile = cProfile.Profile()
    began = time.perf_counter()
    try:
        profile.runcall(asyncio.run, main())
    finally:
        asyncio.to_thread = to_thread
    elapsed = time.perf_counter() - began
    stats = pstats.Stats(profile)
    for extra in thread_profiles:
        stats.add(extra)
    print_profile(stats, sink, elapsed, records, thread_seconds[0])
    return {"drain_s": elapsed, "peak_rss_mb": peak_rss_kb(os.getpid()) / 1024,
            "written": metrics.value("tapline_sink_written_total"),
            "dead": metrics.value("tapline_sink_dead_lettered_total")}


def _where(key: tuple[str, int, str]) -> str:
    filename, _line, name = key
    return f"{name} ({filename})" if filename == "~" else (
        f"{name} ({Path(filename).parent.name}/{Path(filename).name}:{_line})")


def print_profile(stats: pstats.Stats, sink, elapsed: float, records: int,
                  thread_seconds: float) -> None:
    """Time by stage, from the profile's cumulative times of the stages' entry points.

    decode = orjson.loads; validate + transform = the sink's `prepare` less decode; write =
    the sink's `write` in the event loop plus what it runs in worker threads (which overlaps
    the loop's time when the loop goes on meanwhile); Kafka = own time in aiokafka (fetch,
    record parsing, commits); waiting = the event loop idle in epoll; the rest is the loop,
    the bench's own polling and everything else."""
    entries = stats.stats  # type: ignore[attr-defined]

    def cumulative(match) -> float:
        return sum(cum for key, (_cc, _nc, _tt, cum, _callers) in entries.items()
                   if match(key))

    def own(match) -> float:
        return sum(tt for key, (_cc, _nc, tt, _cum, _callers) in entries.items()
                   if match(key))

    module = type(sink).__module__.replace(".", "/") + ".py"
    decode = cumulative(lambda k: "orjson.loads" in k[2])
    prepare = cumulative(lambda k: k[0].endswith(module) and k[2] == "prepare")
    write = cumulative(lambda k: k[0].endswith(module) and k[2] == "write") + thread_seconds
    kafka = own(lambda k: "aiokafka" in k[0] or "aiokafka" in k[2])
    waiting = own(lambda k: "poll" in k[2] and "epoll" in k[2])
    stages = [("Kafka (fetch, parse, commit)", kafka), ("decode (orjson.loads)", decode),
              ("validate + transform", prepare - decode), ("write", write),
              ("waiting (event loop idle)", waiting)]
    rest = elapsed - sum(t for _name, t in stages) + thread_seconds
    print(f"\nprofile of {records:,} records, {elapsed:.1f} s under cProfile (profiling "
          "slows Python code several times; compare shares, not totals):")
    for name, seconds in [*stages, ("the rest (loop, bench, other threads' waits)", rest)]:
        print(f"  {name:<46} {seconds:7.2f} s {seconds / elapsed:6.1%} "
              f"{seconds / records * 1e6:8.1f} us/record")
    print("\n  top functions by own time:")
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:18]
    for key, (_cc, calls, own_s, cum_s, _callers) in top:
        print(f"  {own_s:7.2f} s own {cum_s:7.2f} s cum {calls:>9} calls  {_where(key)}")
    print(flush=True)


# --- main ------------------------------------------------------------------------------------


def count_objects(env: dict[str, str], topic: str) -> int:
    from capture.lake_layout import SUFFIX
    from sinks.lake import LakeSettings

    fs = LakeSettings.from_env(env).filesystem(asynchronous=False)
    return sum(1 for key in fs.find(env["S3_BUCKET"]) if key.endswith(SUFFIX))


def run_one(args, records: int, batch: int, env: dict[str, str], bootstrap: str,
            postgres_dsn: str | None, workdir: Path, pids: dict[str, int | None]) -> dict:
    run_env = dict(env)
    if batch:
        run_env["SINK_BATCH_MAX_RECORDS"] = str(batch)
    if postgres_dsn:
        run_env["DATABASE_URL"] = fresh_database(postgres_dsn)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    run_env["CAPTURE_TOPIC"] = topic
    if args.sink == "lake":  # a bucket per run: counting its objects lists only this run's
        run_env["S3_BUCKET"] = topic
        create_bucket(run_env["S3_ENDPOINT_URL"], topic)
    run_env["SINK_GROUP_ID"] = f"bench-{uuid.uuid4().hex[:8]}"
    fill(bootstrap, topic, records, args.clients)
    ends = asyncio.run(end_offsets(bootstrap, topic))
    if sum(ends.values()) != records:
        raise SystemExit(f"the topic holds {sum(ends.values())} records, not {records}")
    if args.profile:
        result = run_profiled(args.sink, run_env, ends, records)
    else:
        result = run_process(args.sink, run_env, ends, workdir, pids, args.consumers)
    # Several consumers may each write a batch whose partition moved to another during a
    # rebalance before its commit: the same records twice (the stores keep one). One
    # consumer writes each record once.
    written_ok = (result["written"] >= records if args.consumers > 1
                  else result["written"] == records)
    if not written_ok or result["dead"]:
        raise SystemExit(f"{result['written']:.0f} written and {result['dead']:.0f} "
                         f"dead-lettered of {records}")
    if postgres_dsn:
        with psycopg.connect(run_env["DATABASE_URL"]) as db:
            (rows,) = db.execute("SELECT count(*) FROM http_requests").fetchone()
        if rows != records:
            raise SystemExit(f"http_requests holds {rows} rows, not {records}")
    if args.sink == "lake":
        result["objects"] = count_objects(run_env, topic)
    return result


def result_line(args, records: int, batch: int, store: str, result: dict) -> str:
    steady_records = result.get("steady_records") or 0
    steady = (f"{steady_records / result['steady_s']:,.0f}"
              if steady_records and result["steady_s"] > 0 else "-")
    per_record = {name: f"{seconds / steady_records * 1e6:.1f}"
                  for name, seconds in result.get("cpu_s", {}).items() if steady_records}
    sink = args.sink if args.consumers == 1 else f"{args.sink} x{args.consumers}"
    line = (f"{sink:<10} {records:>7} {args.clients:>7} {batch or 'default':>7} "
            f"{result['drain_s']:>8.2f} {records / result['drain_s']:>10,.0f} {steady:>9} "
            f"{result['drain_s'] / records * 1e6:>10.1f} {result['peak_rss_mb']:>12.0f} "
            f"{per_record.get('sink', '-'):>9} {per_record.get(store, '-'):>{len(store) + 4}} "
            f"{per_record.get('kafka', '-'):>10}")
    if "objects" in result:
        line += f" {result['objects']:>8} {records / max(result['objects'], 1):>15.1f}"
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", choices=["timescale", "lake"], default="timescale")
    parser.add_argument("--records", type=int, nargs="+", default=[200_000],
                        help="topic sizes to run, one run each (default: 200000)")
    parser.add_argument("--sizes", type=int, nargs="*",
                        help="run several sizes and compare the cost per record; alone, the "
                             "sizes 50000 200000 800000")
    parser.add_argument("--clients", type=int, default=2000, help="client IPs (default 2000)")
    parser.add_argument("--batch", type=int, nargs="+", default=[0],
                        help="SINK_BATCH_MAX_RECORDS values to run (default: the sink's own)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the sink, e.g. --set LAKE_GZIP_LEVEL=1")
    parser.add_argument("--consumers", type=int, default=1,
                        help="sink processes sharing the group and the partitions (default 1)")
    parser.add_argument("--profile", action="store_true",
                        help="run the sink in this process under cProfile, print where the "
                             "time goes")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 records from 20 clients, once, as CI does")
    args = parser.parse_args()
    sizes = args.records if args.sizes is None else (args.sizes or list(SIZES))
    extra = dict(item.split("=", 1) for item in args.set)
    if args.quick:
        sizes, args.clients = [2000], 20
        if args.sink == "lake":  # do not wait the lake's 5 s for a batch to fill
            extra.setdefault("SINK_BATCH_MAX_AGE_MS", "1000")

    with tempfile.TemporaryDirectory(prefix="tapline-bench-") as tmp:
        workdir = Path(tmp)
        kafka = kafka_from_env(workdir / "kafka")
        kafka.start()
        services = [kafka]
        try:
            env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, **extra}
            if args.sink == "timescale":
                postgres = postgres_from_env(workdir / "postgres")
                postgres.start()
                services.append(postgres)
            else:
                s3 = s3_from_env(workdir / "s3")  # with its bucket, `captures`
                s3.start()
                services.append(s3)
                env.update({"S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": "captures",
                            "S3_ACCESS_KEY_ID": "tapline", "S3_SECRET_ACCESS_KEY": "tapline"})
            store = "postgres" if args.sink == "timescale" else "s3"
            ports = {"kafka": kafka.bootstrap_servers,
                     store: postgres.dsn if args.sink == "timescale" else s3.endpoint_url}
            pids = {name: listening_pid(int(address.rsplit(":", 1)[1].split("/")[0]))
                    for name, address in ports.items()}
            print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                  "(1 and 5 min)")
            print("steady: from 10% to 90% committed; cpu: microseconds of CPU per record in "
                  "each process, steady part", flush=True)
            header = ("sink       records clients   batch  drain_s  records/s  steady/s  "
                      f"us/record  peak_rss_mb  cpu:sink  cpu:{store}  cpu:kafka")
            print(header + ("  objects  records/object" if args.sink == "lake" else ""),
                  flush=True)
            for records in sizes:
                for batch in args.batch:
                    result = run_one(args, records, batch, env, kafka.bootstrap_servers,
                                     postgres.dsn if args.sink == "timescale" else None,
                                     workdir, pids)
                    print(result_line(args, records, batch, store, result), flush=True)
        finally:
            for service in reversed(services):
                service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
