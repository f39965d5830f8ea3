"""How fast `tapline replay --rate max` sends, against the sample apps directly.

    .venv/bin/python -m bench.replay_rate [--requests 20000] [--concurrency 32] [--rounds 3]

Starts app_b and app_a as `make run` does (gunicorn, 2 sync workers each; app_a asks app_b
directly, not through the proxy), makes capture records of the traffic they serve, and
replays them with tapline's own plan and sender (tapline.replay.plan and run, the code the
command runs after reading the lake), as fast as the apps answer. Three loads: GET /hello
alone (ab's figure for the same app is printed beside: the app's own ceiling); the same
against app_a under gunicorn's gthread workers, which keep connections alive (`kept`: a
target that can take more); and the seed's mix (/hello, POST /jobs with good and bad tokens,
which makes app_a call app_b, and POST /auth).
Prints requests per second per round, whether every answer had the original's status, and
the replayer's own CPU share.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Load, ab, wait_for
from capture import encode
from stack import free_ports
from stack.factories import make
from stack.service import port_open
from tapline.replay import Options, plan, run

SHAPES = {
    "hello": [("app_a", "GET", "/hello", [], "", 200)],
    "kept": [("app_a", "GET", "/hello", [], "", 200)],
    "mix": [("app_a", "GET", "/hello", [], "", 200),
            ("app_a", "POST", "/jobs", [["Authorization", "mytoken"]], "", 200),
            ("app_a", "GET", "/hello", [], "", 200),
            ("app_a", "POST", "/jobs", [["Authorization", "nope"]], "", 401),
            ("app_b", "POST", "/auth",
             [["Content-Type", "application/x-www-form-urlencoded"]], "token=mytoken", 200)],
}


def records(n: int, shapes: list) -> list[bytes]:
    out = []
    for i in range(n):
        app, method, path, headers, body, status = shapes[i % len(shapes)]
        r = make(i, in_order=n, spread_s=60.0)
        r.app, r.request.method, r.request.path, r.request.query = app, method, path, ""
        r.client_ip, r.client_port = f"10.0.{i % 50}.1", 40_000 + i % 1000
        r.request.headers = [["Host", "127.0.0.1:5000"], ["User-Agent", "curl/8.5.0"], *headers]
        r.request.body, r.request.body_size = body, len(body)
        r.response.status_code = status
        out.append(encode(r))
    return out


def start_apps(workdir: Path) -> tuple[list[subprocess.Popen], dict[str, str]]:
    port_a, port_b, port_kept = free_ports(3)
    python = sys.executable
    env = {**os.environ, "APP_B_DB": str(workdir / "app_b.sqlite3"),
           "APP_B_URL": f"http://127.0.0.1:{port_b}"}
    procs = []
    threads = ["-k", "gthread", "--threads", "8"]  # keeps connections alive
    for module, port, extra in (("apps.app_b:app", port_b, []), ("apps.app_a:app", port_a, []),
                                ("apps.app_a:app", port_kept, threads)):
        log = (workdir / f"{port}.log").open("wb")
        procs.append(subprocess.Popen(
            [python, "-m", "gunicorn", "-w", "2", *extra, "-b", f"127.0.0.1:{port}", module],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    for port in (port_a, port_b, port_kept):
        wait_for(lambda p=port: port_open("127.0.0.1", p), 30, f"an app on {port}")
    return procs, {"app_a": f"http://127.0.0.1:{port_a}", "app_b": f"http://127.0.0.1:{port_b}",
                   "kept": f"http://127.0.0.1:{port_kept}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        procs, targets = start_apps(Path(tmp))
        try:
            time.sleep(1)
            baseline = ab(targets["app_a"].replace("/hello", ""), Load(args.concurrency, False),
                          args.requests) if _ab_path() else None
            if baseline is not None:
                print(f"ab -c {args.concurrency} (new connections) GET {targets['app_a']}"
                      f"/small: {baseline.rps:,.0f} req/s (the app's own ceiling, app_a's 404)")
            if baseline is not None:
                kept = ab(targets["kept"], Load(args.concurrency, True), args.requests)
                print(f"ab -k -c {args.concurrency} GET {targets['kept']}/small: "
                      f"{kept.rps:,.0f} req/s (app_a under gthread, connections kept)")
            for load, shapes in SHAPES.items():
                options = Options(targets={"app_a": targets["kept"] if load == "kept"
                                           else targets["app_a"], "app_b": targets["app_b"]},
                                  rate=float("inf"), concurrency=args.concurrency)
                data = records(args.requests, shapes)
                for round_ in range(1, args.rounds + 1):
                    planned = plan(data, options)
                    cpu = resource.getrusage(resource.RUSAGE_SELF)
                    began = time.perf_counter()
                    outcomes = run(planned.items, options)
                    elapsed = time.perf_counter() - began
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    used = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
                    same = sum(o.status == i.original_status
                               for o, i in zip(outcomes, planned.items, strict=True))
                    errors = sum(o.error is not None for o in outcomes)
                    print(f"{load:5} round {round_}: {len(outcomes):,} requests in "
                          f"{elapsed:.2f}s = {len(outcomes) / elapsed:,.0f} req/s; status as "
                          f"original {same:,}, errors {errors}; replayer CPU "
                          f"{used / elapsed:.0%} of one core", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    return 0


def _ab_path() -> str | None:
    from shutil import which

    return which("ab")


if __name__ == "__main__":
    sys.exit(main())
