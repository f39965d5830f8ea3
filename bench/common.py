"""What the benches share: driving ab, reading a process's CPU time and memory, the machine's load.

Figures come from ab (ApacheBench) and from /proc, nothing else: req/s is ab's "Requests per
second", percentiles come from ab's -e table (per cent -> ms, to the microsecond).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A bench cannot go on (a tool failed, a process died, a count does not add up)."""


@dataclass(frozen=True, slots=True)
class Load:
    """One kind of traffic: what each request is, how many at once, over kept connections or not."""

    concurrency: int
    keepalive: bool
    body: bytes | None = None  # None: GET /small; else POST /upload with this body
    # The seed's own command instead: `ab -m POST -H "Authorization: mytoken" URL/jobs`.
    jobs: bool = False

    @property
    def label(self) -> str:
        what = ("POST /jobs (seed)" if self.jobs else
                f"POST {len(self.body) // 1024} KB" if self.body else "GET small")
        return f"{what}, c={self.concurrency}, {'keep-alive' if self.keepalive else 'new conn'}"

    @property
    def path(self) -> str:
        return "/jobs" if self.jobs else "/upload" if self.body else "/small"


@dataclass(frozen=True, slots=True)
class AbResult:
    complete: int
    failed: int
    non_2xx: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float

    @property
    def errors(self) -> int:
        return self.failed + self.non_2xx


def ab(base_url: str, load: Load, requests: int, *, seconds: float | None = None) -> AbResult:
    """Run ab once against base_url + load.path; with `seconds`, for that long instead."""
    with tempfile.TemporaryDirectory(prefix="tapline-ab-") as tmp:
        percentiles = Path(tmp) / "percentiles.csv"
        command = ["ab", "-q", "-r", "-c", str(load.concurrency), "-e", str(percentiles)]
        if seconds is not None:
            command += ["-t", str(seconds)]  # -t sets -n 50000: the -n after it wins
        command += ["-n", str(requests)]
        if load.keepalive:
            # ab sends `Connection: Keep-Alive` with an HTTP/1.0 request, and mitmproxy 11
            # compares that token case-sensitively, so it would close every connection after
            # one response. A second, lower-case header keeps it open; the app ignores it.
            command += ["-k", "-H", "Connection: keep-alive"]
        if load.jobs:
            command += ["-m", "POST", "-H", "Authorization: mytoken"]
        if load.body is not None:
            body = Path(tmp) / "body"
            body.write_bytes(load.body)
            command += ["-p", str(body), "-T", "application/json"]
        command.append(base_url + load.path)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(command)} failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-500:]}")
        return _parse(done.stdout, percentiles)


def _parse(out: str, percentiles: Path) -> AbResult:
    def field(name: str, default: str | None = None) -> str:
        match = re.search(rf"^{re.escape(name)}:\s+([\d.]+)", out, re.MULTILINE)
        if match is None:
            if default is not None:
                return default
            raise BenchError(f"ab printed no {name!r}:\n{out[-1500:]}")
        return match.group(1)

    with percentiles.open() as table:
        rows = {int(row[0]): float(row[1]) for row in csv.reader(table) if row[0].isdigit()}
    complete = int(field("Complete requests"))
    if complete < 100:
        # ab reads its 99th per cent as the request at index round(0.99 n): past the end of
        # its table below 100 requests.
        rows[99] = float("nan")
    return AbResult(
        complete=complete,
        failed=int(field("Failed requests")),
        non_2xx=int(field("Non-2xx responses", "0")),
        seconds=float(field("Time taken for tests")),
        rps=float(field("Requests per second")),
        p50_ms=rows[50],
        p99_ms=rows[99],
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of the process and of its children now running, theirs and so on (a
    proxy supervisor and its workers)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError, IndexError):  # gone meanwhile
                total += tree_cpu_seconds(int(child))
    return total


def machine_busy() -> tuple[int, int]:
    """The machine's CPU time so far, in clock ticks summed over all CPUs: (busy, total)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll `check()` until it returns something truthy; BenchError naming `what` after that."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
    return value
