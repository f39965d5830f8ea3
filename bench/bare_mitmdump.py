"""mitmdump exactly as `python -m proxy` runs it, minus the capture addon: the bench's baseline.

    PROXY_ROUTES=bench=http://127.0.0.1:5100@5000 .venv/bin/python bench/bare_mitmdump.py

The arguments and the way mitmdump is started come from proxy/__main__.py itself
(`mitmdump_args`, `run_mitmdump`), without the addon, so the two configurations cannot drift
apart.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.__main__ import keep_big_buffers_off_the_heap, mitmdump_args, run_mitmdump
from proxy.settings import ProxySettings


def main() -> int:
    settings = ProxySettings.from_env()
    if not settings.log_connections:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    keep_big_buffers_off_the_heap()
    run_mitmdump(mitmdump_args(settings, sys.argv[1:]), capture=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
