"""TimescaleDB's full (TSL) edition for tests: PostgreSQL and TimescaleDB built as WASM (PGlite).

Debian has no TimescaleDB package, but npm has a PGlite build with it (stack/pglite/package.json).
`pglite_modules()` installs it once into a cache folder with npm, and `TimescaleLite` runs
stack/pglite/server.mjs on it, which speaks PostgreSQL's protocol on a loopback port.

What a client must know (see server.mjs for why):
- one connection at a time: a second one waits in a queue until the first closes, so close
  connections (or dispose engines; SQLAlchemy's NullPool) before opening the next;
- the session is reset between connections (ROLLBACK, DISCARD ALL), as a real server's would be;
- COPY ... FROM STDIN fails with FeatureNotSupported: write with INSERT;
- TimescaleDB's background workers do not run, so policies are stored but never run by
  themselves: call refresh_continuous_aggregate() or compress_chunk() where a test needs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from stack.cache import fetched_once
from stack.errors import StartupFailed, ToolMissing
from stack.service import LOOPBACK, ProcessService, free_port, port_open

STACK_DIR = Path(__file__).resolve().parent
PGLITE_DIR = STACK_DIR / "pglite"
PACKAGE_JSON = PGLITE_DIR / "package.json"
SERVER_SCRIPT = PGLITE_DIR / "server.mjs"
_TEMPLATE = "template"  # in the modules folder: a new, empty cluster to copy for each service
_NODE_MAJOR_MIN = 18


def find_node() -> Path:
    """Node.js 18 or newer, from PATH."""
    found = shutil.which("node")
    if found is None:
        raise ToolMissing("Node.js 18 or newer is needed to run TimescaleDB as WASM (PGlite) "
                          "but `node` is not on PATH")
    done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    major = re.match(r"v(\d+)\.", done.stdout.strip())
    if major is None or int(major.group(1)) < _NODE_MAJOR_MIN:
        raise ToolMissing(f"Node.js {_NODE_MAJOR_MIN} or newer is needed to run PGlite; "
                          f"{found} is {done.stdout.strip() or 'of an unknown version'}")
    return Path(found)


def npm_install(folder: Path, package_json: Path, what: str, timeout_s: float) -> None:
    """`npm install` of `package_json`'s pinned packages into `folder` (no lock file, no
    audit): the tests' tools from npm (PGlite, har-validator). `what` names them in errors."""
    npm = shutil.which("npm")
    if npm is None:
        raise ToolMissing(f"npm is needed to install {what} but is not on PATH")
    shutil.copy2(package_json, folder / "package.json")
    command = [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise StartupFailed(f"npm could not install {what} ({' '.join(command)} in {folder}):\n"
                            f"{_last_lines(done)}")


def pglite_modules(cache: Path | None = None, timeout_s: float = 600.0) -> Path:
    """Return the folder that holds PGlite's npm packages, installing them the first time.

    The folder is `<cache>/pglite`: stack/pglite/package.json, its node_modules, and `template`,
    an empty cluster made once, which each new service copies (a cluster of its own takes about
    three times longer to start than a copy). It is made again when package.json changes (see
    stack.cache.fetched_once). npm writes no lock file: package.json pins the one package,
    which depends on nothing.
    """

    def fill(folder: Path) -> None:
        node = find_node()
        npm_install(folder, PACKAGE_JSON, "PGlite (TimescaleDB as WASM)", timeout_s)
        _install_script(folder)
        command = [str(node), str(folder / SERVER_SCRIPT.name), "--init-only",
                   "--data-dir", str(folder / _TEMPLATE)]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0 or not (folder / _TEMPLATE / "PG_VERSION").is_file():
            raise StartupFailed(f"PGlite could not create its first cluster "
                                f"({' '.join(command)}):\n{_last_lines(done)}")

    return fetched_once("pglite", PACKAGE_JSON, fill, cache)


def _install_script(modules: Path) -> Path:
    """Put server.mjs beside node_modules, where Node finds the packages it imports.

    Copied at every start, through a rename, so an edit of the script takes effect at once and a
    service starting at the same time never reads half a file.
    """
    target = modules / SERVER_SCRIPT.name
    script = SERVER_SCRIPT.read_bytes()
    if not target.is_file() or target.read_bytes() != script:
        partial = target.with_name(f"{target.name}.{os.getpid()}-{id(script)}")
        partial.write_bytes(script)
        partial.replace(target)
    return target



def _last_lines(done: subprocess.CompletedProcess[str], count: int = 30) -> str:
    return "\n".join((done.stdout + done.stderr).splitlines()[-count:])




class TimescaleLite(ProcessService):
    """PostgreSQL 17 with TimescaleDB 2.23 (TSL edition) as WASM, on 127.0.0.1:`port`.

    `workdir` holds the cluster (`data/`, kept across stop and start) and the server's console
    (`pglite.log`). The port defaults to a free one and stays fixed for the object's life.
    TimescaleDB's license cannot be changed here (PGlite applies no postgresql.conf, and the
    license refuses a session's SET), so this is always the full edition.

    One client at a time: see the module's docstring.
    """

    name = "TimescaleDB (PGlite)"
    default_timeout_s = 60.0
    stop_timeout_s = 30.0
    user = "postgres"
    password = "postgres"  # PGlite accepts any; libpq wants one when asked
    dbname = "postgres"
    host = LOOPBACK
    probe_timeout_s = 2

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, "pglite.log")
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self._node: Path | None = None
        self._script: Path | None = None

    @property
    def dsn(self) -> str:
        return (f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"
                f"?sslmode=disable")

    def _prepare(self) -> None:
        modules = pglite_modules()
        self._node = find_node()
        self._script = _install_script(modules)
        if not (self.data_dir / "PG_VERSION").is_file():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            shutil.copytree(modules / _TEMPLATE, self.data_dir, symlinks=True)

    def _command(self) -> list[str]:
        assert self._node is not None and self._script is not None, "_prepare() comes first"
        return [str(self._node), str(self._script), "--port", str(self.port),
                "--data-dir", str(self.data_dir)]

    def _is_ready(self) -> bool:
        """True once a query answers; the probe's connection is closed before this returns."""
        import psycopg  # here, so that `import stack` does not need it

        if not port_open(self.host, self.port):
            return False
        try:
            with psycopg.connect(self.dsn, connect_timeout=self.probe_timeout_s) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error:
            return False
        return True
