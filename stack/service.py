"""What every launched service shares: ports, log files and one child process to start and stop."""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, Self

from stack.errors import StartupFailed

LOOPBACK = "127.0.0.1"
_POLL_S = 0.1

# What any program needs from the shell that starts it: where programs are, whose home, the
# language and time zone of its messages, where temporary files go. No credentials.
BASE_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def base_env(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `parent` (default: ours) that every program may have: BASE_VARIABLES
    and the locale's LC_*. A launcher adds what the program itself needs, and nothing else of
    the shell's (its S3 keys, its DATABASE_URL) reaches the child."""
    parent = os.environ if parent is None else parent
    return {name: value for name, value in parent.items()
            if name in BASE_VARIABLES or name.startswith("LC_")}


class Stoppable(Protocol):
    def stop(self, timeout: float | None = None) -> None: ...


_left_running: set[Stoppable] = set()


def stop_at_exit(service: Stoppable) -> None:
    """Stop the service when Python exits, if nobody did before.

    A test run that dies of an exception, or a script whose output pipe closed, would otherwise
    leave a broker or a database running in the background with nobody to stop it.
    """
    _left_running.add(service)


def forget_at_exit(service: Stoppable) -> None:
    _left_running.discard(service)


@atexit.register
def _stop_left_running() -> None:
    for service in list(_left_running):
        with contextlib.suppress(Exception):
            service.stop()


def free_ports(count: int) -> list[int]:
    """Return `count` distinct loopback ports that nobody listens on right now.

    The ports come from below the kernel's ephemeral range: a port the kernel handed out with
    bind(0) is one it also hands out as the local port of outgoing connections, and a Kafka
    client's connection sitting on it makes the service's own bind fail later. Below that
    range only another launcher's random pick can collide. The sockets stay bound until all
    ports are known, so two calls inside one service never get the same port.
    """
    low, high = _PICK_RANGE
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            port = _random.randint(low, high)
            if port in _handed_out:  # given to a caller who may not have bound it yet
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
            _handed_out.append(port)
        return ports


# The OS's randomness, not the `random` module's shared generator, which a test may seed: two
# processes seeded alike would pick the same ports. And the last ports handed out, so that
# calls one after another (one per service, before any binds) never return the same port.
_random = random.SystemRandom()
_handed_out: collections.deque[int] = collections.deque(maxlen=512)


def _pick_range() -> tuple[int, int]:
    """Ports outside the ephemeral range: 20000 up to its start (Linux: 32768 by default), or
    above its end when it starts too low to leave room below."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        first, last = 32768, 60999
    if first > 21000:
        return 20000, first - 1
    if last < 64535:
        return last + 1, 65535
    return 1024, 65535  # no room outside it: fall back to any unprivileged port


_PICK_RANGE = _pick_range()


def free_port() -> int:
    """Return one loopback port that nobody listens on right now (see `free_ports`)."""
    return free_ports(1)[0]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40, offset: int = 0) -> str:
    """Return the last lines of a log file written after `offset`, or a note when there is none.

    The offset lets a restarted service quote only what this start wrote, not an older run.
    """
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return f"(no log at {path})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(nothing written to {path})"


class ProcessService:
    """A service that is one child process of ours, writing its console to a log file.

    Subclasses say how to launch it (`_command`), how to tell it is ready (`_is_ready`), and may
    prepare files before the launch and act after it is ready or stopped. The child runs in its own
    session so that a Ctrl-C meant for the caller reaches it only through `stop()`, in order.
    """

    name = "service"
    managed = True  # we launched it, so we may stop and restart it
    default_timeout_s = 30.0
    stop_timeout_s = 30.0

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.workdir = Path(workdir).resolve()
        self.log_path = self.workdir / log_name
        # The child's whole environment when set (a launcher that gives only what it needs);
        # None inherits ours.
        self.environment: Mapping[str, str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._log_offset = 0

    # What a subclass provides.

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Runs before each launch, outside the start timeout (it may download things)."""

    def _after_ready(self) -> None:
        """Runs once the service answers, inside `start()`."""

    def _env(self) -> dict[str, str] | None:
        """The child's environment; None inherits ours."""
        return None if self.environment is None else dict(self.environment)

    def _after_stop(self, clean: bool) -> None:
        """Runs once the process is gone; `clean` says it had been ready and ended on SIGTERM."""

    # The life cycle.

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Launch the service and return once it answers clients; no-op when it already runs.

        Raises StartupFailed, quoting the end of the log, if the process exits or does not answer
        within `timeout` seconds (the class default when None); the process is then stopped.
        """
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        command = list(self._command())
        self._ready = False
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=self._env(), start_new_session=True,
            )
        stop_at_exit(self)
        limit = self.default_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                forget_at_exit(self)
                self._after_stop(clean=False)
                raise StartupFailed(self._failure(f"exited with code {code} while starting"))
            if self._is_ready():
                self._ready = True
                break
            if time.monotonic() > deadline:
                self.stop()
                raise StartupFailed(self._failure(f"did not answer within {limit:.0f} s"))
            time.sleep(_POLL_S)
        try:
            self._after_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the process to end (SIGTERM), kill it if it is still there after `timeout` seconds.

        Idempotent: stopping a stopped service does nothing.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        forget_at_exit(self)
        clean = self._ready and proc.poll() is None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                clean = False
        self._after_stop(clean)

    def kill(self) -> None:
        """SIGKILL: the process ends at once, with no chance to clean up (a crash, for tests)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        forget_at_exit(self)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._after_stop(False)

    def close(self) -> None:
        """End of use: the same as `stop()` for a service we launched."""
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this start of the service wrote to its log."""
        return tail(self.log_path, lines, self._log_offset)

    def _failure(self, what: str) -> str:
        return f"{self.name} {what}; the end of {self.log_path}:\n{self.log_tail()}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
