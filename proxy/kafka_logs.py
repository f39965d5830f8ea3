"""aiokafka's log lines, kept in proportion: while Kafka is down it logs an error for every
failed connection attempt and every expired batch, hundreds a minute."""

from __future__ import annotations

import logging
import time


class RepeatFilter(logging.Filter):
    """Lets each distinct message through at most once per `interval_s`, then says how many
    copies it held back. While Kafka is down aiokafka logs an error for every failed
    connection attempt and every expired batch, hundreds a minute, which would bury the
    proxy's own lines (the drop counters already count every lost record)."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.levelno}:{record.msg}"
        now = time.monotonic()
        shown_at, held = self._last.get(key, (float("-inf"), 0))
        if now - shown_at < self.interval_s:
            self._last[key] = (shown_at, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.interval_s:g} s)"
        self._last[key] = (now, 0)
        if len(self._last) > 1000:  # messages are templates, but bound the memory anyway
            self._last.clear()
        return True


def quiet_kafka_client_logs(interval_s: float = 30.0) -> None:
    """Install `RepeatFilter` on aiokafka's loggers (the handlers are mitmproxy's), and keep
    aiokafka's debug lines from being made at all: mitmproxy logs at debug level, and aiokafka
    writes several debug lines per batch."""
    logging.getLogger("aiokafka").setLevel(logging.INFO)
    repeat = RepeatFilter(interval_s)
    for name in ("aiokafka.conn", "aiokafka.client", "aiokafka.cluster", "aiokafka.admin.client",
                 "aiokafka.producer.sender", "aiokafka.producer.producer"):
        logging.getLogger(name).addFilter(repeat)
