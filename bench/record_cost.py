"""What the capture path costs per exchange, stage by stage, without a proxy around it.

    .venv/bin/python bench/record_cost.py            # 20,000 small GETs, 1,000 100 KB POSTs
    .venv/bin/python bench/record_cost.py --quick    # a few hundred, as CI does

mitmproxy's own test flows stand for the exchanges: a small keep-alive GET (four request
headers, a JSON answer of about 60 bytes) and a POST of a 100 KB JSON object; query strings,
answers and bodies differ from flow to flow (seeded), so that compression sees records as
alike as real traffic's, not copies. Each stage
runs over all the flows in turn and is timed with the process's CPU clock: the body hooks
(`tap_request`, `tap_response`), `build_record`, redaction, `encode` (orjson), and then the
Kafka client's compression of the encoded records in 1 MiB batches, with each codec the
producer can use (`KAFKA_COMPRESSION`), as aiokafka calls them.

To compare with an earlier commit, run the same file from a checkout of it (`git worktree add
DIR COMMIT; cp bench/record_cost.py DIR/bench/; cd DIR; python bench/record_cost.py`): the
file imports the code of the checkout it is in.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import codec  # noqa: E402
from mitmproxy import http  # noqa: E402
from mitmproxy.test import tflow  # noqa: E402

from capture import encode  # noqa: E402
from proxy.addon import make_redactor  # noqa: E402
from proxy.exchange import build_record  # noqa: E402
from proxy.settings import ProxySettings  # noqa: E402
from proxy.taps import tap_request, tap_response  # noqa: E402

CAP = 1 << 20
BATCH_BYTES = 1 << 20
REPEATS = 5
WORDS = ("alpha", "beta", "gamma", "delta", "order", "item", "user", "price", "lorem", "ipsum",
         "dolor", "amet", "quantity", "status", "shipped", "pending", "blue", "large")
CODECS: dict[str, Callable[[bytes], bytes]] = {
    "lz4 (aiokafka: level 9)": codec.lz4_encode,
    "zstd (aiokafka: level 3)": codec.zstd_encode,
    "snappy": codec.snappy_encode,
    "gzip (aiokafka: level 9)": codec.gzip_encode,
}


def small_get(rng: random.Random) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.method = "GET"
    flow.request.path = f"/small?x={rng.randrange(10**6)}"
    flow.request.headers = http.Headers([
        (b"Host", b"127.0.0.1:5000"), (b"User-Agent", b"ApacheBench/2.3"), (b"Accept", b"*/*"),
        (b"Connection", b"keep-alive")])
    flow.request.content = b""
    flow.response.headers = http.Headers([
        (b"Server", b"gunicorn"), (b"Date", b"Tue, 01 Dec 2026 03:00:00 GMT"),
        (b"Connection", b"keep-alive"), (b"Content-Type", b"application/json"),
        (b"Content-Length", b"62")])
    flow.response.content = orjson.dumps(
        {"ok": True, "items": [rng.randrange(1000) for _ in range(3)],
         "message": " ".join(rng.choice(WORDS) for _ in range(3))})
    return flow


def json_body(rng: random.Random, size: int = 100_000) -> bytes:
    items, length = [], 0
    while length < size:
        item = {"id": rng.randrange(10**6), "name": f"item-{rng.randrange(10**4)}",
                "qty": rng.randrange(100), "tags": rng.sample(WORDS, 2),
                "note": " ".join(rng.choice(WORDS) for _ in range(8))}
        items.append(item)
        length += len(orjson.dumps(item)) + 1
    return orjson.dumps({"batch": rng.randrange(10**6), "items": items})


def post_100kb(body: bytes) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.method = "POST"
    flow.request.path = "/upload"
    flow.request.headers = http.Headers([
        (b"Host", b"127.0.0.1:5000"), (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode())])
    flow.request.content = body
    flow.response.headers = http.Headers([
        (b"Content-Type", b"application/json"), (b"Content-Length", b"20")])
    flow.response.content = b'{"ok": true, "n": 1}'
    return flow


def timed(items: list, stage: Callable) -> tuple[float, list]:
    """Microseconds of CPU per item, and what the stage returned for each.

    The cyclic garbage collector is paused while a stage runs: its work depends on how many
    objects the earlier stages left alive (thousands of records, kept for the next stage),
    not on the stage, and made the same stage cost 30-60 µs more or less depending on the
    order the stages ran in."""
    gc.collect()
    gc.disable()
    try:
        began = time.process_time()
        out = [stage(item) for item in items]
        return (time.process_time() - began) / len(items) * 1e6, out
    finally:
        gc.enable()


def measure(name: str, flows: list[http.HTTPFlow]) -> None:
    redactor = make_redactor(ProxySettings.from_env({"CAPTURE_REDACT_KEY": "bench"}))
    stages: list[tuple[str, float]] = []
    cost, _ = timed(flows, lambda f: tap_request(f, CAP))
    stages.append(("tap_request hook", cost))
    cost, _ = timed(flows, lambda f: tap_response(f, CAP))
    stages.append(("tap_response hook", cost))
    # Building and redaction alternate, REPEATS times, and each is the median of its rounds:
    # one pass scatters by ±20% on a shared machine, and redaction's cost is a difference.
    builds, redactions = [], []
    for flow in flows:  # untimed: a flow's first read fills mitmproxy's lazy caches
        build_record(flow, app="bench", body_cap=CAP)
    for _ in range(REPEATS):
        cost, records = timed(flows, lambda f: build_record(f, app="bench", body_cap=CAP))
        builds.append(cost)
        if "redactor" in inspect.signature(build_record).parameters:
            # Redaction happens inside build_record (it reads the bytes on the wire): its
            # cost is what building the record with the redactor adds.
            redacted, records = timed(flows, lambda f: build_record(
                f, app="bench", body_cap=CAP, redactor=redactor))
            redactions.append(redacted - cost)
        else:  # an older checkout: a pass over the built record
            cost, records = timed(records, redactor.redact)
            redactions.append(cost)
    stages.append(("build_record", statistics.median(builds)))
    stages.append(("redaction", statistics.median(redactions)))
    cost, encoded = timed(records, encode)
    stages.append(("encode (orjson)", cost))
    record_bytes = sum(map(len, encoded)) / len(encoded)
    per_batch = max(1, int(BATCH_BYTES // record_bytes))
    batches = [b"".join(encoded[i:i + per_batch]) for i in range(0, len(encoded), per_batch)]
    print(f"\n{name}: {len(flows):,} exchanges, records of {record_bytes:,.0f} bytes, "
          f"compressed in batches of {per_batch:,}")
    print(f"  {'stage':<28} {'CPU µs/exchange':>16}")
    for stage, cost in stages:
        print(f"  {stage:<28} {cost:>16.1f}")
    print(f"  {'capture path in all':<28} {sum(c for _s, c in stages):>16.1f}")
    print(f"  {'compression (per record)':<28} {'CPU µs/record':>16} {'MB/s':>8} {'ratio':>7}")
    for codec_name, compress in CODECS.items():
        began = time.process_time()
        sizes = [len(compress(batch)) for batch in batches]
        spent = time.process_time() - began
        raw = sum(map(len, batches))
        print(f"  {codec_name:<28} {spent / len(encoded) * 1e6:>16.1f} "
              f"{raw / spent / 1e6:>8.0f} {raw / sum(sizes):>7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20_000, help="small GETs")
    parser.add_argument("--large", type=int, default=1_000, help="100 KB POSTs")
    parser.add_argument("--quick", action="store_true", help="a few hundred, as CI does")
    args = parser.parse_args()
    if args.quick:
        global REPEATS
        args.small, args.large, REPEATS = 500, 50, 1
    rng = random.Random(1)
    measure("GET small", [small_get(rng) for _ in range(args.small)])
    measure("POST 100 KB JSON", [post_100kb(json_body(rng)) for _ in range(args.large)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
