"""Things the stack downloads once and keeps under a cache folder: Kafka's jars, PGlite.

`fetched_once` holds the rules both follow: a folder per thing, made again when the file that
describes it (pom.xml, package.json) changes, a file lock so parallel runs fetch once, and a
temporary folder renamed into place so a failed fetch never looks like a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

STACK_DIR = Path(__file__).resolve().parent
_STAMP = ".source-sha256"  # in each folder: the hash of the file it was fetched for


def cache_dir() -> Path:
    """Where downloads are kept: $TAPLINE_CACHE, else .cache/ at the repository's root."""
    configured = os.environ.get("TAPLINE_CACHE")
    return Path(configured) if configured else STACK_DIR.parent / ".cache"


def fetched_once(name: str, source: Path, fill: Callable[[Path], None],
                 cache: Path | None = None) -> Path:
    """`<cache>/<name>`, filled by `fill(folder)` unless it was filled for this `source` already.

    `fill` writes into the folder it is given and raises when it fails; the folder is then
    removed and nothing is left that looks complete.
    """
    cache = cache or cache_dir()
    target = cache / name
    wanted = hashlib.sha256(source.read_bytes()).hexdigest()
    if _stamp(target) == wanted:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f"{name}.lock"):
        if _stamp(target) == wanted:  # another process filled it while we waited
            return target
        partial = cache / f"{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            fill(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / _STAMP).write_text(wanted)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _stamp(folder: Path) -> str | None:
    try:
        return (folder / _STAMP).read_text().strip()
    except OSError:
        return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
