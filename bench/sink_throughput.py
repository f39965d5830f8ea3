"""How fast a sink drains a topic: fill it with N realistic records, start the sink, time it
until every offset is committed (lag 0), and report records per second and peak memory.

    .venv/bin/python bench/sink_throughput.py --sink timescale --records 50000 --batch 5000
    .venv/bin/python bench/sink_throughput.py --quick          # a small run, as CI does

Services come from the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, S3_ENDPOINT_URL)
or are started on loopback by the stack launcher. Each run uses a new topic, group and
database, so runs do not disturb each other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stack import free_port, kafka_from_env, postgres_from_env, s3_from_env  # noqa: E402
from tests import factories  # noqa: E402
from tests.support import fresh_database, produce, sample, scrape  # noqa: E402


def peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_once(sink: str, records: int, batch: int, env: dict[str, str], workdir: Path) -> dict:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    produce(env["KAFKA_BOOTSTRAP_SERVERS"], topic,
            factories.encoded(records, clients=500, big_every=20), partitions=6)
    filled = time.perf_counter() - started
    port = free_port()
    run_env = {**os.environ, **env, "CAPTURE_TOPIC": topic,
               "SINK_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}",
               "SINK_BATCH_MAX_RECORDS": str(batch), "SINK_METRICS_PORT": str(port),
               "LOG_LEVEL": "WARNING"}
    log = (workdir / f"{topic}.log").open("wb")
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sinks", sink], cwd=ROOT, env=run_env,
                            stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    written = 0.0
    try:
        while written < records:
            time.sleep(0.2)
            if proc.poll() is not None:
                raise SystemExit(f"the sink exited early; see {log.name}")
            peak = max(peak, peak_rss_kb(proc.pid))
            try:
                written = sample(scrape(f"http://127.0.0.1:{port}/metrics"),
                                 "tapline_sink_written_total", sink=sink)
            except OSError:
                continue
        elapsed = time.perf_counter() - began
    finally:
        proc.terminate()
        proc.wait(30)
    return {"sink": sink, "records": records, "batch": batch, "fill_s": round(filled, 2),
            "drain_s": round(elapsed, 2), "records_per_s": round(records / elapsed),
            "peak_rss_mb": round(peak / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink", choices=["timescale", "lake"], default="timescale")
    parser.add_argument("--records", type=int, nargs="+", default=[50_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[5000])
    parser.add_argument("--quick", action="store_true", help="2,000 records, one batch size")
    args = parser.parse_args()
    if args.quick:
        args.records, args.batch = [2000], [500]

    with tempfile.TemporaryDirectory(prefix="tapline-bench-") as tmp:
        workdir = Path(tmp)
        kafka = kafka_from_env(workdir / "kafka")
        kafka.start()
        services = [kafka]
        try:
            env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
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
            print("sink       records  batch  drain_s  records/s  peak_rss_mb", flush=True)
            for records in args.records:
                for batch in args.batch:
                    if args.sink == "timescale":
                        env["DATABASE_URL"] = fresh_database(postgres.dsn)
                    result = run_once(args.sink, records, batch, env, workdir)
                    print(f"{result['sink']:<10} {records:>7} {batch:>6} "
                          f"{result['drain_s']:>8} {result['records_per_s']:>10} "
                          f"{result['peak_rss_mb']:>12}", flush=True)
        finally:
            for service in reversed(services):
                service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
