"""What redaction costs per KB of body, for plain, realistic, adversarial and deeply nested
bodies at 1 KB, 64 KB and 1 MiB: linear time means a flat column.

    .venv/bin/python bench/redaction_cost.py             # every shape, 3 sizes
    .venv/bin/python bench/redaction_cost.py --quick     # fewer repeats, as CI does
    .venv/bin/python bench/redaction_cost.py --markdown  # the table for docs/performance.md

Each body goes through `capture.redact.redact_body` as the proxy calls it (request side,
parameters read for small bodies). The cost columns are measured without a time budget, so
that they show the work itself (linear time: the same µs/KB at every size); CPU time of this
process per call, the median of the repeats. The last column is what the default policy, with
its 100 ms budget, makes of the 1 MiB body: kept as it came, redacted, or withheld and why.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from capture.redact import Policy, Redactor, redact_body  # noqa: E402

SIZES = {"1 KB": 1 << 10, "64 KB": 64 << 10, "1 MiB": 1 << 20}
WORDS = ("alpha", "beta", "gamma", "delta", "order", "item", "user", "price", "lorem", "ipsum",
         "dolor", "amet", "quantity", "status", "shipped", "pending", "blue", "large")


def repeat_to(unit: str, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size].encode()


def plain_json(size: int) -> bytes:
    """bench/record_cost.py's body: items of ids, names, words; nothing to redact."""
    rng = random.Random(size)
    items, length = [], 0
    while length < size - 64:
        item = {"id": rng.randrange(10**6), "name": f"item-{rng.randrange(10**4)}",
                "qty": rng.randrange(100), "tags": rng.sample(WORDS, 2),
                "note": " ".join(rng.choice(WORDS) for _ in range(8))}
        items.append(item)
        length += len(orjson.dumps(item)) + 1
    return orjson.dumps({"batch": 1, "items": items})


def realistic_json(size: int) -> bytes:
    """An API answer with users: e-mail addresses, a token each, keys that look like
    secrets' names and are not (keyboard, author), timestamps in milliseconds."""
    rng = random.Random(size)
    users, length = [], 0
    while length < size - 64:
        user = {"id": rng.randrange(10**9), "email": f"user{rng.randrange(10**6)}@example.com",
                "api_token": f"tok_{rng.getrandbits(96):024x}", "keyboard": "qwerty",
                "author": "someone", "created_ms": 1795000000000 + rng.randrange(10**9),
                "bio": " ".join(rng.choice(WORDS) for _ in range(10))}
        users.append(user)
        length += len(orjson.dumps(user)) + 1
    return orjson.dumps({"users": users})


def nested_json(size: int) -> bytes:
    """Objects 900 deep (under orjson's limit of 1024), padded with strings to the size."""
    depth = min(900, size // 16)
    pad = max(0, size - depth * 12) // depth
    return (('{"a":"' + "x" * pad + '","n":') * depth + "null" + "}" * depth).encode()


SHAPES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "plain JSON (nothing to redact)": ("application/json", plain_json),
    "realistic JSON (e-mails, tokens)": ("application/json", realistic_json),
    "form of secrets (password=x&...)": ("application/x-www-form-urlencoded",
                                         lambda n: repeat_to("password=x&", n)),
    "text: name=value pairs": ("text/plain", lambda n: repeat_to("token=a ", n)),
    "text: unterminated quotes": ("text/plain", lambda n: repeat_to('secret: "', n)),
    "text: one run, no delimiter": ("text/plain", lambda n: repeat_to("a", n)),
    "text: @ signs": ("text/plain", lambda n: repeat_to("a@b.", n)),
    "text: digits (card-like)": ("text/plain", lambda n: repeat_to("4111 ", n)),
    "text: JWT-like": ("text/plain", lambda n: repeat_to("eyJa.", n)),
    "XML: secret elements": ("application/xml", lambda n: repeat_to("<password>", n)),
    "HTML: inputs with values": ("text/html", lambda n: repeat_to('<input name=pin value=1>', n)),
    "JSON nested 900 deep": ("application/json", nested_json),
    "JSON nested past the parser": ("application/json",
                                    lambda n: b"[" * (n // 2) + b"]" * (n // 2)),
    "gzip of plain JSON": ("application/json",
                           lambda n: gzip.compress(plain_json(n - n // 64), 6, mtime=0)),
}


def outcome(body, data: bytes) -> str:
    if body.withheld:
        return f"withheld ({body.withheld})"
    if body.text.encode() == data:
        return "kept as it came"
    return "redacted"


def measure(repeats: int, sizes: dict[str, int]) -> list[tuple[str, str, float, str]]:
    unbounded = Redactor(b"bench", Policy(budget_ms=float("inf")))
    default = Redactor(b"bench", Policy())
    rows = []
    for shape, (content_type, make) in SHAPES.items():
        for label, size in sizes.items():
            data = make(size)
            encoding = ["gzip"] if shape.startswith("gzip") else []
            plain = data if not encoding else gzip.decompress(data)
            costs = []
            for _ in range(repeats):
                began = time.process_time()
                redact_body(unbounded, data, cut=False, content_type=content_type,
                            content_encoding=encoding, params=True)
                costs.append(time.process_time() - began)
            per_kb = statistics.median(costs) * 1e6 / (len(plain) / 1024)
            body = redact_body(default, data, cut=False, content_type=content_type,
                               content_encoding=encoding, params=True)
            rows.append((shape, label, per_kb, outcome(body, plain)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, 1 KB and 64 KB only, as CI does")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    sizes = dict(list(SIZES.items())[:2]) if args.quick else SIZES
    rows = measure(1 if args.quick else args.repeats, sizes)
    by_shape: dict[str, dict[str, tuple[float, str]]] = {}
    for shape, label, per_kb, what in rows:
        by_shape.setdefault(shape, {})[label] = (per_kb, what)
    last = list(sizes)[-1]
    if args.markdown:
        print("| body | " + " | ".join(f"µs/KB at {s}" for s in sizes)
              + f" | with the budget, at {last} |")
        print("|---|" + "---:|" * len(sizes) + "---|")
        for shape, cells in by_shape.items():
            print(f"| {shape} | " + " | ".join(f"{cells[s][0]:.1f}" for s in sizes)
                  + f" | {cells[last][1]} |")
    else:
        print(f"{'body':<36}" + "".join(f"{'µs/KB ' + s:>16}" for s in sizes) + f"  at {last}")
        for shape, cells in by_shape.items():
            print(f"{shape:<36}" + "".join(f"{cells[s][0]:>16.1f}" for s in sizes)
                  + f"  {cells[last][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
