"""`PROXY_WORKERS=N`: N proxy processes on the same listen ports, under one supervisor.

mitmproxy runs on one event loop in one thread, so one process uses one core. With N > 1,
`python -m proxy` becomes a supervisor that starts N workers (`python -m proxy` again, told
which worker it is by TAPLINE_PROXY_WORKER). Each binds every listener with SO_REUSEPORT, so
the kernel spreads new connections across them, and each has its own Kafka producer. The
supervisor

- serves the one /metrics endpoint: every worker writes its metrics to prometheus-client's
  shared files (multiprocess mode, PROMETHEUS_MULTIPROC_DIR, a fresh folder per run), and the
  supervisor sums them: counters over every worker that ever ran, gauges over the live ones;
- starts a worker again when it dies, and counts what the dead one held (queued or in flight)
  as dropped, reason `worker_lost`, so `captured == produced + dropped + queued + in flight`
  holds across workers and restarts (some of those may have reached Kafka: it is what the
  proxy can no longer vouch for);
- on SIGTERM or SIGINT stops every worker with SIGTERM, waits for each to flush
  (CAPTURE_SHUTDOWN_TIMEOUT_S, plus a margin), and exits. A worker whose supervisor dies
  gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops the same way.

A worker that dies within WORKER_MIN_UPTIME_S of its start counts as a failed start; after
MAX_FAILED_STARTS of them in a row the supervisor stops everything and exits 1 (a setting
every worker refuses, a port taken), instead of starting workers for ever.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from capture.endpoint import StartError, serve_metrics
from proxy.settings import ProxySettings

WORKER_ENV = "TAPLINE_PROXY_WORKER"
WORKER_MIN_UPTIME_S = 5.0
MAX_FAILED_STARTS = 5
STOP_MARGIN_S = 10.0
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("tapline.proxy.workers")


def worker_index() -> int | None:
    """This process's worker number, or None when it is not a supervised worker."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw else None


def become_worker() -> None:
    """What a worker does before mitmproxy starts: die with its supervisor, and bind its
    listeners so that its siblings can bind the same ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor is already gone
        sys.exit(0)
    reuse_port()


def reuse_port() -> None:
    """Have mitmproxy's TCP listeners set SO_REUSEPORT. mitmproxy 11.0.2 binds them with
    `asyncio.start_server(handler, host, port)` in `mitmproxy.proxy.mode_servers` and has no
    option for it, so that module's `asyncio` is given one whose `start_server` adds
    `reuse_port=True`; nothing else in the process changes."""
    import asyncio
    import types

    from mitmproxy.proxy import mode_servers

    async def start_server(*args, **kwargs):
        return await asyncio.start_server(*args, reuse_port=True, **kwargs)

    shim = types.ModuleType("asyncio")
    shim.__dict__.update(vars(asyncio))
    shim.start_server = start_server
    mode_servers.asyncio = shim


@dataclass
class Worker:
    index: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, settings: ProxySettings, args: list[str], count: int) -> None:
        self.settings = settings
        self.args = args
        self.count = count
        self.stopping = threading.Event()
        self.workers: dict[int, Worker] = {}
        self.failed_starts = 0
        self.exit_code = 0
        self.folder = tempfile.mkdtemp(prefix="tapline-proxy-metrics-")
        # prometheus-client picks its storage when first imported: shared files from here on.
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before the supervisor set "
                               "PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.folder
        from proxy.metrics import ProxyMetrics

        self.metrics = ProxyMetrics()

    # --- the workers ---------------------------------------------------------------------

    def start(self, index: int) -> None:
        env = dict(os.environ)
        env[WORKER_ENV] = str(index)
        env["PROXY_METRICS_PORT"] = "0"  # the supervisor serves /metrics
        process = subprocess.Popen([sys.executable, "-m", "proxy", *self.args], env=env)
        self.workers[index] = Worker(index, process)
        self.metrics.workers.set(len(self.workers))

    def reap(self, worker: Worker, code: int) -> None:
        """Account for a worker that has exited: what it still held is lost."""
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        pid = worker.process.pid
        files = glob.glob(os.path.join(self.folder, f"gauge_livesum_{pid}.db"))
        held = 0.0
        for family in MultiProcessCollector.merge(files):
            if family.name in ("tapline_proxy_queue_records", "tapline_proxy_in_flight_records"):
                held += sum(sample.value for sample in family.samples)
        if held:
            self.metrics.dropped.labels("worker_lost").inc(held)
        mark_process_dead(pid, self.folder)
        del self.workers[worker.index]
        self.metrics.workers.set(len(self.workers))
        if not self.stopping.is_set():
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.warning("proxy worker %d (pid %d) exited with %s%s", worker.index, pid, how,
                        f"; {held:.0f} records it held are counted as dropped (worker_lost)"
                        if held else "")

    def watch(self) -> None:
        """Start again the workers that die, until stopped."""
        while not self.stopping.is_set():
            for worker in list(self.workers.values()):
                code = worker.process.poll()
                if code is None:
                    continue
                self.reap(worker, code)
                if self.stopping.is_set():
                    break
                if time.monotonic() - worker.started < WORKER_MIN_UPTIME_S:
                    self.failed_starts += 1
                    if self.failed_starts >= MAX_FAILED_STARTS:
                        log.error("proxy workers keep dying as they start (%d in a row): "
                                  "stopping", self.failed_starts)
                        self.exit_code = 1
                        self.stopping.set()
                        break
                else:
                    self.failed_starts = 0
                self.start(worker.index)
                self.metrics.worker_restarts.inc()
            self.stopping.wait(0.2)

    def stop(self) -> None:
        """SIGTERM to every worker, then wait for each to flush; kill what is left."""
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + STOP_MARGIN_S
        for worker in list(self.workers.values()):
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("proxy worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                code = worker.process.wait()
            self.reap(worker, code)

    def figures(self) -> dict:
        """The whole proxy's counts, in the shape one producer logs as it stops."""
        from prometheus_client.multiprocess import MultiProcessCollector

        from proxy.metrics import DROP_REASONS

        values: dict[tuple[str, str], float] = {}
        for family in MultiProcessCollector.merge(glob.glob(os.path.join(self.folder, "*.db"))):
            for s in family.samples:
                values[(s.name, s.labels.get("reason", ""))] = s.value
        by_reason = {r: values.get(("tapline_proxy_dropped_total", r), 0.0)
                     for r in DROP_REASONS}
        return {
            "captured": values.get(("tapline_proxy_captures_total", ""), 0.0),
            "produced": values.get(("tapline_proxy_produced_total", ""), 0.0),
            "dropped": sum(by_reason.values()),
            "dropped_by_reason": by_reason,
            "workers": self.count,
        }

    # --- the whole -----------------------------------------------------------------------

    def run(self) -> int:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        def on_signal(signum, _frame) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        server = None
        try:
            if self.settings.metrics_port:
                registry = CollectorRegistry()
                MultiProcessCollector(registry, self.folder)
                try:
                    server = serve_metrics(registry, self.settings.metrics_host,
                                           self.settings.metrics_port)
                except StartError as e:
                    log.error("%s", e)
                    return 1
            for index in range(self.count):
                self.start(index)
            self.watch()
            before = self.figures()
            self.stop()
            after = self.figures()
            after["dropped_at_shutdown"] = float(sum(
                after["dropped_by_reason"][reason] - before["dropped_by_reason"][reason]
                for reason in ("shutdown", "worker_lost")))
            log.info("capture producer stopped: %s", after)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            for worker in self.workers.values():  # only after an unexpected error
                worker.process.kill()
            shutil.rmtree(self.folder, ignore_errors=True)
        return self.exit_code


def supervise(settings: ProxySettings, args: list[str], count: int) -> int:
    logging.basicConfig(format="[%(asctime)s.%(msecs)03d] %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    return Supervisor(settings, args, count).run()
