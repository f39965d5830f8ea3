"""What can go wrong when the stack starts or stops a service.

One root, so a caller (a fixture, `python -m stack`) can turn any of them into one clear line.
"""

from __future__ import annotations


class StackError(RuntimeError):
    """Root of the launcher's errors; the message is meant to be shown to a person as it is."""


class ToolMissing(StackError):
    """A program the service needs (java, mvn, initdb, moto) is not installed."""


class StartupFailed(StackError):
    """The service exited or did not answer within its start timeout; the message quotes its log."""


class NotLaunched(StackError):
    """The service was given by the environment, so the launcher cannot stop or restart it."""
