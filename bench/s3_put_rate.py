"""How many PUTs a second the S3 server takes, the lake sink's way (s3fs, async, N at a time).

    .venv/bin/python bench/s3_put_rate.py                          # 2,000 PUTs at 1, 4, 16, 64
    .venv/bin/python bench/s3_put_rate.py --puts 500 --concurrency 16 --size 20000
    .venv/bin/python bench/s3_put_rate.py --quick

The lake sink writes one object per (partition, date, hour, client IP) of each batch, so with
many clients its rate is this server's PUT rate times the records per object. The server is
S3_ENDPOINT_URL when set, else moto's server on loopback, started here. Each object is
`--size` bytes of incompressible data under a new prefix.
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

from bench.sink_throughput import cpu_seconds, listening_pid  # noqa: E402
from sinks.lake import LakeSettings  # noqa: E402
from stack import s3_from_env  # noqa: E402


async def put_many(settings: LakeSettings, puts: int, concurrency: int, size: int) -> float:
    fs = settings.filesystem(asynchronous=True)
    client = await fs.set_session()
    prefix = uuid.uuid4().hex[:8]
    body = os.urandom(size)
    slots = asyncio.Semaphore(concurrency)

    async def put(n: int) -> None:
        async with slots:
            await fs._pipe_file(f"{settings.bucket}/{prefix}/{n}.jsonl.gz", body)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(put(n) for n in range(puts)))
        return time.perf_counter() - began
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--size", type=int, default=2000, help="bytes per object (2000)")
    parser.add_argument("--quick", action="store_true", help="100 PUTs at 16, as CI does")
    args = parser.parse_args()
    if args.quick:
        args.puts, args.concurrency = 100, [16]
    with tempfile.TemporaryDirectory(prefix="tapline-bench-") as tmp:
        s3 = s3_from_env(Path(tmp) / "s3")
        s3.start()
        try:
            settings = LakeSettings.from_env({
                "S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": "captures",
                "S3_ACCESS_KEY_ID": "tapline", "S3_SECRET_ACCESS_KEY": "tapline"})
            server = listening_pid(int(s3.endpoint_url.rsplit(":", 1)[1]))
            print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
                  "(1 and 5 min)")
            print("puts  concurrency  size_bytes  seconds  puts/s  server_cpu_ms/put",
                  flush=True)
            for concurrency in args.concurrency:
                before = cpu_seconds(server) if server else 0.0
                seconds = asyncio.run(put_many(settings, args.puts, concurrency, args.size))
                cpu = (f"{(cpu_seconds(server) - before) / args.puts * 1000:.2f}"
                       if server else "-")
                print(f"{args.puts:>4} {concurrency:>12} {args.size:>11} {seconds:>8.2f} "
                      f"{args.puts / seconds:>7.0f} {cpu:>18}", flush=True)
        finally:
            s3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
