"""An independent HAR 1.2 validator for the tests: npm's `har-validator` (on `har-schema`).

`har_validator()` installs it once into `<cache>/har-validator` with npm, the way
`pglite_modules()` installs PGlite (stack.cache.fetched_once), and returns the script to run:
`node <folder>/validate.js FILE...` exits 0 when every file is valid HAR 1.2 and prints the
schema's errors otherwise. `validate_har(path)` runs it and raises HarInvalid with them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from stack.cache import fetched_once
from stack.errors import StackError
from stack.timescale import find_node, npm_install

HAR_DIR = Path(__file__).resolve().parent / "har"
PACKAGE_JSON = HAR_DIR / "package.json"
SCRIPT = HAR_DIR / "validate.js"


class HarInvalid(StackError):
    """The validator refused a file; the message holds its errors."""


def har_validator(cache: Path | None = None, timeout_s: float = 600.0) -> Path:
    """The folder that holds har-validator and validate.js, installed the first time."""

    def fill(folder: Path) -> None:
        find_node()
        npm_install(folder, PACKAGE_JSON, "har-validator", timeout_s)

    folder = fetched_once("har-validator", PACKAGE_JSON, fill, cache)
    target = folder / SCRIPT.name
    if not target.is_file() or target.read_bytes() != SCRIPT.read_bytes():
        shutil.copy2(SCRIPT, target)  # beside node_modules, where require() finds the package
    return folder


def validate_har(path: Path, timeout_s: float = 300.0) -> None:
    """Raise HarInvalid unless har-validator accepts the file at `path`."""
    folder = har_validator()
    done = subprocess.run([str(find_node()), str(folder / SCRIPT.name), str(path)],
                          cwd=folder, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise HarInvalid(f"har-validator refused {path}: {done.stderr.strip()[:4000]}")
