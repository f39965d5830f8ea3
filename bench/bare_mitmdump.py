"""mitmdump exactly as `python -m proxy` runs it, minus the capture addon: the bench's baseline.

    PROXY_ROUTES=bench=http://127.0.0.1:5100@5000 .venv/bin/python bench/bare_mitmdump.py

The arguments come from proxy/__main__.py's own `mitmdump_args`, with `-s addon.py` taken
out, so the two configurations cannot drift apart.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mitmproxy.tools.main import mitmdump

from proxy.__main__ import ADDON, mitmdump_args
from proxy.settings import ProxySettings


def bare_args(settings: ProxySettings, extra: list[str]) -> list[str]:
    args = mitmdump_args(settings, extra)
    at = args.index("-s")
    if args[at + 1] != str(ADDON):
        raise SystemExit(f"bare_mitmdump: unexpected -s {args[at + 1]}")
    return args[:at] + args[at + 2:]


def main() -> int:
    settings = ProxySettings.from_env()
    if not settings.log_connections:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)
    mitmdump(bare_args(settings, sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
