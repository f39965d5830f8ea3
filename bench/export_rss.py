"""Peak memory of `tapline export --har` over a big lake: it streams, so it stays flat.

    .venv/bin/python -m bench.export_rss [--records 200000] [--clients 50]

Starts moto's S3 server (stack.S3Server), writes `--records` realistic records
(stack.factories.realistic: a 20 KB body one time in 20, a 4 KB listing one answer in 10)
into a bucket as the lake sink lays them out (gzip NDJSON per date/hour/client IP, one object
per prefix per batch of 50,000), then runs `python -m tapline.cli export --har -o FILE` as its
own process and prints its peak RSS (its own VmHWM), the time it took, and the sizes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import orjson

from bench.common import ROOT
from capture.lake_layout import key_prefix, object_key
from stack import S3Server
from stack.factories import realistic

BATCH = 50_000
# The export as its own process, which says its peak RSS last: VmHWM, the high-water mark of
# its own memory after exec. (getrusage's ru_maxrss would not do: Linux carries over the
# parent's peak through the vfork before exec, and the parent holds the records it wrote.)
CHILD = """
import sys
from tapline.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print(status.split("VmHWM:")[1].split()[0], file=sys.stderr)
sys.exit(code)
"""
KEYS = {"S3_ACCESS_KEY_ID": "tapline", "S3_SECRET_ACCESS_KEY": "tapline-secret"}


def fill(endpoint: str, bucket: str, records: int, clients: int) -> tuple[int, int]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=KEYS["S3_ACCESS_KEY_ID"],
                      aws_secret_access_key=KEYS["S3_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=bucket)
    objects = raw = 0
    for first in range(0, records, BATCH):
        groups: dict[str, list[bytes]] = defaultdict(list)
        for _key, value in realistic(min(BATCH, records - first), first=first, total=records,
                                     clients=clients):
            record = orjson.loads(value)
            groups[key_prefix(record["started_at"], record["client_ip"])].append(value)
            raw += len(value) + 1
        puts = [(object_key(prefix, "http-captures", 0, first, first + len(lines) - 1),
                 gzip.compress(b"\n".join(lines) + b"\n", 1)) for prefix, lines in groups.items()]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), puts))
        objects += len(puts)
        print(f"  wrote {first + min(BATCH, records - first):,} records", flush=True)
    return objects, raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s3 = S3Server(Path(tmp) / "s3")
        s3.start()
        try:
            began = time.perf_counter()
            objects, raw = fill(s3.endpoint_url, "captures", args.records, args.clients)
            print(f"lake: {args.records:,} records, {raw / 1e6:,.0f} MB of NDJSON in "
                  f"{objects:,} objects ({time.perf_counter() - began:.0f}s to write)")
            out = Path(tmp) / "all.har"
            env = {**os.environ, "S3_ENDPOINT_URL": s3.endpoint_url, "S3_BUCKET": "captures",
                   **KEYS}
            began = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, "export", "--har", "-o",
                                   str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
            took = time.perf_counter() - began
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            said, _, peak_kb = done.stderr.strip().rpartition("\n")
            peak_mb = int(peak_kb) / 1024
            print(f"export: {said.strip()}; {out.stat().st_size / 1e6:,.0f} MB of HAR "
                  f"in {took:.1f}s ({args.records / took:,.0f} entries/s); peak RSS "
                  f"{peak_mb:,.0f} MB")
        finally:
            s3.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
