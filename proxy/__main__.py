"""`python -m proxy`: mitmdump in reverse mode, one listener per route, with the capture addon.

Extra arguments go to mitmdump as they are (for example `--set connection_strategy=lazy`).

The addon is added to mitmdump's master as a built-in addon, not loaded with `-s` as a script:
mitmproxy walks a script's addons through its script loader for every event, which cost the
capture proxy about a tenth of its capture work per exchange (`bench/profile_proxy.py`).
`mitmdump -s proxy/addon.py` still works, for running it by hand.
"""

from __future__ import annotations

import logging
import sys

from mitmproxy.tools import cmdline
from mitmproxy.tools.dump import DumpMaster
from mitmproxy.tools.main import run

from proxy.settings import ProxySettings, SettingsError


class CaptureMaster(DumpMaster):
    """mitmdump's master with the capture addon among its own."""

    def __init__(self, options, **kwargs) -> None:
        super().__init__(options, **kwargs)
        from proxy.addon import CaptureAddon  # imports mitmproxy's addon API; only here

        self.addons.add(CaptureAddon())


def run_mitmdump(args: list[str], *, capture: bool = True) -> None:
    """mitmdump with `args`, as `mitmproxy.tools.main.mitmdump` runs it; with the capture
    addon unless `capture` is false (the benches' bare mitmdump)."""
    run(CaptureMaster if capture else DumpMaster, cmdline.mitmdump, args)


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
        # One line per flow on the terminal would cost more than the capture itself.
        "--set", "flow_detail=0",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ProxySettings.from_env()
    except SettingsError as e:
        print(f"tapline proxy: {e}", file=sys.stderr)
        return 2
    for route in settings.routes:
        where = ", ".join(f"[{host}]:{route.port}" if ":" in host else f"{host}:{route.port}"
                          for host in settings.listen_hosts)
        print(f"tapline proxy: {route.app}: {where} -> {route.upstream}",
              file=sys.stderr, flush=True)
    # mitmproxy logs every connection at info: at thousands of requests a second that costs
    # more than the capture does. Connection errors still show, as warnings.
    if not settings.log_connections:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    run_mitmdump(mitmdump_args(settings, sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
