"""`python -m proxy`: mitmproxy in reverse mode, one listener per route, with the capture addon.

It runs a lean master (proxy/master.py): mitmproxy's core with only the addons a capturing
reverse proxy needs, the capture addon among them as a built-in addon, not a script (mitmproxy
walks a script's addons through its script loader for every event). Extra arguments are
mitmdump's (for example `--set connection_strategy=lazy`), for the options the lean master
has; `mitmdump -s proxy/addon.py` still runs the addon in mitmdump itself, by hand.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys

from mitmproxy.tools import cmdline
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.tools.main import run

from proxy import workers
from proxy.master import CaptureMaster, LeanMaster, command_line
from proxy.settings import ProxySettings, SettingsError

# Allocations from this size up get their own memory map, given back to the system when freed.
MMAP_THRESHOLD_BYTES = 64 << 10
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def keep_big_buffers_off_the_heap() -> bool:
    """Have glibc map every allocation of 64 KiB or more on its own. True when it took.

    With large bodies the proxy allocates buffers of 100 KB to a few MB many times a second
    (bodies, records, Kafka batches and their compressed copies) beside records that wait in
    the queue. glibc raises its threshold for mapping on its own to the largest block freed so
    far (up to 32 MiB), so after the first big batch everything lands on the heap, where the
    long-lived records pin the freed space: under 100 KB uploads with Kafka up the proxy's
    RSS grew to 454 MB in 30 s and kept growing, and was 236 MB with a fixed 64 KiB threshold
    (`MALLOC_MMAP_THRESHOLD_=65536`), the same as with Kafka down. An explicit
    MALLOC_MMAP_THRESHOLD_ in the environment is left alone; other C libraries are too.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)


def run_proxy(args: list[str], *, capture: bool = True, event_loop: str = "uvloop") -> None:
    """The lean master (proxy/master.py) with `args`, as mitmdump runs its own; with the
    capture addon unless `capture` is false (the benches' lean master without it)."""
    use_event_loop(event_loop)
    run(CaptureMaster if capture else LeanMaster, command_line, args)


def use_event_loop(name: str) -> str:
    """Run the proxy on uvloop (libuv's event loop, faster at the socket work that is most of
    a proxy's) or on asyncio's own; the one it runs on. Without uvloop installed (a platform
    with no wheel), asyncio's, with a warning."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger(__name__).warning(
                "uvloop is not installed: the proxy runs on asyncio's event loop")
            return "asyncio"
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def run_mitmdump(args: list[str]) -> None:
    """mitmdump's own master with `args`, as `mitmproxy.tools.main.mitmdump` runs it (the
    benches' bare mitmdump)."""
    run(DumpMaster, cmdline.mitmdump, args)


def mitmdump_args(settings: ProxySettings, extra: list[str]) -> list[str]:
    first, *more = settings.listen_hosts
    args = []
    for route in settings.routes:
        args += ["--mode", route.mode]
        # mitmdump takes one --listen-host; a listener on another address names it itself.
        for host in more:
            args += ["--mode", route.mode_on(host)]
    return [
        *args,
        "--listen-host", first,
        # The record keeps the headers the client sent; by default reverse mode rewrites Host
        # to the upstream's before any hook sees it.
        "--set", "keep_host_header=true",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ProxySettings.from_env()
    except SettingsError as e:
        print(f"tapline proxy: {e}", file=sys.stderr)
        return 2
    args = sys.argv[1:] if argv is None else argv
    worker = workers.worker_index()
    if worker is None:
        for route in settings.routes:
            where = ", ".join(f"[{host}]:{route.port}" if ":" in host else f"{host}:{route.port}"
                              for host in settings.listen_hosts)
            print(f"tapline proxy: {route.app}: {where} -> {route.upstream}",
                  file=sys.stderr, flush=True)
        if settings.workers > 1:
            print(f"tapline proxy: {settings.workers} workers (PROXY_WORKERS)",
                  file=sys.stderr, flush=True)
            return workers.supervise(settings, args, settings.workers)
    else:
        workers.become_worker()
    # mitmproxy logs every connection at info: at thousands of requests a second that costs
    # more than the capture does. Connection errors still show, as warnings.
    if not settings.log_connections:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    keep_big_buffers_off_the_heap()
    run_proxy(mitmdump_args(settings, args), event_loop=settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
