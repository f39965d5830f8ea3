"""Compose v2's own parser for the tests, with no Docker engine: Debian 13's `docker-compose`
package holds the Compose v2 binary, and `docker-compose config` only reads files.

`compose_binary()` unpacks that package into `<cache>/compose/` once (cache: $TAPLINE_CACHE,
else .cache/ at the repository's root). It asks the mirror that the system's own apt sources
already use, through a private sources list, private package lists and a private download
folder, so the system's apt state (sources, lists, caches) is left as it was. No mirror is
written down anywhere: it is read from the system's sources at run time.

By hand: `python -m tests.compose.compose_binary` prints the binary's path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "docker-compose"
SUITE = "trixie"  # Debian 13: the first release whose docker-compose is Compose v2
BINARY = Path("usr/libexec/docker/cli-plugins/docker-compose")
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_TIMEOUT_S = 600


class ComposeUnavailable(RuntimeError):
    """The Compose binary could not be had; the message says which step failed and why."""


@dataclass(frozen=True, slots=True)
class Mirror:
    """A Debian archive the system's apt sources use, and the keyring they trust it with."""

    uri: str
    keyring: str


def cache_dir() -> Path:
    configured = os.environ.get("TAPLINE_CACHE")
    return Path(configured) if configured else ROOT / ".cache"


def system_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise ComposeUnavailable(f"{os_release} names no VERSION_CODENAME: is this Debian?")


def _deb822_entries(text: str) -> Iterator[dict[str, str]]:
    """The stanzas of a deb822 .sources file, comments dropped, keys lower-cased."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields:
            yield fields


def _one_line_entries(text: str) -> Iterator[dict[str, str]]:
    """The `deb [options] URI suite components` lines of a .list file, as deb822 fields."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)(.*)$", line)
        if not match:
            continue
        fields = {"types": match[1], "uris": match[3], "suites": match[4],
                  "components": match[5].strip()}
        for option in (match[2] or "").split():
            name, _, value = option.partition("=")
            fields[name.lower()] = value
        yield fields


def system_mirror(apt_etc: Path = Path("/etc/apt"), codename: str | None = None) -> Mirror:
    """The archive of the system's own release in its apt sources (not its security archive,
    not a third party's repository), and the keyring that entry trusts."""
    codename = codename or system_codename()
    files = sorted(apt_etc.glob("sources.list.d/*.sources"))
    lists = [apt_etc / "sources.list", *sorted(apt_etc.glob("sources.list.d/*.list"))]
    entries: list[dict[str, str]] = []
    for path in files:
        entries += _deb822_entries(path.read_text())
    for path in lists:
        if path.is_file():
            entries += _one_line_entries(path.read_text())
    for fields in entries:
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        if codename not in fields.get("suites", "").split():
            continue
        uri = fields.get("uris", "").split()
        if not uri:
            continue
        keyring = fields.get("signed-by", "").strip()
        # An inline key block cannot be passed on; the system's archive keyring then serves.
        if not keyring or "\n" in keyring or " " in keyring or not Path(keyring).is_file():
            keyring = DEFAULT_KEYRING
        return Mirror(uri[0].rstrip("/"), keyring)
    raise ComposeUnavailable(
        f"no apt source of {apt_etc} names the system's own release {codename!r}: cannot "
        "tell which Debian mirror to ask for the docker-compose package")


def _run(args: list[str], cwd: Path, step: str) -> None:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise ComposeUnavailable(f"{step}: {e.filename} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ComposeUnavailable(f"{step}: no answer in {APT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise ComposeUnavailable(f"{step} failed ({done.returncode}): {output}")


def _apt_options(work: Path) -> list[str]:
    """Options that point apt at private files only; the system's configuration (proxies,
    apt.conf.d) still applies."""
    lists = work / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    options = [
        "-q",
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={lists}",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", f"Dir::Cache::archives={work / 'archives'}",
    ]
    if os.geteuid() == 0:
        # The private folders belong to root, so apt's _apt sandbox user could not write them.
        options += ["-o", "APT::Sandbox::User=root"]
    return options


def binary_works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        done = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                              timeout=60, check=False)
    except OSError:
        return False
    return done.returncode == 0 and "version" in done.stdout.lower()


def fetch(dest: Path, mirror: Mirror | None = None) -> Path:
    """Download and unpack the package into `dest` (replacing it whole); return the binary."""
    mirror = mirror or system_mirror()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compose-", dir=dest.parent) as tmp:
        work = Path(tmp)
        (work / "archives" / "partial").mkdir(parents=True)
        # target=Packages: only the package index, not translations or AppStream metadata.
        (work / "sources.list").write_text(
            f"deb [signed-by={mirror.keyring} target=Packages] {mirror.uri} {SUITE} main\n")
        options = _apt_options(work)
        _run(["apt-get", *options, "update"], work, f"apt-get update ({SUITE})")
        _run(["apt-get", *options, "download", PACKAGE], work, f"apt-get download {PACKAGE}")
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise ComposeUnavailable(f"apt-get download left {len(debs)} {PACKAGE} packages")
        unpacked = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work, "dpkg-deb -x")
        (unpacked / "PACKAGE").write_text(debs[0].name + "\n")
        if not binary_works(unpacked / BINARY):
            raise ComposeUnavailable(f"{debs[0].name} holds no working {BINARY}")
        if dest.exists():
            shutil.rmtree(dest)
        unpacked.rename(dest)
    return dest / BINARY


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def compose_binary(cache: Path | None = None) -> Path:
    """The Compose v2 binary, fetched the first time (once, under a lock, for parallel runs).

    Raises ComposeUnavailable, saying why, when it cannot be had.
    """
    dest = (cache or cache_dir()) / "compose"
    binary = dest / BINARY
    with _locked(dest.parent / "compose.lock"):
        if binary_works(binary):
            return binary
        return fetch(dest)


if __name__ == "__main__":
    try:
        print(compose_binary())
    except ComposeUnavailable as e:
        print(f"compose_binary: {e}", file=sys.stderr)
        sys.exit(1)
