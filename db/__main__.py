"""`python -m db upgrade|mode|check|policies|login [--url URL]`: the schema's commands.

`upgrade` migrates to the newest revision, `mode` reads the mode of a migrated database,
`check` says whether the schema is at the newest revision (changing nothing), and `policies`
applies compression and retention policies (TimescaleDB's full edition); each prints the mode
on standard output. `login NAME --group writer|reader` makes a login role in tapline_writer or
tapline_reader (db.roles) and prints the group; its password comes from the environment
variable `--password-env` names, never from the command line. Progress goes to standard error,
and a known error is one line there, `db: error: ...`: exit code 2 for a command line that
cannot run (checked by `parse` before any connection, and for an interval the server does not
take), 1 for the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence

from sqlalchemy.exc import ArgumentError, DBAPIError

from db.migrate import (
    DATABASE_VARIABLE,
    DEFAULT_URL,
    NotMigrated,
    check_migrated,
    connect,
    database_url,
    migrate,
    shown,
    sqlalchemy_url,
)
from db.mode import MODES, NoSchema, schema_mode
from db.policies import BadInterval, apply_policies
from db.roles import GROUPS, LOGIN_NAME, create_login

MAX_INTERVAL_CHARS = 100


class UsageError(ValueError):
    """A command line that cannot run; the message is one line that says why."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"(://[^/@:\s]*:)[^@\s]*@", r"\1***@", message)  # a URL's password
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)[:300]
        self.exit(2, f"db: error: {message} (see {self.prog} --help)\n")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, parsed and checked without connecting (`validate`); on one that
    cannot run, one line on standard error and SystemExit(2)."""
    args = _parser().parse_args(argv)
    try:
        validate(args)
    except UsageError as error:
        print(f"db: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args


def validate(args: argparse.Namespace) -> None:
    """UsageError for the first option that cannot work. Never quotes a URL's password."""
    for name, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                option = name if name == "name" else "--" + name.replace("_", "-")
                raise UsageError(f"{option}: not valid UTF-8 text") from None
    if args.url is not None:
        try:
            sqlalchemy_url(args.url)
        except (ValueError, ArgumentError):
            try:
                where = shown(args.url)
            except ValueError:
                where = "(not a URL)"
            if where == "(not a URL)":
                raise UsageError("--url: not a database URL (postgresql://user@host:port/"
                                 "dbname)") from None
            raise UsageError(f"--url {where[:200]}: not a postgresql:// URL") from None
    if args.command == "login":
        if not LOGIN_NAME.fullmatch(args.name):
            raise UsageError(f"a login's name is lower-case letters, digits and _ (at most 63), "
                             f"not {args.name[:70]!r}")
        password_from(args.password_env)
    if args.command == "policies":
        # Blank is "no such policy", as compose passes an unset TIMESCALE_COMPRESS_AFTER.
        if args.compress_after is not None and not args.compress_after.strip():
            args.compress_after = None
        if args.retention is not None and not args.retention.strip():
            args.retention = None
        for option, value in (("--compress-after", args.compress_after),
                              ("--retention", args.retention)):
            if value is not None and not (
                    len(value) <= MAX_INTERVAL_CHARS and value.isprintable()):
                raise UsageError(f"{option} {value[:70]!r}: not an interval (write e.g. "
                                 "'7 days')")


def password_from(variable: str | None) -> str | None:
    if variable is None:
        return None
    password = os.environ.get(variable, "") if variable and "=" not in variable else ""
    if not password:
        shown_name = variable[:70]
        raise UsageError(f"--password-env {shown_name}: ${shown_name} is not set or empty")
    return password


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m db",
                     description="Build and inspect tapline's database schema.")
    commands = parser.add_subparsers(dest="command", required=True)
    url_help = (f"The database, a postgresql:// URL (default: ${DATABASE_VARIABLE}, else "
                f"{DEFAULT_URL}).")
    upgrade = commands.add_parser("upgrade", help="Migrate the schema to the newest revision.")
    upgrade.add_argument("--url", help=url_help)
    upgrade.add_argument("--mode", choices=MODES,
                         help="Build a new schema in this mode rather than the best the server "
                              "offers.")
    mode = commands.add_parser("mode", help="Print the mode of a migrated database.")
    mode.add_argument("--url", help=url_help)
    check = commands.add_parser(
        "check", help="Exit 0 if the schema is at the newest revision (print its mode), else 1. "
                      "Changes nothing: any role in tapline_writer or tapline_reader may run it.")
    check.add_argument("--url", help=url_help)
    policies = commands.add_parser(
        "policies", help="Apply compression and retention policies (TimescaleDB's full edition).")
    policies.add_argument("--url", help=url_help)
    policies.add_argument("--compress-after", metavar="INTERVAL",
                          help="Compress chunks older than this, e.g. '7 days'.")
    policies.add_argument("--retention", metavar="INTERVAL",
                          help="Drop chunks older than this, e.g. '30 days'.")
    login = commands.add_parser(
        "login", help="Make a login role that joins tapline_writer (the sink) or "
                      "tapline_reader (dashboards, reports), or update one. Run as a role that "
                      "may create roles, after `upgrade`.")
    login.add_argument("name", help="The login role's name: lower-case letters, digits, _.")
    login.add_argument("--group", required=True, choices=sorted(GROUPS),
                       help="The group it joins.")
    login.add_argument("--password-env", metavar="VARIABLE",
                       help="The environment variable that holds its password (not empty). "
                            "Without it a new role has no password (trust, peer or certificate "
                            "authentication) and an existing one keeps its own.")
    login.add_argument("--url", help=url_help)
    return parser


def run(args: argparse.Namespace) -> str:
    if args.command == "upgrade":
        return migrate(args.url, args.mode)
    if args.command == "policies":
        return apply_policies(args.url, args.compress_after, args.retention)
    if args.command == "check":
        return check_migrated(args.url)
    if args.command == "login":
        return create_login(args.name, args.group, password_from(args.password_env), args.url)
    with connect(args.url) as connection:
        return schema_mode(connection)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="db: %(message)s", stream=sys.stderr)
    try:
        print(run(args))
    except (UsageError, BadInterval) as error:
        print(f"db: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, NoSchema, NotMigrated) as error:
        print(f"db: error: {error}", file=sys.stderr)
        return 1
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        print(f"db: error: {shown(database_url(args.url))}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
