"""A throwaway PostgreSQL cluster on loopback, made with the machine's own initdb and pg_ctl.

PostgreSQL refuses to run as root, and root is who runs tests on these machines: then every
PostgreSQL program runs as the `postgres` OS user (runuser), and the cluster's files belong to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import quote

from stack.errors import StackError, StartupFailed, ToolMissing
from stack.service import LOOPBACK, forget_at_exit, free_port, stop_at_exit, tail

_INCLUDE = "include_if_exists = 'tapline.conf'"
_PRIVATE_PREFIX = "tapline-pg-"  # a cluster's own folder, when postgres cannot reach the work dir
_OWNER = "workdir-link"  # in that folder: the link that points to it from the work dir
_SOCKET_PATH_MAX = 100  # a Unix socket path must fit in 108 bytes, with ".s.PGSQL.<port>"


def find_bindir() -> Path:
    """PostgreSQL's program folder: `pg_config --bindir`, else the newest /usr/lib/postgresql/*."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        bindir = Path(done.stdout.strip())
        if done.returncode == 0 and (bindir / "initdb").is_file():
            return bindir
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda initdb: [int(n) for n in re.findall(r"\d+", initdb.parent.parent.name)],
    )
    if not versions:
        raise ToolMissing("PostgreSQL is not installed: no pg_config, no /usr/lib/postgresql/*")
    return versions[-1].parent


def has_timescaledb(bindir: Path) -> bool:
    """Tell whether the TimescaleDB extension is installed for this PostgreSQL."""
    # Debian keeps share/ at /usr/share/postgresql/<major>, which pg_config also reports.
    sharedir = Path("/usr/share/postgresql") / bindir.parent.name
    if (bindir / "pg_config").is_file():
        done = subprocess.run([bindir / "pg_config", "--sharedir"], capture_output=True, text=True)
        if done.returncode == 0:
            sharedir = Path(done.stdout.strip())
    return (sharedir / "extension" / "timescaledb.control").is_file()


def _remove_orphans() -> None:
    """Delete the private cluster folders whose work dir is gone (pytest rotates its own).

    They live outside the work dir, so nothing else would ever delete them; one that still runs
    (it has a postmaster.pid) is left alone.
    """
    for private in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*"):
        try:
            link = Path((private / _OWNER).read_text())
        except OSError:
            continue  # not one of ours, or still being made
        if link.is_symlink() and link.resolve() == private.resolve():
            continue
        if not (private / "data" / "postmaster.pid").exists():
            shutil.rmtree(private, ignore_errors=True)


class Postgres:
    """A PostgreSQL cluster of our own in `workdir`, listening on 127.0.0.1:`port` (default free).

    The first `start()` runs initdb (superuser `postgres`, trust authentication, which initdb
    writes for loopback) and creates the database `dbname`; later starts reuse the data. With
    `password`, TCP connections must log in with a password instead (SCRAM), the superuser's
    being `password`: for tests of roles and their passwords. Settings
    go to data/tapline.conf, rewritten at each start. Durability is traded for speed (fsync off):
    a clean `stop()` keeps every row, a crash of the machine may not.

    When root runs it and the `postgres` user cannot reach `workdir` (pytest's temporary folders
    are private to root), the cluster lives in a folder of its own under the system's temporary
    folder, and `workdir/postgres` is a symbolic link to it.
    """

    name = "PostgreSQL"
    managed = True
    host = LOOPBACK
    default_timeout_s = 60.0

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        dbname: str = "tapline",
        user: str = "postgres",
        os_user: str = "postgres",
        bindir: Path | None = None,
        password: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.dbname = dbname
        self.user = user
        self.os_user = os_user
        self.bindir = bindir or find_bindir()
        self.password = password
        self._as_root = os.geteuid() == 0
        self._log_offset = 0
        # The whole environment of PostgreSQL's programs when set; None inherits ours.
        self.environment: Mapping[str, str] | None = None

    @property
    def dsn(self) -> str:
        login = f"{self.user}:{quote(self.password, safe='')}" if self.password else self.user
        return f"postgresql://{login}@{self.host}:{self.port}/{self.dbname}"

    @property
    def root(self) -> Path:
        """The cluster's folder: data/, run/ (the socket) and postgresql.log."""
        return (self.workdir / "postgres").resolve()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgresql.log"

    @property
    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._pg("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    def start(self, timeout: float | None = None) -> Self:
        """Start the cluster (creating it the first time) and return once it takes connections."""
        limit = self.default_timeout_s if timeout is None else timeout
        self._make_root()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.running:
            self._check_port()
            return self
        self._write_settings()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        started = self._pg(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
            "-w", "-t", str(int(limit)), "-s", timeout=limit + 10,
        )
        stop_at_exit(self)
        try:
            if started.returncode != 0:
                raise StartupFailed(self._failure("did not start", started))
            self._create_database()
        except BaseException:
            with contextlib.suppress(StackError, subprocess.SubprocessError):
                self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the cluster (fast mode: open sessions are ended); idempotent."""
        forget_at_exit(self)
        if not self.running:
            return
        limit = self.default_timeout_s if timeout is None else timeout
        done = self._pg("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                        "-t", str(int(limit)), "-s", timeout=limit + 10)
        if done.returncode != 0:
            raise StackError(f"{self.name} did not stop: {(done.stdout + done.stderr).strip()}")

    def close(self) -> None:
        """End of use: the same as `stop()` for a cluster we launched."""
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines, self._log_offset)

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Run SQL with psql and return its unaligned output; raise StackError on an error."""
        done = self._psql(sql, dbname or self.dbname)
        if done.returncode != 0:
            raise StackError(f"psql failed on {sql!r}: {done.stderr.strip()}")
        return done.stdout

    # Steps of start().

    def _make_root(self) -> None:
        link = self.workdir / "postgres"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if link.exists():
            return
        if link.is_symlink():  # its private folder was cleaned away: start a new cluster
            link.unlink()
        if not self._as_root or self._os_user_reaches(self.workdir):
            link.mkdir()
        else:
            _remove_orphans()
            # mkdtemp makes it 0700; the chown below hands it to the postgres user.
            private = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX))
            (private / _OWNER).write_text(str(link))
            link.symlink_to(private)
        self._chown(link.resolve())

    def _initdb(self) -> None:
        (self.root / "run").mkdir(exist_ok=True)
        self._chown(self.root / "run")
        auth = ["--auth=trust"]
        if self.password is not None:
            pwfile = self.root / "run" / "superuser-password"
            pwfile.write_text(self.password + "\n")
            self._chown(pwfile)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        done = self._pg(
            "initdb", "-D", str(self.data_dir), "-U", self.user, *auth, "-E", "UTF8",
            "--locale=C", "--no-sync", timeout=300,
        )
        if self.password is not None:
            pwfile.unlink()
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise StartupFailed(f"initdb failed:\n{done.stdout}{done.stderr}".rstrip())
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n{_INCLUDE}\n")

    def _write_settings(self) -> None:
        socket_dir = self.root / "run"
        sockets = str(socket_dir) if len(str(socket_dir)) < _SOCKET_PATH_MAX - 16 else ""
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            # An empty list means TCP only: a path too long for a socket would stop the start.
            "unix_socket_directories": sockets,
            # A throwaway cluster: speed over surviving a power cut.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        if has_timescaledb(self.bindir):
            settings["shared_preload_libraries"] = "timescaledb"
            settings["timescaledb.telemetry_level"] = "off"
        conf = self.data_dir / "tapline.conf"
        conf.write_text("".join(f"{key} = '{value}'\n" for key, value in settings.items()))
        self._chown(conf)

    def _check_port(self) -> None:
        """A cluster left running on this data by someone else must at least be where we say."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        if port != self.port:
            raise StartupFailed(f"{self.name} already runs on {self.data_dir}, on port {port} "
                                f"rather than {self.port}: stop it first")

    def _create_database(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.dbname}'"
        if self.psql(query, dbname="postgres").strip() != "1":
            self.psql(f'CREATE DATABASE "{self.dbname}"', dbname="postgres")

    # Helpers.

    def _pg(
        self, program: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run one of PostgreSQL's programs, as the postgres OS user when we are root."""
        command = [str(self.bindir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", self.os_user, "--", *command]
        # cwd: initdb and pg_ctl complain when they cannot enter root's home.
        cwd = self.root if self.root.exists() else None
        env = None if self.environment is None else dict(self.environment)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=env)

    def _psql(self, sql: str, dbname: str) -> subprocess.CompletedProcess[str]:
        command = [
            str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql,
        ]
        env = None if self.environment is None else dict(self.environment)
        if self.password:
            env = {**(os.environ if env is None else env), "PGPASSWORD": self.password}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    def _os_user_reaches(self, folder: Path) -> bool:
        done = subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-x", str(folder)],
                              capture_output=True)
        return done.returncode == 0

    def _chown(self, path: Path) -> None:
        if self._as_root:
            account = pwd.getpwnam(self.os_user)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _failure(self, what: str, done: subprocess.CompletedProcess[str]) -> str:
        said = (done.stdout + done.stderr).strip()
        return (f"{self.name} {what} ({said or 'pg_ctl said nothing'}); "
                f"the end of {self.log_path}:\n{self.log_tail()}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
