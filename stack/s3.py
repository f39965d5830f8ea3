"""An S3 endpoint on loopback: moto's server mode, the same fake s3fs's own tests run against.

moto keeps everything in memory: after `stop()` and `start()` the buckets and objects are gone
(the default bucket is created again). Tests that need data to survive a restart of the object
store cannot have that here.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from pathlib import Path

from stack.errors import StartupFailed, ToolMissing
from stack.service import LOOPBACK, ProcessService, free_port

DEFAULT_BUCKET = "captures"


def http_answers(url: str, timeout_s: float = 2.0) -> bool:
    """Tell whether an HTTP server answers at url, with any status (S3 may say 403 to anonymous)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def create_bucket(endpoint_url: str, bucket: str) -> None:
    """Create a bucket with one unsigned PUT, which moto accepts; one that exists is fine."""
    request = urllib.request.Request(f"{endpoint_url}/{bucket}", method="PUT", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10):
            return
    except urllib.error.HTTPError as error:
        if error.code == 409:  # BucketAlreadyOwnedByYou
            return
        raise StartupFailed(f"creating bucket {bucket!r} at {endpoint_url} failed: "
                            f"HTTP {error.code} {error.read()[:500]!r}") from error


class S3Server(ProcessService):
    """moto's S3 server on 127.0.0.1:`port` (default free), with `bucket` created at each start.

    Clients need some credentials and a region even though moto checks neither (for example
    AWS_ACCESS_KEY_ID=testing, AWS_SECRET_ACCESS_KEY=testing, region us-east-1). Pass
    bucket=None for no bucket. The server's requests log goes to `workdir/s3.log`.
    """

    name = "S3 (moto)"
    default_timeout_s = 30.0
    stop_timeout_s = 10.0

    def __init__(
        self, workdir: Path, port: int | None = None, *, bucket: str | None = DEFAULT_BUCKET
    ) -> None:
        super().__init__(workdir, "s3.log")
        self.port = port or free_port()
        self.bucket = bucket

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        if importlib.util.find_spec("moto.server") is None:
            raise ToolMissing(f"moto's server is not installed for {sys.executable}: "
                              "install moto[server]")

    def _command(self) -> list[str]:
        # The same interpreter as ours, so the moto of this venv answers.
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]

    def _is_ready(self) -> bool:
        return http_answers(self.endpoint_url + "/")

    def _after_ready(self) -> None:
        if self.bucket:
            create_bucket(self.endpoint_url, self.bucket)
