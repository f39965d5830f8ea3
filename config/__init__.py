"""Reading settings from the environment: one error type, one reader, shared by every service."""

from __future__ import annotations

from collections.abc import Mapping


class SettingsError(ValueError):
    """A setting with a value the service cannot use; the message names the variable."""


class EnvReader:
    """Typed reads of settings, each error naming the variable and what it wants."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        return self.env.get(name, default).strip()

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={value} is below the minimum {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r}: use true or false")

    def number(self, name: str, default: float) -> float:
        raw = self.env.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if value < 0:
            raise SettingsError(f"{name}={value} is negative")
        return value
