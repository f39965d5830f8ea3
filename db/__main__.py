"""`python -m db upgrade|mode|policies [--url URL]`: the schema's commands, for a shell or CI.

`upgrade` migrates to the newest revision, `mode` reads the mode of a migrated database, and
`policies` applies compression and retention policies (TimescaleDB's full edition). Each prints
the mode on standard output; progress goes to standard error, and a known error is one line
there, `db: error: ...`, with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from db.migrate import DATABASE_VARIABLE, DEFAULT_URL, connect, database_url, migrate, shown
from db.mode import MODES, NoSchema, schema_mode
from db.policies import apply_policies


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
    policies = commands.add_parser(
        "policies", help="Apply compression and retention policies (TimescaleDB's full edition).")
    policies.add_argument("--url", help=url_help)
    policies.add_argument("--compress-after", metavar="INTERVAL",
                          help="Compress chunks older than this, e.g. '7 days'.")
    policies.add_argument("--retention", metavar="INTERVAL",
                          help="Drop chunks older than this, e.g. '30 days'.")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    if args.command == "upgrade":
        return migrate(args.url, args.mode)
    if args.command == "policies":
        return apply_policies(args.url, args.compress_after, args.retention)
    with connect(args.url) as connection:
        return schema_mode(connection)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="db: %(message)s", stream=sys.stderr)
    try:
        print(run(args))
    except (ValueError, NoSchema) as error:
        print(f"db: error: {error}", file=sys.stderr)
        return 1
    except DBAPIError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        print(f"db: error: {shown(database_url(args.url))}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
