"""Reading settings from the environment: one error type, one reader, shared by every service.

Every number has a range and must be finite: a port outside 1-65535, a size of a petabyte or a
timeout of `nan` is refused when the service starts, with the variable's name, instead of
failing later somewhere else (a metrics server that raises after the proxy started, a flush
that never times out). A refused value is shown only when it is short and shaped like what
was asked for; anything else may be a credential pasted into the wrong variable, and is
described by its length instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Where every service looks when told nothing: one host, as `make run` lays it out.
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_TOPIC = "http-captures"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/tapline"

# What a refused number or word may look like to be echoed in an error.
_SHOWABLE = re.compile(r"[0-9A-Za-z.+_-]{1,24}")


class SettingsError(ValueError):
    """A setting with a value the service cannot use; the message names the variable."""


def shown(raw: str) -> str:
    """`raw` for an error message: itself when it is short and plain, else its length."""
    raw = raw.strip()
    if _SHOWABLE.fullmatch(raw):
        return repr(raw)
    return f"(a value of {len(raw)} characters, not shown)"


class EnvReader:
    """Typed reads of settings, each error naming the variable and what it wants."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip()

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={shown(raw)} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={value} is below the minimum {minimum}")
        if value > maximum:
            raise SettingsError(f"{name}={value} is above the maximum {maximum}")
        return value

    def port(self, name: str, default: int, *, zero: str | None = None) -> int:
        """A TCP port, 1-65535; 0 too when `zero` says what it means (for example "off")."""
        value = self.integer(name, default, minimum=0, maximum=65535)
        if value == 0 and zero is None:
            raise SettingsError(f"{name}=0: use a port from 1 to 65535")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={shown(raw)}: use true or false")

    def number(self, name: str, default: float, *, minimum: float = 0.0, maximum: float,
               above_minimum: bool = False) -> float:
        """A finite number from `minimum` (excluded when `above_minimum`) to `maximum`."""
        raw = self.env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={shown(raw)} is not a number") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name}={shown(raw)}: use a finite number")
        if value < minimum or (above_minimum and value == minimum):
            bound = "above" if above_minimum else "at least"
            raise SettingsError(f"{name}={value:g} must be {bound} {minimum:g}")
        if value > maximum:
            raise SettingsError(f"{name}={value:g} is above the maximum {maximum:g}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """One of `choices` (any case); the first when unset."""
        value = self.text(name, choices[0]).lower() or choices[0]
        if value not in choices:
            raise SettingsError(f"{name}={shown(value)}: use {' or '.join(choices)}")
        return value
