"""How long an outage the proxy's spool holds, and how fast it takes and gives back records.

    .venv/bin/python bench/spool_capacity.py            # 100,000 records of 2 KB
    .venv/bin/python bench/spool_capacity.py --quick    # 5,000, as CI does

Records of `--size` bytes (JSON-like text with a 16-byte key, as the proxy's records are) go
into a `proxy.spool.Spool` in the producer's chunks (2,000 records or 4 MiB), then are read
back and deleted in the pump's chunks. It prints the spool's payload and file size per
record, its write and read rates (wall clock, one thread, the machine's disk), and how long
an outage the default cap (CAPTURE_SPOOL_MAX_BYTES, 4 GiB of payload) holds at `--rate`
requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.spool import Spool
from proxy.spooler import SPOOL_CHUNK_BYTES, SPOOL_CHUNK_RECORDS

DEFAULT_CAP = 4 << 30


def records(n: int, size: int) -> list[tuple[bytes, bytes, float]]:
    rng = random.Random(7)
    words = [f"w{i}".encode() for i in range(500)]
    out = []
    for i in range(n):
        body = b" ".join(rng.choice(words) for _ in range(size // 3))[:size - 40]
        value = b'{"id":"%08d","body":"' % i + body.ljust(size - 40, b"x") + b'"}'
        out.append((b"%016d" % rng.randrange(10**15), value[:size], float(i)))
    return out


async def run(n: int, size: int, rate: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=os.environ.get("TMPDIR")))
    spool = Spool(folder, 0, 1, 1 << 40)
    spool.open()
    items = records(n, size)
    started = time.perf_counter()
    for i in range(0, n, SPOOL_CHUNK_RECORDS):
        await spool.append(items[i:i + SPOOL_CHUNK_RECORDS])
    wrote = time.perf_counter() - started
    payload = spool.bytes
    on_disk = sum(p.stat().st_size for p in folder.iterdir())
    started = time.perf_counter()
    while spool.records:
        rows = await spool.read(SPOOL_CHUNK_BYTES)
        await spool.delete([r[0] for r in rows], sum(len(r[1]) + len(r[2]) for r in rows))
    read = time.perf_counter() - started
    await spool.close()
    per_record = payload / n
    hold_s = DEFAULT_CAP / (per_record * rate)
    print(f"records: {n} of {size} bytes (+16-byte key)")
    print(f"payload per record: {per_record:.0f} B; file per record: {on_disk / n:.0f} B "
          f"(file/payload {on_disk / payload:.2f})")
    print(f"write: {n / wrote:,.0f} records/s ({payload / wrote / 1e6:.0f} MB/s); "
          f"read+delete: {n / read:,.0f} records/s")
    print(f"default cap {DEFAULT_CAP >> 30} GiB of payload at {rate:.0f} requests/s: "
          f"{hold_s / 60:.0f} minutes of outage ({DEFAULT_CAP * on_disk / payload / 2**30:.1f}"
          f" GiB of disk)")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(5_000 if args.quick else args.records, args.size, args.rate))


if __name__ == "__main__":
    main()
