"""The proxy's baselines: mitmdump, or the proxy's lean master, without the capture addon.

    PROXY_ROUTES=bench=http://127.0.0.1:5100@5000 .venv/bin/python bench/bare_mitmdump.py
    PROXY_ROUTES=... .venv/bin/python bench/bare_mitmdump.py --lean

The first is mitmdump's own master (`DumpMaster`, all its default addons) with the listeners
and options of `python -m proxy`, quiet (`-q`, as a user runs it in front of an app); `--lean`
runs the proxy's lean master (proxy/master.py) without the addon: the capture's own cost is
what `python -m proxy` costs over it. The arguments and the way the master is started come
from proxy/__main__.py itself, so the configurations cannot drift apart.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.__main__ import keep_big_buffers_off_the_heap, mitmdump_args, run_mitmdump, run_proxy
from proxy.settings import ProxySettings


def main() -> int:
    settings = ProxySettings.from_env()
    if not settings.log_connections:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    keep_big_buffers_off_the_heap()
    args = sys.argv[1:]
    if "--lean" in args:
        args.remove("--lean")
        run_proxy(mitmdump_args(settings, args), capture=False, event_loop=settings.event_loop)
    else:
        run_mitmdump(mitmdump_args(settings, ["-q", *args]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
