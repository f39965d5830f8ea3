"""`python -m stack kafka|postgres|s3|all [--workdir DIR]`: run services until Ctrl-C or SIGTERM.

`python -m stack run` runs the whole pipeline (stack.pipeline), for `make run`.

`python -m stack timescale` runs TimescaleDB's full edition as WASM (stack.timescale) in place of
PostgreSQL: one client at a time, so for trying the schema rather than for running the sinks.

Standard output gets one `NAME=value` line per service, in the names stack.external reads
(KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT, ...), so it can be pasted into a shell or an env file;
progress and errors go to standard error. `python -m stack fetch` only downloads Kafka's jars,
for CI to do early.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from stack.errors import StackError
from stack.external import DATABASE_VARIABLE, KAFKA_VARIABLE, S3_VARIABLE
from stack.kafka import STACK_DIR, Kafka, kafka_libs
from stack.postgres import Postgres
from stack.s3 import DEFAULT_BUCKET, S3Server
from stack.timescale import TimescaleLite

Service = Kafka | Postgres | S3Server | TimescaleLite
DEFAULT_WORKDIR = STACK_DIR.parent / ".run" / "stack"
ORDER = ("kafka", "postgres", "s3")


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)[:300]
        self.exit(2, f"stack: error: {message} (see {self.prog} --help)\n")


def port(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse's `type`)."""
    try:
        number = int(text) if text.strip().isascii() and len(text) <= 10 else -1
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a port (1 to 65535)")
    return number


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked without starting anything; on one that cannot run, one
    line on standard error and SystemExit(2). `run` takes no options (`what` is "run")."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        if len(argv) > 1:
            print("stack: error: `run` takes no options: its settings come from the "
                  "environment (stack.pipeline)", file=sys.stderr)
            raise SystemExit(2)
        return argparse.Namespace(what="run")
    args = _parser().parse_args(argv)
    problem = None
    if not _BUCKET.fullmatch(args.bucket):
        problem = f"--bucket {args.bucket[:70]!r}: not an S3 bucket name"
    try:
        str(args.workdir).encode("utf-8")
        if not str(args.workdir).strip():
            problem = "--workdir: empty"
    except UnicodeEncodeError:
        problem = "--workdir: not valid UTF-8 text"
    if problem:
        print(f"stack: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m stack",
        description="Run Kafka, PostgreSQL and S3 (moto) on 127.0.0.1 until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("what", choices=[*ORDER, "all", "timescale", "fetch"],
                        help="The service to run, all of them, `timescale` for TimescaleDB as "
                             "WASM (not part of `all`), or `fetch` to only download Kafka's jars.")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="Folder for the services' data, settings and logs, one subfolder "
                             "each; data is kept between runs (default: %(default)s).")
    parser.add_argument("--kafka-port", type=port,
                        help="Kafka's client port (default: a free one).")
    parser.add_argument("--postgres-port", type=port,
                        help="PostgreSQL's port (default: a free one).")
    parser.add_argument("--s3-port", type=port,
                        help="The S3 endpoint's port (default: a free one).")
    parser.add_argument("--timescale-port", type=port,
                        help="TimescaleDB's (WASM) port (default: a free one).")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET,
                        help="The bucket created in S3 (default: %(default)s).")
    return parser


def build(name: str, args: argparse.Namespace) -> tuple[Service, str, str]:
    """The service called `name`, and the variable and value that tell clients where it is."""
    workdir = args.workdir / name
    if name == "kafka":
        kafka = Kafka(workdir, args.kafka_port)
        return kafka, KAFKA_VARIABLE, kafka.bootstrap_servers
    if name == "postgres":
        postgres = Postgres(workdir, args.postgres_port)
        return postgres, DATABASE_VARIABLE, postgres.dsn
    if name == "timescale":
        timescale = TimescaleLite(workdir, args.timescale_port)
        return timescale, DATABASE_VARIABLE, timescale.dsn
    s3 = S3Server(workdir, args.s3_port, bucket=args.bucket)
    return s3, S3_VARIABLE, s3.endpoint_url


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # ends the run through the `finally` that stops every service


def run(args: argparse.Namespace) -> int:
    names = ORDER if args.what == "all" else (args.what,)
    started: list[Service] = []
    # Also SIGINT: a shell starts background jobs with it ignored, and Python keeps it so.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for name in names:
            service, variable, value = build(name, args)
            started.append(service)
            began = time.monotonic()
            service.start()
            print(f"stack: {service.name} is ready after {time.monotonic() - began:.1f} s "
                  f"(log: {service.log_path})", file=sys.stderr, flush=True)
            print(f"{variable}={value}", flush=True)
        print("stack: running; Ctrl-C or SIGTERM stops everything", file=sys.stderr, flush=True)
        while all(service.running for service in started):
            time.sleep(2)
        gone = next(service for service in started if not service.running)
        print(f"stack: error: {gone.name} stopped by itself; see {gone.log_path}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except StackError as error:
        print(f"stack: error: {error}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave a broker behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for service in reversed(started):
            try:
                service.stop()
            except StackError as error:
                print(f"stack: error while stopping {service.name}: {error}", file=sys.stderr)
        if started:
            print("stack: stopped", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.what == "run":
        from stack.pipeline import main as run_pipeline

        return run_pipeline()
    if args.what == "fetch":
        try:
            print(kafka_libs())
        except StackError as error:
            print(f"stack: error: {error}", file=sys.stderr)
            return 1
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
