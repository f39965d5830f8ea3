"""Who may do what with tapline's schema: two group roles, and the login roles that join them.

- `tapline_writer`: the TimescaleDB sink. SELECT and INSERT on http_requests (SELECT because
  the sink's staging table is made `LIKE http_requests`, which reads the table's definition),
  TEMPORARY on the database (that staging table), SELECT on alembic_version (to check the
  schema's revision at start). No UPDATE, DELETE, TRUNCATE, no DDL: a record written stays
  written, and the sink cannot change the schema.
- `tapline_reader`: Grafana, `tapline report`, analysts. SELECT on http_requests,
  http_requests_5m and alembic_version; nothing else.

Both are NOLOGIN groups, made (once per cluster: roles are not per database) and granted by
migration 0003; a later revision that makes a table or view grants on it in that revision.
Login roles are a deployment's: `create_login` (`python -m db login`) makes one, with or
without a password, and puts it in one group. The schema's owner, who runs the migrations, is
neither: whoever ran `python -m db upgrade` (a superuser, or a role that owns the database and
may create roles, or one for whom an administrator made the two groups beforehand).
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import text
from sqlalchemy.engine import Connection

from db.migrate import connect, database_url, shown

log = logging.getLogger(__name__)

WRITER = "tapline_writer"
READER = "tapline_reader"
GROUPS = {"writer": WRITER, "reader": READER}

# A login's name goes into SQL as an identifier: only names that need no quoting.
LOGIN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# (No `%` in these: the driver would take it for a parameter's placeholder.)
# A group role, made unless there: by a migrator that may create roles, else a clear error
# (an administrator makes it once, then the migration goes on). Two databases of one cluster
# migrated at once may both try: the loser of that race finds it made.
CREATE_GROUP = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles
                   WHERE rolname = current_user AND (rolcreaterole OR rolsuper)) THEN
        RAISE EXCEPTION USING MESSAGE = 'role {role} does not exist and ' || current_user
            || ' may not create roles: have an administrator run CREATE ROLE {role} NOLOGIN, '
            || 'then migrate again';
    END IF;
    CREATE ROLE {role} NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$
"""

# Grants on the database and the schema need their owner; a migrator that is neither (the
# schema `public` belongs to the database's owner) gets a warning from PostgreSQL, not an
# error, and the defaults (PUBLIC may use `public` and make temporary tables) apply.
GRANT_DATABASE = """
DO $$
BEGIN
    EXECUTE 'GRANT TEMPORARY ON DATABASE ' || quote_ident(current_database())
            || ' TO {writer}';
    EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema())
            || ' TO {writer}, {reader}';
END
$$
"""

GRANTS = (
    f"GRANT SELECT, INSERT ON http_requests TO {WRITER}",
    f"GRANT SELECT ON alembic_version TO {WRITER}, {READER}",
    f"GRANT SELECT ON http_requests, http_requests_5m TO {READER}",
)
REVOKES = (
    f"REVOKE ALL ON http_requests, http_requests_5m, alembic_version FROM {WRITER}, {READER}",
)


def create_groups(conn: Connection) -> None:
    """Make both group roles unless they exist (see CREATE_GROUP)."""
    for role in (WRITER, READER):
        conn.exec_driver_sql(CREATE_GROUP.format(role=role))


def grant(conn: Connection) -> None:
    """Give each group what it may do, on the current database's tables."""
    conn.exec_driver_sql(GRANT_DATABASE.format(writer=WRITER, reader=READER))
    for statement in GRANTS:
        conn.exec_driver_sql(statement)


def revoke(conn: Connection) -> None:
    """Take the groups' rights on this database's tables back; the roles stay (other
    databases of the cluster may use them)."""
    for statement in REVOKES:
        conn.exec_driver_sql(statement)


def create_login(
    name: str, group: str, password: str | None = None, url: str | None = None
) -> str:
    """Make `name` a login role in `group` (`writer` or `reader`); return the group's role.

    A new role gets `password`, or none (for trust, peer or certificate authentication); an
    existing one gets `password` if one is given and keeps its own otherwise, and is put in the
    group if it is not yet. The connection at `url` (see db.migrate.database_url) must be
    allowed to create roles, and the schema must be migrated (the groups come with it).
    Raises ValueError for a name that is not a plain identifier or an unknown group.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, not {group!r}")
    if not LOGIN_NAME.fullmatch(name):
        raise ValueError(f"a login's name is lower-case letters, digits and _, not {name!r}")
    role = GROUPS[group]
    if name in (WRITER, READER):
        raise ValueError(f"{name} is a group role; name the login that joins it")
    with connect(url) as conn:
        if not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :role"),
                            {"role": role}).first():
            raise ValueError(f"role {role} does not exist: migrate first "
                             "(`python -m db upgrade`)")
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :name"),
                              {"name": name}).first()
        if not exists:
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN")
        else:
            conn.exec_driver_sql(f"ALTER ROLE {name} LOGIN")
        if password is not None:
            # Hashed here (SCRAM, or what the server's password_encryption says), as psql's
            # \password does: the password itself never reaches the server or its logs.
            pgconn = conn.connection.driver_connection.pgconn
            hashed = pgconn.encrypt_password(password.encode(), name.encode()).decode()
            conn.exec_driver_sql(f"ALTER ROLE {name} PASSWORD '{hashed}'")
        conn.exec_driver_sql(f"GRANT {role} TO {name}")
        conn.commit()
    log.info("database %s: login %s %s, in %s%s", shown(database_url(url)), name,
             "updated" if exists else "created", role,
             ", password set" if password is not None else "")
    return role
