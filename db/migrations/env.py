"""Alembic's environment for tapline's schema, configured from code (db.migrate), not alembic.ini.

db.migrate.migrate() hands over a connection that already holds the migration lock, in
`config.attributes["connection"]`. Run by Alembic's own command line instead (with `-x url=...`
or DATABASE_URL), this opens one and takes the lock itself. There is no offline (--sql) mode:
the migration asks the server what it offers before choosing what to build.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from db.migrate import connect, migration_lock

config = context.config


def run(connection: Connection) -> None:
    # One transaction per migration: a migration may commit halfway (a continuous aggregate is
    # made outside any transaction), and the next one must start clean.
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("tapline's migrations cannot run offline (--sql): they inspect the server")

given = config.attributes.get("connection")
if given is not None:
    run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    with connect(url) as connection, migration_lock(connection):
        run(connection)
        connection.commit()
