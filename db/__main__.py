"""`python -m db upgrade|mode|check|policies|login [--url URL]`: the schema's commands.

`upgrade` migrates to the newest revision, `mode` reads the mode of a migrated database,
`check` says whether the schema is at the newest revision (changing nothing), and `policies`
applies compression and retention policies (TimescaleDB's full edition); each prints the mode
on standard output. `login NAME --group writer|reader` makes a login role in tapline_writer or
tapline_reader (db.roles) and prints the group; its password comes from the environment
variable `--password-env` names, never from the command line. Progress goes to standard error,
and a known error is one line there, `db: error: ...`, with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from db.migrate import (
    DATABASE_VARIABLE,
    DEFAULT_URL,
    NotMigrated,
    check_migrated,
    connect,
    database_url,
    migrate,
    shown,
)
from db.mode import MODES, NoSchema, schema_mode
from db.policies import apply_policies
from db.roles import GROUPS, create_login


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m db",
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
    return parser.parse_args(argv)


def password_from(variable: str | None) -> str | None:
    if variable is None:
        return None
    password = os.environ.get(variable, "")
    if not password:
        raise ValueError(f"--password-env {variable}: ${variable} is not set or empty")
    return password


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
