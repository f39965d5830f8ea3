"""Log lines that quote no request: a filter for every handler of the proxy's and the sinks'
logs, which are not redacted the way records are.

What it withholds, wherever a line has it (mitmproxy's own lines among them):
- bytes as Python writes them (`b'...'`, `bytearray(b'...')`): that is how mitmproxy quotes
  what came off the wire, headers and all (a head cut short, a bad request or header line,
  unexpected bytes from an app, a WebSocket ping's payload); the line keeps their size;
- query strings after a path or a host;
- whatever the redactor (when there is one) finds in what is left.
A traceback attached to a line is part of the line here, and is scrubbed the same way.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Protocol

# repr() of bytes: b'...' or b"...", escapes inside, never a raw line break.
_BYTES = re.compile(r"""(?<![\w'"])b(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")
_ESCAPE = re.compile(r"\\x[0-9a-fA-F]{2}|\\.")
# A query string in a log line: after a path or a host, to the next space or quote.
_QUERY = re.compile(r"(?<=[\w/])\?[^\s'\"]+")
_DONE = "_tapline_scrubbed"  # a record is scrubbed once, whatever the number of handlers


class Scrubber(Protocol):
    def scrub(self, text: str) -> str: ...


def _withheld(match: re.Match[str]) -> str:
    size = len(_ESCAPE.sub("_", match.group()[2:-1]))  # one character per byte, escapes too
    return f"[{size} bytes withheld]"


def scrub_line(text: str, redactor: Scrubber | None = None) -> str:
    """`text` without bytes literals, query strings, and what `redactor` finds."""
    text = _BYTES.sub(_withheld, text)
    text = _QUERY.sub("?[query withheld]", text)
    return redactor.scrub(text) if redactor is not None else text


class SecretsOutOfLogs(logging.Filter):
    """Rewrites each record it sees with `scrub_line` (its traceback included) and lets it
    through."""

    def __init__(self, redactor: Scrubber | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            message += "\n" + record.exc_text
        record.msg, record.args = scrub_line(message, self.redactor), ()
        record.exc_info = record.exc_text = None
        setattr(record, _DONE, True)
        return True


def keep_secrets_out_of_logs(redactor: Scrubber | None = None,
                             logger: logging.Logger | None = None) -> None:
    """Put `SecretsOutOfLogs` on every handler of `logger` (default: the root logger, where
    mitmdump's terminal log and `logging.basicConfig`'s handler are), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SecretsOutOfLogs) for f in handler.filters):
            handler.addFilter(SecretsOutOfLogs(redactor))
