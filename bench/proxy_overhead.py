"""What capturing costs the proxy: the capture addon against bare mitmdump, in one session.

    .venv/bin/python bench/proxy_overhead.py                 # everything, about 30 minutes
    .venv/bin/python bench/proxy_overhead.py --only targets --rounds 3 --requests 2000
    .venv/bin/python bench/proxy_overhead.py --only overhead --rounds 3 --requests 2000
    .venv/bin/python bench/proxy_overhead.py --quick         # a small run, as CI does

Four configurations serve the same upstream (bench/bench_app.py under gunicorn, 2 gthread
workers): the app direct; bare mitmdump in reverse mode (bench/bare_mitmdump.py: the options
of `python -m proxy` without the addon); `python -m proxy` with Kafka up; and `python -m
proxy` with Kafka down (its bootstrap address is a closed port, so records queue, then drop,
counted). Sections:

  targets   the proxy against default mitmdump as a user runs it (`mitmdump --mode
            reverse:URL@PORT -q`): three loads (small keep-alive GETs; the seed's `ab -m POST
            -H "Authorization: mytoken"` on a new connection per request; 100 KB JSON POSTs),
            c=4, against mitmdump, the lean master without the addon, the capture proxy with
            1 and 2 workers, Kafka up and down, and 1 worker on asyncio's loop; req/s, p99,
            CPU per exchange of all the proxy's processes, the machine's CPU busy, each
            against its target; and what 2 workers would give with cores to spare.
  linger    the capture proxy with KAFKA_LINGER_MS 5, 25 and 100, small GETs and 100 KB
            POSTs: CPU per exchange, req/s, p99, and the median produce latency.
  overhead  every load (GET small / POST 100 KB, c=4 / c=64, keep-alive or a new connection
            per request) against every configuration, interleaved, in rounds; the table shows
            medians and, against bare mitmdump, the median of each round's paired ratio.
  cost      proxy CPU time per request (utime + stime from /proc) at 3 concurrencies.
  scaling   2 capture proxies on 2 ports (mitmproxy does not share a port between
            processes), one ab each, against 1 proxy with the same total concurrency.
  memory    fresh proxies (bare, capture with Kafka up, with Kafka down) under a sustained
            load, VmRSS sampled every second.

Every capture proxy's counts are checked at the end: each exchange ab completed was captured,
and each capture is on the topic or counted as dropped, by reason (a capture the producer
could not keep up with is dropped as queue_full, and the tables show how many), or is still
queued (Kafka down); a count that does not add up ends the bench with status 1. Kafka comes
from KAFKA_BOOTSTRAP_SERVERS or is launched on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich import box
from rich.console import Console
from rich.table import Table

from bench.bench_app import upload_body
from bench.common import (
    ROOT,
    AbResult,
    BenchError,
    Load,
    ab,
    cpu_seconds,
    load_average,
    machine_busy,
    median,
    memory_kb,
    tree_cpu_seconds,
    wait_for,
)
from proxy.metrics import DROP_REASONS
from stack import free_port, kafka_from_env
from stack.support import Process, sample, scrape, topic_size, wait_for_port

DIRECT, BARE, CAPTURE, KAFKA_DOWN = "app direct", "bare mitmdump", "capture, Kafka up", \
    "capture, Kafka down"
BASELINE = "capture, baseline"  # --baseline: the proxy of another checkout, Kafka up
CONFIGS = (DIRECT, BARE, CAPTURE, KAFKA_DOWN)
TARGET_RATIO, TARGET_P99_MS = 0.95, 1.0
REDACT_KEY = "bench-redact-key"
PYTHON = sys.executable

console = Console(width=170)


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- the processes ------------------------------------------------------------------------------


@dataclass
class Target:
    """Somewhere ab can send traffic: the app, or one proxy process in front of it."""

    name: str
    url: str
    process: Process | None = None
    metrics: str | None = None
    sent: int = 0  # exchanges ab completed through it
    # How many more the proxy may have seen: requests ab counted as failed, and those in
    # flight when a timed ab run stopped.
    slack: int = 0
    ports: list[int] = field(default_factory=list)  # where it listens once it is ready

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid


class Rig:
    """Starts the app and the proxies in front of it; stops all of them, whatever happens."""

    def __init__(self, workdir: Path, bootstrap: str, topic: str) -> None:
        self.workdir = workdir
        self.bootstrap = bootstrap
        self.topic = topic
        self.processes: list[Process] = []
        self.app_port = free_port()

    def launch(self, name: str, command: list[str], env: dict[str, str],
                ports: list[int], url: str, metrics: str | None = None) -> Target:
        """Start a process and return at once; `ready()` waits until it listens."""
        slug = name.replace(",", "").replace(" ", "-").replace("#", "")
        log = self.workdir / f"{slug}-{len(self.processes)}.log"
        process = Process(command, log, env).start()
        self.processes.append(process)
        return Target(name, url, process, metrics, ports=ports)

    def app(self) -> Target:
        return self.launch(DIRECT, [
            PYTHON, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4",
            "-b", f"127.0.0.1:{self.app_port}", "bench.bench_app:app"], {}, [self.app_port],
            f"http://127.0.0.1:{self.app_port}")

    def proxy(self, name: str, *, capture: bool, bootstrap: str | None = None,
              code: Path | None = None, workers: int = 1, lean: bool = False,
              event_loop: str | None = None, env: dict[str, str] | None = None) -> Target:
        """A proxy in front of the app: bare mitmdump (or, `lean`, the proxy's lean master
        without the addon), or `python -m proxy` with `workers`, from this checkout or,
        with `code`, from another one (its folder first on the path)."""
        port = free_port()
        env = {"PROXY_ROUTES": f"bench=http://127.0.0.1:{self.app_port}@{port}",
               "PROXY_METRICS_PORT": "0", "PROXY_WORKERS": str(workers), **(env or {})}
        if event_loop:
            env["PROXY_EVENT_LOOP"] = event_loop
        command = [PYTHON, str(ROOT / "bench" / "bare_mitmdump.py"), *(["--lean"] if lean else [])]
        ports = [port]
        metrics = None
        if capture:
            metrics_port = free_port()
            env.update({"KAFKA_BOOTSTRAP_SERVERS": bootstrap or self.bootstrap,
                        "CAPTURE_TOPIC": self.topic, "PROXY_METRICS_PORT": str(metrics_port),
                        "CAPTURE_REDACT_KEY": REDACT_KEY})
            command = [PYTHON, "-m", "proxy"]
            if code is not None:
                # -P: not this checkout's folder first on the path, but `code`'s.
                command = [PYTHON, "-P", "-m", "proxy"]
                env["PYTHONPATH"] = str(code)
            ports.append(metrics_port)
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        return self.launch(name, command, env, ports, f"http://127.0.0.1:{port}", metrics)

    def mitmdump(self, name: str) -> Target:
        """mitmdump as a user runs it in front of an app: `mitmdump --mode
        reverse:URL@PORT -q`, every default."""
        port = free_port()
        command = [str(Path(PYTHON).parent / "mitmdump"), "--mode",
                   f"reverse:http://127.0.0.1:{self.app_port}@{port}", "-q"]
        return self.launch(name, command, {}, [port], f"http://127.0.0.1:{port}")

    @staticmethod
    def ready(*targets: Target) -> None:
        for target in targets:
            for port in target.ports:
                wait_for_port(port, target.process.proc, target.process.log, timeout=60)

    def stop(self, target: Target) -> None:
        if target.process is not None:
            target.process.stop(30)

    def close(self) -> None:
        """SIGTERM to all at once (each capture proxy may take seconds to flush), then wait."""
        running = [p.proc for p in self.processes if p.proc and p.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def closed_address() -> str:
    """A loopback address where no Kafka (nothing at all) listens."""
    return f"127.0.0.1:{free_port()}"


# --- running ab, keeping count --------------------------------------------------------------


def run(target: Target, load: Load, requests: int, *, seconds: float | None = None) -> AbResult:
    result = ab(target.url, load, requests, seconds=seconds)
    target.sent += result.complete - result.failed
    target.slack += result.failed + (load.concurrency if seconds is not None else 0)
    return result


def warm_up(targets: list[Target], loads: list[Load]) -> None:
    """A few requests of every load, so that no measurement pays for first connections,
    imports or the producer's connection to Kafka."""
    for target in targets:
        for load in loads:
            run(target, Load(min(load.concurrency, 4), load.keepalive, load.body), 40)


def wait_connected(target: Target) -> None:
    """Until the capture proxy has produced a record: its Kafka connection is up."""
    run(target, Load(1, True), 5)
    wait_for(lambda: metric(target, "tapline_proxy_produced_total") >= 1, 60,
             f"{target.name} to produce to Kafka")


def metric(target: Target, name: str, **labels: str) -> float:
    assert target.metrics
    return sample(scrape(target.metrics), name, **labels)


# --- section: overhead ------------------------------------------------------------------------


Results = dict[tuple[Load, str], list[AbResult]]
Drops = dict[tuple[Load, str], float]


def dropped(target: Target) -> float:
    if target.metrics is None:
        return 0.0
    samples = scrape(target.metrics)
    return sum(value for name, value in samples.items()
               if name.startswith("tapline_proxy_dropped_total{"))


def overhead(targets: dict[str, Target], loads: list[Load], rounds: int,
             requests: int) -> tuple[Results, Drops]:
    results: Results = {}
    drops: Drops = {}
    names = [name for name in (*CONFIGS, BASELINE) if name in targets]
    for round_ in range(rounds):
        for load in loads:
            # A different order in each round, so that no configuration always runs first.
            shift = round_ % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                before = dropped(targets[name])
                result = run(targets[name], load, requests)
                lost = dropped(targets[name]) - before
                results.setdefault((load, name), []).append(result)
                drops[(load, name)] = drops.get((load, name), 0.0) + lost
                note(f"round {round_ + 1}/{rounds}  {load.label:<32} {name:<20} "
                     f"{result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f}  "
                     f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}  "
                     f"captures dropped {lost:.0f}")
    return results, drops


def overhead_table(results: Results, drops: Drops, loads: list[Load],
                   style: box.Box) -> Table:
    table = Table(title="Capture overhead against bare mitmdump (medians of the rounds)",
                  box=style)
    for column in ("load", "configuration", "req/s", "spread", "p50 ms", "p99 ms",
                   "vs bare", "Δp99 vs bare", "errors", "captures dropped", "target"):
        table.add_column(column, justify="left" if column in ("load", "configuration")
                         else "right")
    names = [name for name in (*CONFIGS, BASELINE) if (loads[0], name) in results]
    for load in loads:
        bare = results[(load, BARE)]
        for name in names:
            runs = results[(load, name)]
            rps = [r.rps for r in runs]
            # Paired by round: each round's ratio to the bare run of the same round.
            ratio = median([r.rps / b.rps for r, b in zip(runs, bare, strict=True)])
            delta = median([r.p99_ms - b.p99_ms for r, b in zip(runs, bare, strict=True)])
            spread = (max(rps) - min(rps)) / median(rps) * 100
            verdict = ""
            if name in (CAPTURE, KAFKA_DOWN, BASELINE):
                met = ratio >= TARGET_RATIO and delta <= TARGET_P99_MS
                verdict = "met" if met else "missed"
            table.add_row(
                load.label if name == DIRECT else "", name, f"{median(rps):.0f}",
                f"±{spread / 2:.0f}%", f"{median([r.p50_ms for r in runs]):.2f}",
                f"{median([r.p99_ms for r in runs]):.2f}",
                f"{ratio:.2f}" if name != BARE else "1",
                f"{delta:+.2f}" if name != BARE else "",
                str(sum(r.errors for r in runs)),
                f"{drops[(load, name)]:.0f} of {sum(r.complete for r in runs)}"
                if name in (CAPTURE, KAFKA_DOWN, BASELINE) else "", verdict,
                end_section=name == names[-1],
            )
    return table



# --- section: targets -------------------------------------------------------------------------
# The proxy against what a user would run instead: default mitmdump. Each load runs against
# every configuration in turn, in rounds, each round in another order; each figure is the
# median of the rounds, each ratio the median of the rounds' paired ratios.

MITMDUMP, LEAN = "mitmdump, default", "lean master, no capture"
ONE, ONE_DOWN = "capture, 1 worker", "capture, 1 worker, Kafka down"
TWO, TWO_DOWN = "capture, 2 workers", "capture, 2 workers, Kafka down"
ONE_ASYNCIO = "capture, 1 worker, asyncio loop"  # what uvloop (the default) is worth
# load label prefix -> least req/s ratio to default mitmdump, for one worker
RATIO_TARGETS = {"GET small": 1.5, "POST /jobs": 1.2, "POST 100 KB": 1.2}
CPU_TARGET = 1.1  # capture's CPU per exchange over the lean master's, at most
WORKERS_TARGET = 1.6  # two workers' req/s over one's, at least, given a core to spare


def target_loads() -> list[Load]:
    return [Load(4, True), Load(4, False, jobs=True), Load(4, True, upload_body())]


def start_targets(rig: Rig) -> dict[str, Target]:
    down = closed_address()
    targets = {
        MITMDUMP: rig.mitmdump(MITMDUMP),
        LEAN: rig.proxy(LEAN, capture=False, lean=True),
        ONE: rig.proxy(ONE, capture=True),
        ONE_DOWN: rig.proxy(ONE_DOWN, capture=True, bootstrap=down),
        ONE_ASYNCIO: rig.proxy(ONE_ASYNCIO, capture=True, event_loop="asyncio"),
        TWO: rig.proxy(TWO, capture=True, workers=2),
        TWO_DOWN: rig.proxy(TWO_DOWN, capture=True, bootstrap=down, workers=2),
    }
    rig.ready(*targets.values())
    for name in (ONE, ONE_ASYNCIO, TWO):
        wait_connected(targets[name])
    return targets


@dataclass
class Run:
    rps: float
    p99_ms: float
    cpu_us: float  # the proxy's CPU (all its processes) per exchange
    busy: float  # the machine's CPUs, per cent busy, during the run
    errors: int


def measure_targets(targets: dict[str, Target], loads: list[Load], rounds: int,
                    requests: int) -> dict[tuple[str, str], list[Run]]:
    runs: dict[tuple[str, str], list[Run]] = {}
    names = list(targets)
    for round_ in range(rounds):
        for load in loads:
            shift = (round_ * 2) % len(names)
            for name in names[shift:] + names[:shift]:
                target = targets[name]
                cpu = tree_cpu_seconds(target.pid)
                busy_before, total_before = machine_busy()
                result = run(target, load, requests)
                busy_after, total_after = machine_busy()
                used = (tree_cpu_seconds(target.pid) - cpu) / result.complete * 1e6
                busy = (busy_after - busy_before) / max(1, total_after - total_before) * 100
                runs.setdefault((load.label, name), []).append(
                    Run(result.rps, result.p99_ms, used, busy, result.errors))
                note(f"targets round {round_ + 1}/{rounds}  {load.label:<34} {name:<32} "
                     f"{result.rps:7.0f} req/s  p99 {result.p99_ms:7.2f} ms  "
                     f"{used:6.0f} µs CPU/exch  machine busy {busy:3.0f}%")
    return runs


def targets_table(runs: dict[tuple[str, str], list[Run]], loads: list[Load],
                  names: list[str], style: box.Box) -> tuple[Table, list[str]]:
    table = Table(title="The proxy against default mitmdump (medians of the rounds; ratios "
                  "paired by round)", box=style)
    for column in ("load", "configuration", "req/s", "vs mitmdump", "p99 ms",
                   "p99 vs mitmdump", "CPU µs/exch", "CPU vs lean", "machine busy",
                   "errors", "target"):
        table.add_column(column, justify="left" if column in ("load", "configuration",
                                                              "target") else "right")
    verdicts = []
    for load in loads:
        base = runs[(load.label, MITMDUMP)]
        lean = runs[(load.label, LEAN)]
        one = runs[(load.label, ONE)]
        for name in names:
            mine = runs[(load.label, name)]
            ratio = median([m.rps / b.rps for m, b in zip(mine, base, strict=True)])
            p99 = median([m.p99_ms / b.p99_ms for m, b in zip(mine, base, strict=True)])
            cpu = median([m.cpu_us / n.cpu_us for m, n in zip(mine, lean, strict=True)])
            wanted = []
            if name in (ONE, ONE_DOWN):
                least = next(v for k, v in RATIO_TARGETS.items() if load.label.startswith(k))
                wanted.append((f"≥{least}x mitmdump", ratio >= least))
                wanted.append(("p99 ≤ mitmdump's", p99 <= 1.0))
                if name == ONE:
                    wanted.append((f"CPU ≤{CPU_TARGET}x lean", cpu <= CPU_TARGET))
            if name in (TWO, TWO_DOWN):
                single = one if name == TWO else runs[(load.label, ONE_DOWN)]
                scale = median([m.rps / s.rps for m, s in zip(mine, single, strict=True)])
                wanted.append((f"{scale:.2f}x one worker (≥{WORKERS_TARGET}x)",
                               scale >= WORKERS_TARGET))
            verdict = "; ".join(f"{what}: {'met' if ok else 'missed'}" for what, ok in wanted)
            verdicts += [f"{load.label} / {name}: {what}" for what, ok in wanted if not ok]
            table.add_row(load.label if name == names[0] else "", name,
                          f"{median([m.rps for m in mine]):.0f}",
                          f"{ratio:.2f}" if name != MITMDUMP else "1",
                          f"{median([m.p99_ms for m in mine]):.2f}",
                          f"{p99:.2f}" if name != MITMDUMP else "1",
                          f"{median([m.cpu_us for m in mine]):.0f}",
                          f"{cpu:.2f}" if name != LEAN else "1",
                          f"{median([m.busy for m in mine]):.0f}%",
                          str(sum(m.errors for m in mine)), verdict,
                          end_section=name == names[-1])
    return table, verdicts


def scaling_estimate(runs: dict[tuple[str, str], list[Run]], loads: list[Load],
                     style: box.Box) -> Table:
    """What two workers would give where each has a core of its own: a worker that has its
    core answers 1 / (its CPU per exchange) a second, so two give 2 x one's CPU per exchange
    over two's, the rest of the host (ab, the app, Kafka) elsewhere."""
    table = Table(title="Two workers on a host with cores to spare, estimated from CPU per "
                  "exchange", box=style)
    for column in ("load", "1 worker CPU µs/exch", "2 workers CPU µs/exch",
                   "one worker's ceiling req/s", "estimated 2 workers vs 1",
                   "measured here", "machine busy here (1 / 2)"):
        table.add_column(column, justify="left" if column == "load" else "right")
    for load in loads:
        one, two = runs[(load.label, ONE)], runs[(load.label, TWO)]
        cpu1, cpu2 = median([r.cpu_us for r in one]), median([r.cpu_us for r in two])
        measured = median([t.rps / o.rps for t, o in zip(two, one, strict=True)])
        table.add_row(load.label, f"{cpu1:.0f}", f"{cpu2:.0f}", f"{1e6 / cpu1:.0f}",
                      f"{2 * cpu1 / cpu2:.2f}", f"{measured:.2f}",
                      f"{median([r.busy for r in one]):.0f}% / "
                      f"{median([r.busy for r in two]):.0f}%")
    return table


# --- section: linger ---------------------------------------------------------------------------

LINGERS_MS = (5, 25, 100)


def linger(rig: Rig, rounds: int, requests: int, style: box.Box,
           quick: bool) -> tuple[Table, list[Target]]:
    """The capture proxy (1 worker, Kafka up) with KAFKA_LINGER_MS at each of LINGERS_MS: a
    longer linger makes fewer, larger batches (fewer produce requests, compression and
    acknowledgements per record) and makes each record wait that much longer for Kafka."""
    targets = {ms: rig.proxy(f"capture, linger {ms} ms", capture=True,
                             env={"KAFKA_LINGER_MS": str(ms)}) for ms in LINGERS_MS}
    rig.ready(*targets.values())
    for target in targets.values():
        wait_connected(target)
    loads = [Load(4, True)] if quick else [Load(4, True), Load(4, True, upload_body())]
    warm_up(list(targets.values()), loads)
    runs: dict[tuple[str, int], list[Run]] = {}
    for round_ in range(rounds):
        for load in loads:
            order = list(LINGERS_MS[round_ % 3:] + LINGERS_MS[:round_ % 3])
            for ms in order:
                target = targets[ms]
                cpu = tree_cpu_seconds(target.pid)
                result = run(target, load, requests)
                used = (tree_cpu_seconds(target.pid) - cpu) / result.complete * 1e6
                runs.setdefault((load.label, ms), []).append(
                    Run(result.rps, result.p99_ms, used, 0.0, result.errors))
                note(f"linger round {round_ + 1}/{rounds}  {load.label:<32} {ms:>4} ms "
                     f"{result.rps:7.0f} req/s  {used:6.0f} µs CPU/exch")
    table = Table(title="KAFKA_LINGER_MS: the capture proxy, 1 worker, Kafka up (medians of "
                  "the rounds)", box=style)
    for column in ("load", "linger ms", "req/s", "p99 ms", "CPU µs/exch", "each round",
                   "produce latency p50 ms"):
        table.add_column(column, justify="left" if column == "load" else "right")
    for load in loads:
        for ms in LINGERS_MS:
            mine = runs[(load.label, ms)]
            table.add_row(load.label if ms == LINGERS_MS[0] else "", str(ms),
                          f"{median([m.rps for m in mine]):.0f}",
                          f"{median([m.p99_ms for m in mine]):.2f}",
                          f"{median([m.cpu_us for m in mine]):.0f}",
                          ", ".join(f"{m.cpu_us:.0f}" for m in mine),
                          f"{latency_p50(targets[ms]) * 1000:.1f}",
                          end_section=ms == LINGERS_MS[-1])
    return table, list(targets.values())


def latency_p50(target: Target) -> float:
    """The median of the proxy's produce latency so far, from its histogram's buckets (the
    upper bound of the bucket that holds it)."""
    samples = scrape(target.metrics)
    total = sample(samples, "tapline_proxy_produce_latency_seconds_count")
    buckets = sorted((float(key.split('le="')[1].split('"')[0]), value)
                     for key, value in samples.items()
                     if key.startswith("tapline_proxy_produce_latency_seconds_bucket"))
    return next((bound for bound, count in buckets if count >= total / 2), float("nan"))


# --- section: cost per request ----------------------------------------------------------------


def cost(targets: dict[str, Target], concurrencies: list[int], rounds: int, requests: int,
         broker_pid: int | None, style: box.Box) -> Table:
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    names = [name for name in (BARE, CAPTURE, BASELINE) if name in targets]
    for round_ in range(rounds):
        for concurrency in concurrencies:
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                target = targets[name]
                load = Load(concurrency, True)
                before = cpu_seconds(target.pid)
                broker_before = cpu_seconds(broker_pid) if broker_pid else 0.0
                result = run(target, load, requests)
                used = cpu_seconds(target.pid) - before
                broker = cpu_seconds(broker_pid) - broker_before if broker_pid else 0.0
                rows.setdefault((name, concurrency), []).append(
                    (result.rps, used / result.complete * 1e6,
                     broker / result.complete * 1e6))
                note(f"cost round {round_ + 1}/{rounds}  c={concurrency:<3} {name:<18} "
                     f"{result.rps:6.0f} req/s  {used / result.complete * 1e6:6.0f} µs CPU/req")
    table = Table(title="Proxy CPU per request, GET small, keep-alive (medians)", box=style)
    for column in ("concurrency", "configuration", "req/s", "proxy CPU µs/req",
                   "capture - bare µs/req", "each round", "Kafka broker CPU µs/req"):
        table.add_column(column, justify="right")
    for concurrency in concurrencies:
        bare = [r[1] for r in rows[(BARE, concurrency)]]
        for name in names:
            runs = rows[(name, concurrency)]
            # Paired by round, as in the overhead table: the two runs of a round are adjacent.
            deltas = [r[1] - b for r, b in zip(runs, bare, strict=True)]
            table.add_row(
                str(concurrency) if name == BARE else "", name,
                f"{median([r[0] for r in runs]):.0f}", f"{median([r[1] for r in runs]):.0f}",
                f"{median(deltas):+.0f}" if name != BARE else "",
                ", ".join(f"{d:+.0f}" for d in deltas) if name != BARE else "",
                f"{median([r[2] for r in runs]):.0f}" if name != BARE and broker_pid else "",
                end_section=name == names[-1],
            )
    return table


# --- section: scaling out -----------------------------------------------------------------------


def with_usage(pids: list[int], action):
    """Run `action()`; also return how busy the machine's CPUs were meanwhile (per cent of
    all of them) and how much CPU the processes `pids` used (per cent of one core, summed)."""
    busy_before, total_before = machine_busy()
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    began = time.monotonic()
    result = action()
    wall = time.monotonic() - began
    busy_after, total_after = machine_busy()
    used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    busy = (busy_after - busy_before) / max(1, total_after - total_before) * 100
    return result, busy, used / wall * 100


def scaling(first: Target, second: Target, concurrencies: list[int], rounds: int,
            requests: int, style: box.Box) -> Table:
    wait_connected(second)
    warm_up([second], [Load(4, True)])
    # per run: req/s, p50, p99, machine CPU busy %, the proxies' CPU in % of one core
    rows: dict[tuple[int, int], list[tuple[float, ...]]] = {}

    def one_process(load: Load) -> tuple[float, ...]:
        result, busy, proxies = with_usage([first.pid], lambda: run(first, load, requests))
        return result.rps, result.p50_ms, result.p99_ms, busy, proxies

    def two_processes(load: Load) -> tuple[float, ...]:
        half = Load(max(1, load.concurrency // 2), True)
        halves: list[AbResult] = []

        def one_ab(target: Target) -> None:
            halves.append(run(target, half, requests // 2))

        def both() -> None:
            threads = [threading.Thread(target=one_ab, args=(t,)) for t in (first, second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        _, busy, proxies = with_usage([first.pid, second.pid], both)
        if len(halves) != 2:
            raise BenchError("an ab of the two-process run failed; see above")
        # Both ab's start together; the pair's rate is all requests over the longer run.
        combined = sum(r.complete for r in halves) / max(r.seconds for r in halves)
        return (combined, max(r.p50_ms for r in halves), max(r.p99_ms for r in halves), busy,
                proxies)

    for round_ in range(rounds):
        for concurrency in concurrencies:
            load = Load(concurrency, True)
            # Which goes first alternates from round to round.
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for processes in order:
                row = (one_process if processes == 1 else two_processes)(load)
                rows.setdefault((processes, concurrency), []).append(row)
                note(f"scaling round {round_ + 1}/{rounds}  c={concurrency:<3} {processes} "
                     f"process(es) {row[0]:6.0f} req/s  machine CPU busy {row[3]:3.0f}%  "
                     f"proxies' CPU {row[4]:3.0f}% of a core")
    table = Table(title="Capture proxies (Kafka up) side by side: GET small, keep-alive "
                  "(medians)", box=style)
    for column in ("total concurrency", "processes", "req/s (sum)", "vs 1 process",
                   "p50 ms (worse)", "p99 ms (worse)", "machine CPU busy",
                   "proxies' CPU, % of a core"):
        table.add_column(column, justify="right")
    for concurrency in concurrencies:
        base = median([r[0] for r in rows[(1, concurrency)]])
        for processes in (1, 2):
            runs = rows[(processes, concurrency)]
            rps = median([r[0] for r in runs])
            table.add_row(str(concurrency) if processes == 1 else "", str(processes),
                          f"{rps:.0f}", f"{rps / base:.2f}",
                          f"{median([r[1] for r in runs]):.2f}",
                          f"{median([r[2] for r in runs]):.2f}",
                          f"{median([r[3] for r in runs]):.0f}%",
                          f"{median([r[4] for r in runs]):.0f}%", end_section=processes == 2)
    return table


# --- section: memory ------------------------------------------------------------------------------


def memory(rig: Rig, loads: list[Load], seconds: float, style: box.Box,
           baseline: Path | None = None) -> tuple[Table, list]:
    """RSS of fresh proxies under `seconds` of load: bare mitmdump for comparison, the
    capture proxy with Kafka up, and with Kafka down (its queue fills up to its bound); and
    the `baseline` checkout's capture proxy with Kafka up, when there is one."""
    table = Table(title=f"Proxy memory (VmRSS, MB) under {seconds:.0f} s of sustained load, "
                  "fresh processes", box=style)
    for column in ("configuration", "load", "requests", "req/s", "RSS start", "at 1/4",
                   "at 1/2", "at 3/4", "end", "peak", "queued MB at end", "dropped"):
        table.add_column(column, justify="left" if column in ("configuration", "load")
                         else "right")
    checked = []
    configurations = [(BARE, False, None), (CAPTURE, True, None),
                      (KAFKA_DOWN, True, closed_address())]
    if baseline is not None:
        configurations.append((BASELINE, True, None))
    plan = [(name, capture, bootstrap, load)
            for name, capture, bootstrap in configurations for load in loads]
    # All start at once (an idle proxy costs next to nothing), each is measured alone.
    fresh = [rig.proxy(name, capture=capture, bootstrap=bootstrap,
                       code=baseline.resolve() if name == BASELINE and baseline else None)
             for name, capture, bootstrap, _ in plan]
    rig.ready(*fresh)
    for (name, capture, bootstrap, load), target in zip(plan, fresh, strict=True):
        if name in (CAPTURE, BASELINE):
            wait_connected(target)
        samples: list[int] = []
        stop = threading.Event()

        def sample_rss(pid: int, stop: threading.Event, samples: list[int]) -> None:
            while not stop.is_set():
                samples.append(memory_kb(pid))
                stop.wait(1.0)

        start_kb = memory_kb(target.pid)
        sampler = threading.Thread(target=sample_rss, args=(target.pid, stop, samples))
        sampler.start()
        try:
            result = run(target, load, 10_000_000, seconds=seconds)
        finally:
            stop.set()
            sampler.join()
        end_kb = memory_kb(target.pid)
        samples.append(end_kb)
        queued = dropped = None
        if capture:
            queued = metric(target, "tapline_proxy_queue_bytes")
            dropped = metric(target, "tapline_proxy_dropped_total", reason="queue_full")
            checked.append(account(target, kafka_up=bootstrap is None))
        quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3)]
        note(f"memory  {name:<20} {load.label:<32} {result.rps:6.0f} req/s  RSS MB "
             f"{' -> '.join(f'{kb / 1024:.0f}' for kb in [start_kb, *quarters, end_kb])}")
        table.add_row(name, load.label, str(result.complete), f"{result.rps:.0f}",
                      *(f"{kb / 1024:.0f}" for kb in [start_kb, *quarters, end_kb]),
                      f"{max(samples) / 1024:.0f}",
                      "" if queued is None else f"{queued / 2**20:.1f}",
                      "" if dropped is None else f"{dropped:.0f}")
        rig.stop(target)
    return table, checked


# --- the counts must add up ---------------------------------------------------------------------


@dataclass
class Account:
    name: str
    sent: int
    captured: float
    produced: float
    dropped: dict[str, float] = field(default_factory=dict)
    queued: float = 0.0
    problem: str = ""


def account(target: Target, *, kafka_up: bool) -> Account:
    """Every exchange ab completed was captured; every capture was produced or counted as
    dropped, by reason (Kafka up), or is dropped or still queued (Kafka down)."""
    def read() -> Account:
        samples = scrape(target.metrics)
        return Account(
            target.name, target.sent,
            sample(samples, "tapline_proxy_captures_total"),
            sample(samples, "tapline_proxy_produced_total"),
            {reason: value for reason in DROP_REASONS
             if (value := sample(samples, "tapline_proxy_dropped_total", reason=reason))},
            sample(samples, "tapline_proxy_queue_records")
            + sample(samples, "tapline_proxy_in_flight_records"),
        )

    def settled(a: Account) -> bool:
        if kafka_up:  # the producer has caught up: all acknowledged or dropped
            return a.produced + sum(a.dropped.values()) == a.captured
        return sum(a.dropped.values()) + a.queued == a.captured

    # Exchanges ab gave up on may still be finishing, and the producer catching up: the
    # counts get a minute to settle before they are judged.
    with contextlib.suppress(BenchError):
        wait_for(lambda: settled(read()), 60, f"{target.name}'s counts to settle")
    result = read()
    problems = []
    if not result.sent <= result.captured <= result.sent + target.slack:
        problems.append(f"{result.sent} exchanges sent (and {target.slack} failed or cut "
                        f"short) but {result.captured:.0f} captured")
    if not settled(result):
        problems.append(f"{result.captured:.0f} captured, but {result.produced:.0f} produced, "
                        f"dropped {result.dropped} and {result.queued:.0f} queued")
    if not kafka_up and result.produced:
        problems.append(f"Kafka down, yet {result.produced:.0f} produced")
    result.problem = "; ".join(problems)
    return result


def accounts_table(accounts: list[Account], on_topic: int, produced: float,
                   style: box.Box) -> Table:
    table = Table(title="Every exchange accounted for", box=style)
    for column in ("proxy", "sent (ab)", "captured", "produced", "dropped", "queued",
                   "problem"):
        table.add_column(column, justify="left" if column in ("proxy", "dropped", "problem")
                         else "right")
    for a in accounts:
        table.add_row(a.name, str(a.sent), f"{a.captured:.0f}", f"{a.produced:.0f}",
                      ", ".join(f"{k} {v:.0f}" for k, v in a.dropped.items()) or "0",
                      f"{a.queued:.0f}", a.problem or "none")
    table.caption = (f"records on the topic: {on_topic}; produced by all Kafka-up proxies: "
                     f"{produced:.0f}")
    return table


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+",
                        choices=["targets", "linger", "overhead", "cost", "scaling", "memory"],
                        default=["targets", "linger", "overhead", "cost", "scaling", "memory"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per ab run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--cost-concurrency", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--scaling-concurrency", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--sustain", type=float, default=60.0, help="seconds, memory section")
    parser.add_argument("--markdown", action="store_true", help="tables in Markdown")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a checkout of another commit (git worktree add DIR COMMIT): its "
                             "proxy runs too, as 'capture, baseline', in overhead, cost and "
                             "memory")
    parser.add_argument("--quick", action="store_true",
                        help="one round of one load, a few hundred requests: proves it runs")
    args = parser.parse_args()

    upload = upload_body()
    loads = [Load(c, keepalive, body) for body in (None, upload) for keepalive in (True, False)
             for c in args.concurrency]
    memory_loads = [Load(64, True), Load(64, True, upload)]
    if args.quick:
        args.rounds, args.requests, args.sustain = 1, 200, 2.0
        args.cost_concurrency, args.scaling_concurrency = [4, 16, 64], [8]
        loads, memory_loads = [Load(4, True)], [Load(4, True)]
    style = box.MARKDOWN if args.markdown else box.SIMPLE_HEAD

    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tapline-bench-") as tmp, contextlib.ExitStack() as \
            stack:
        workdir = Path(tmp)
        began = time.monotonic()
        kafka = kafka_from_env(workdir / "kafka")
        stack.callback(kafka.close)
        topic = f"bench-proxy-{uuid.uuid4().hex[:8]}"
        rig = Rig(workdir, kafka.bootstrap_servers, topic)
        stack.callback(rig.close)
        # The broker starts while the processes that do not need it do.
        with ThreadPoolExecutor(1) as pool:
            kafka_started = pool.submit(kafka.start)
            targets = {DIRECT: rig.app(), BARE: rig.proxy(BARE, capture=False),
                       KAFKA_DOWN: rig.proxy(KAFKA_DOWN, capture=True,
                                             bootstrap=closed_address())}
            rig.ready(*targets.values())
            kafka_started.result()
        targets[CAPTURE] = rig.proxy(CAPTURE, capture=True)
        if args.baseline:
            targets[BASELINE] = rig.proxy(BASELINE, capture=True, code=args.baseline.resolve())
        second = rig.proxy(f"{CAPTURE} #2", capture=True) if "scaling" in args.only else None
        rig.ready(*(t for t in (targets[CAPTURE], targets.get(BASELINE), second) if t))
        broker = getattr(kafka, "_proc", None)  # only a broker we launched has a pid here
        broker_pid = broker.pid if broker is not None else None
        for name in (CAPTURE, BASELINE):
            if name in targets:
                wait_connected(targets[name])
        note(f"Kafka and {len(targets)} processes ready in {time.monotonic() - began:.0f} s")
        warm_up(list(targets.values()), loads)
        note(f"warmed up in {time.monotonic() - began:.0f} s")
        console.print(f"load average before: {load_average()} (1, 5, 15 min); sections: "
                      f"{', '.join(args.only)}; {args.rounds} rounds of {args.requests} "
                      f"requests per ab run" + (f"; {args.sustain:g} s of sustained load"
                                                if "memory" in args.only else ""))
        accounts: list[Account] = []
        started = time.monotonic()
        if "targets" in args.only:
            goals = start_targets(rig)
            t_loads = [loads[0]] if args.quick else target_loads()
            warm_up(list(goals.values()), t_loads)
            runs = measure_targets(goals, t_loads, args.rounds, args.requests)
            table, missed = targets_table(runs, t_loads, list(goals), style)
            console.print(table)
            console.print(scaling_estimate(runs, t_loads, style))
            console.print(f"load average: {load_average()}")
            for name in (ONE, ONE_ASYNCIO, TWO, ONE_DOWN, TWO_DOWN):
                accounts.append(account(goals[name], kafka_up=not name.endswith("down")))
            for line in missed:
                console.print(f"target missed: {line}")
        if "linger" in args.only:
            table, lingering = linger(rig, args.rounds, args.requests, style, args.quick)
            console.print(table)
            accounts += [account(t, kafka_up=True) for t in lingering]
        if "overhead" in args.only:
            results, drops = overhead(targets, loads, args.rounds, args.requests)
            console.print(overhead_table(results, drops, loads, style))
            console.print(f"load average: {load_average()}")
        if "cost" in args.only:
            console.print(cost(targets, args.cost_concurrency, args.rounds, args.requests,
                               broker_pid, style))
            console.print(f"load average: {load_average()}")
        if second is not None:
            console.print(scaling(targets[CAPTURE], second, args.scaling_concurrency,
                                  args.rounds, args.requests, style))
            console.print(f"load average: {load_average()}")
        accounts += [account(t, kafka_up=True)
                     for t in (targets[CAPTURE], targets.get(BASELINE), second) if t]
        accounts.append(account(targets[KAFKA_DOWN], kafka_up=False))
        if "memory" in args.only:
            table, checked = memory(rig, memory_loads, args.sustain, style, args.baseline)
            console.print(table)
            console.print(f"load average: {load_average()}")
            accounts += checked
        produced = sum(a.produced for a in accounts if not a.name.endswith("down"))
        on_topic = topic_size(kafka.bootstrap_servers, topic)
        console.print(accounts_table(accounts, on_topic, produced, style))
        failures += [f"{a.name}: {a.problem}" for a in accounts if a.problem]
        if on_topic != produced:
            failures.append(f"the topic holds {on_topic} records, the proxies produced "
                            f"{produced:.0f}")
        console.print(f"took {time.monotonic() - started:.0f} s; load average after: "
                      f"{load_average()}")
    for failure in failures:
        print(f"proxy_overhead: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"proxy_overhead: {e}", file=sys.stderr)
        sys.exit(1)
