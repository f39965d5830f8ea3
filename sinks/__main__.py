"""`python -m sinks timescale|lake`: run one sink until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from capture.endpoint import StartError
from capture.logs import keep_secrets_out_of_logs
from capture.settings import SettingsError
from sinks.loop import ConsumerLoop, Sink
from sinks.metrics import SinkMetrics
from sinks.settings import SINKS, LoopSettings, TimescaleSettings


def make_sink(name: str) -> Sink:
    if name == "timescale":
        from sinks.timescale import TimescaleSink

        return TimescaleSink(TimescaleSettings.from_env())
    from sinks.lake import LakeSettings, LakeSink

    return LakeSink(LakeSettings.from_env())


async def run(name: str) -> None:
    settings = LoopSettings.from_env(name)
    sink = make_sink(name)
    metrics = SinkMetrics(name)
    metrics.serve(settings.metrics_host, settings.metrics_port)
    loop = ConsumerLoop(sink, settings, metrics)
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, loop.stop)
    try:
        await loop.run()
    finally:
        metrics.close()


def parse(argv: list[str] | None = None) -> str:
    """The sink the command line names; otherwise the usage line on standard error and
    SystemExit(2). Its settings come from the environment (sinks.settings), read at start."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SINKS:
        print(f"usage: python -m sinks {{{','.join(SINKS)}}}", file=sys.stderr)
        raise SystemExit(2)
    return argv[0]


def main(argv: list[str] | None = None) -> int:
    name = parse(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Reasons and errors can quote a record (a query string, bytes): the log gets neither.
    keep_secrets_out_of_logs()
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # Alembic lists the plugins it sets up as it is imported: nothing a sink's log needs.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        asyncio.run(run(name))
    except SettingsError as e:
        print(f"tapline sink: {e}", file=sys.stderr)
        return 2
    except StartError as e:
        print(f"tapline sink: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
