"""Where the capture proxy's CPU goes, per exchange, against bare mitmdump.

    .venv/bin/python bench/profile_proxy.py                  # GET small, c=16, keep-alive
    .venv/bin/python bench/profile_proxy.py --body           # POST 100 KB instead
    .venv/bin/python bench/profile_proxy.py --lean           # against the lean master

Part 1 measures proxy CPU time per request (utime + stime from /proc, no profiler) for bare
mitmdump, `python -m proxy` as it is, and `python -m proxy` with the aiokafka loggers at
WARNING, interleaved over rounds. mitmdump sets the root logger to DEBUG and its log handler
formats every record and hands it to every addon, so each debug line aiokafka writes per
message (one quotes the whole record) costs the proxy; the third variant shows how much.

Part 2 runs bare mitmdump and the capture proxy under cProfile (CPU-time clock) for the same
requests and prints where the difference is: own time per exchange of the functions whose
time grew most, and the cumulative time of the capture path's entry points.

    .venv/bin/python bench/profile_proxy.py --addons          # what each mitmdump addon costs

`--addons` runs bare mitmdump (DumpMaster, quiet) with every addon call timed on the CPU clock
(mitmproxy calls each addon for each event: the time is the hook's, and the walk of addons
that have none), and prints each addon's CPU per exchange beside the process's whole CPU per
exchange; proxy/master.py's choice of addons rests on it.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import inspect
import json
import logging
import os
import pstats
import runpy
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_app import upload_body
from bench.common import ROOT, Load, ab, cpu_seconds, load_average, median, wait_for
from bench.proxy_overhead import PYTHON, REDACT_KEY, Rig, Target
from stack import free_port, kafka_from_env

HERE = Path(__file__).resolve()
START, STOP = signal.SIGRTMIN + 1, signal.SIGRTMIN + 2  # to the wrapped proxy: profile or not
ENTRY_POINTS = [  # (label, file suffix, function name)
    ("addon hooks: response (build, redact, encode, queue)", "proxy/addon.py", "response"),
    ("  build_record", "proxy/exchange.py", "build_record"),
    ("  redaction: request target", "capture/redact/redactor.py", "target"),
    ("  redaction: headers", "capture/redact/redactor.py", "headers"),
    ("  bodies, read and redacted", "proxy/exchange.py", "redacted_body_of"),
    ("  encode (orjson)", "capture/record.py", "encode"),
    ("  queue (offer, gauges)", "proxy/producer.py", "offer"),
    ("addon hooks: requestheaders", "proxy/addon.py", "requestheaders"),
    ("addon hooks: responseheaders", "proxy/addon.py", "responseheaders"),
    ("producer task (queue -> aiokafka send)", "proxy/producer.py", "_pump"),
    ("aiokafka sender task", "aiokafka/producer/sender.py", "_sender_routine"),
    ("aiokafka connection reads", "aiokafka/conn.py", "_read"),
    ("logging.Logger.debug calls (all callers)", "logging/__init__.py", "debug"),
    ("mitmproxy add_log hook to every addon", "mitmproxy/addonmanager.py", "trigger"),
    ("loop wake-ups from other threads", "asyncio/selector_events.py", "_write_to_self"),
]


# --- the wrapper: this file also runs a proxy, optionally quiet and profiled ---------------------


def run_proxy(args: argparse.Namespace) -> None:
    """Run bare mitmdump or `python -m proxy` in this process (the wrapper mode)."""
    if args.quiet_aiokafka:
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if args.addon_timing:
        time_addons(Path(args.addon_timing))
    if args.bare:
        target = ("path", str(ROOT / "bench" / "bare_mitmdump.py"))
    else:
        target = ("module", "proxy")
    if args.profile:
        # START starts the profiler, STOP stops it and writes the file: start-up, warm-up
        # and shutdown stay out of the figures. (mitmproxy has SIGUSR1 and SIGUSR2.)
        profile = cProfile.Profile(time.process_time)
        signal.signal(START, lambda *_: profile.enable())

        def dump(*_) -> None:
            profile.disable()
            profile.dump_stats(args.profile + ".part")
            os.replace(args.profile + ".part", args.profile)  # whole, or not there

        signal.signal(STOP, dump)
    sys.argv = [target[1], *(["--lean"] if args.bare and args.lean else [])]
    try:
        if target[0] == "path":
            runpy.run_path(target[1], run_name="__main__")
        else:
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    except SystemExit:
        pass


def time_addons(out: Path) -> None:
    """Time every addon call of mitmproxy's addon manager on this thread's CPU clock, between
    START and STOP; STOP writes {addon: [seconds, calls]} to `out`."""
    from mitmproxy import addonmanager

    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    on = [False]

    async def invoke_addon(self, addon, event):
        name = type(addon).__name__
        start = time.thread_time()
        for _child, func in self._iter_hooks(addon, event):
            res = func(*event.args())
            if res is not None and inspect.isawaitable(res):
                spent[name] += time.thread_time() - start if on[0] else 0
                await res
                start = time.thread_time()
        if on[0]:
            spent[name] += time.thread_time() - start
            calls[name] += 1

    def invoke_addon_sync(self, addon, event):
        name = type(addon).__name__
        start = time.thread_time()
        for _child, func in self._iter_hooks(addon, event):
            func(*event.args())
        if on[0]:
            spent[name] += time.thread_time() - start
            calls[name] += 1

    addonmanager.AddonManager.invoke_addon = invoke_addon
    addonmanager.AddonManager.invoke_addon_sync = invoke_addon_sync

    def stop(*_) -> None:
        on[0] = False
        table = {name: [spent[name], calls[name]] for name in calls}
        out.with_suffix(".part").write_text(json.dumps(table))
        os.replace(out.with_suffix(".part"), out)

    signal.signal(START, lambda *_: on.__setitem__(0, True))
    signal.signal(STOP, stop)


LEAN = [False]  # --lean: the baseline ("bare") is the lean master without the addon


def launch(rig: Rig, name: str, *, bare: bool = False, quiet: bool = False,
           profile: Path | None = None, addon_timing: Path | None = None) -> Target:
    port, metrics_port = free_port(), free_port()
    command = [PYTHON, str(HERE), "--run-proxy"]
    command += ["--bare"] if bare else []
    command += ["--lean"] if bare and LEAN[0] else []
    command += ["--quiet-aiokafka"] if quiet else []
    command += ["--profile", str(profile)] if profile else []
    command += ["--addon-timing", str(addon_timing)] if addon_timing else []
    env = {"PROXY_ROUTES": f"bench=http://127.0.0.1:{rig.app_port}@{port}",
           "PROXY_METRICS_PORT": str(metrics_port), "KAFKA_BOOTSTRAP_SERVERS": rig.bootstrap,
           "CAPTURE_TOPIC": rig.topic, "CAPTURE_REDACT_KEY": REDACT_KEY,
           "PROXY_WORKERS": "1"}  # one process: the one profiled
    target = rig.launch(name, command, env, [port], f"http://127.0.0.1:{port}")
    rig.ready(target)
    return target


# --- part 1 ------------------------------------------------------------------------------------


def cpu_per_request(rig: Rig, load: Load, requests: int, rounds: int) -> None:
    targets = [launch(rig, "bare mitmdump", bare=True), launch(rig, "capture, as it is"),
               launch(rig, "capture, aiokafka logs at WARNING", quiet=True)]
    for target in targets:
        ab(target.url, Load(4, load.keepalive, load.body), 100)
    rows: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(rounds):
        for target in targets[round_ % 3:] + targets[:round_ % 3]:
            before = cpu_seconds(target.pid)
            result = ab(target.url, load, requests)
            used = (cpu_seconds(target.pid) - before) / result.complete * 1e6
            rows.setdefault(target.name, []).append((result.rps, used))
    bare = median([r[1] for r in rows[targets[0].name]])
    print(f"\nProxy CPU per request, {load.label}, {rounds} rounds of {requests} (medians)")
    print(f"{'configuration':<36} {'req/s':>7} {'CPU µs/req':>11} {'vs bare':>9}")
    for name, runs in rows.items():
        us = median([r[1] for r in runs])
        print(f"{name:<36} {median([r[0] for r in runs]):7.0f} {us:11.0f} {us - bare:+9.0f}"
              f"   (rounds: {', '.join(f'{r[1]:.0f}' for r in runs)})")
    for target in targets:
        rig.stop(target)


# --- part 2 ------------------------------------------------------------------------------------


def profiles(rig: Rig, load: Load, requests: int, workdir: Path) -> None:
    files = {}
    for name, bare in (("bare", True), ("capture", False)):
        files[name] = workdir / f"{name}.prof"
        target = launch(rig, f"profiled {name}", bare=bare, profile=files[name])
        ab(target.url, Load(4, load.keepalive, load.body), 100)
        os.kill(target.pid, START)
        ab(target.url, load, requests)
        os.kill(target.pid, STOP)
        wait_for(files[name].exists, 30, f"{files[name]} to be written")
        rig.stop(target)
    flows = requests
    stats = {name: pstats.Stats(str(path)).stats for name, path in files.items()}
    own = {name: {key: value[2] for key, value in s.items()} for name, s in stats.items()}
    print(f"\nUnder cProfile (CPU clock), per exchange, {load.label}, {flows} exchanges")
    print(f"total: bare {sum(own['bare'].values()) / flows * 1e6:.0f} µs, capture "
          f"{sum(own['capture'].values()) / flows * 1e6:.0f} µs (profiler overhead included)")
    print(f"\n{'capture path':<52} {'calls/exch':>10} {'cum µs/exch':>12}")
    for label, suffix, function in ENTRY_POINTS:
        calls = cum = 0.0
        for (path, _line, name), value in stats["capture"].items():
            if path.endswith(suffix) and name == function:
                calls += value[1]
                cum += value[3]
        print(f"{label:<52} {calls / flows:10.2f} {cum / flows * 1e6:12.0f}")
    grown = sorted(((own["capture"].get(k, 0) - own["bare"].get(k, 0), k)
                    for k in own["capture"]), reverse=True)[:20]
    print(f"\n{'own time grown most, capture - bare':<80} {'µs/exch':>8}")
    for delta, (path, line, name) in grown:
        where = f"{path.split('site-packages/')[-1].split('/work/main/')[-1]}:{line}({name})"
        print(f"{where[-80:]:<80} {delta / flows * 1e6:8.0f}")


# --- --addons ----------------------------------------------------------------------------------


def addon_costs(rig: Rig, load: Load, requests: int, rounds: int, workdir: Path) -> None:
    """Each of mitmdump's addons' CPU per exchange, over `rounds` runs of `requests`."""
    per_round: dict[str, list[float]] = {}
    whole: list[float] = []
    for round_ in range(rounds):
        out = workdir / f"addons-{round_}.json"
        target = launch(rig, f"timed mitmdump {round_}", bare=True, addon_timing=out)
        ab(target.url, Load(4, load.keepalive, load.body), 200)
        before = cpu_seconds(target.pid)
        os.kill(target.pid, START)
        result = ab(target.url, load, requests)
        os.kill(target.pid, STOP)
        whole.append((cpu_seconds(target.pid) - before) / result.complete * 1e6)
        wait_for(out.exists, 30, f"{out} to be written")
        rig.stop(target)
        for name, (seconds, _calls) in json.loads(out.read_text()).items():
            per_round.setdefault(name, []).append(seconds / result.complete * 1e6)
    rows = sorted(((median(v), name, v) for name, v in per_round.items()), reverse=True)
    print(f"\nmitmdump's addons, CPU per exchange (thread clock, timing included), {load.label}, "
          f"{rounds} rounds of {requests}")
    print(f"whole process: {median(whole):.0f} µs per exchange "
          f"(rounds: {', '.join(f'{w:.0f}' for w in whole)}); "
          f"all addon calls: {sum(r[0] for r in rows):.0f} µs")
    print("\n| addon | µs per exchange (median) | rounds |\n|---|---|---|")
    for us, name, runs in rows:
        print(f"| {name} | {us:.1f} | {', '.join(f'{r:.1f}' for r in runs)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--body", action="store_true", help="POST 100 KB instead of GET")
    parser.add_argument("--keep", help="a folder to keep the .prof files and logs in")
    parser.add_argument("--only-profile", action="store_true", help="skip part 1")
    parser.add_argument("--addons", action="store_true",
                        help="only time each of mitmdump's addons")
    parser.add_argument("--run-proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lean", action="store_true",
                        help="compare with the proxy's lean master without the addon, not "
                             "with mitmdump")
    parser.add_argument("--quiet-aiokafka", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    parser.add_argument("--addon-timing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_proxy:
        run_proxy(args)
        return 0
    LEAN[0] = args.lean

    load = Load(args.concurrency, True, upload_body() if args.body else None)
    with tempfile.TemporaryDirectory(prefix="tapline-profile-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        kafka = kafka_from_env(workdir / "kafka")
        kafka.start()
        rig = Rig(workdir, kafka.bootstrap_servers, f"bench-profile-{uuid.uuid4().hex[:8]}")
        try:
            rig.ready(rig.app())
            print(f"load average before: {load_average()}")
            if args.addons:
                addon_costs(rig, load, args.requests, args.rounds, workdir)
                return 0
            if not args.only_profile:
                cpu_per_request(rig, load, args.requests, args.rounds)
            profiles(rig, load, args.requests, workdir)
            print(f"\nload average after: {load_average()}")
        finally:
            rig.close()
            kafka.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
