"""tapline's database schema, http_requests and http_requests_5m: Alembic migrations run from code.

    import db
    mode = db.migrate("postgresql://postgres@127.0.0.1:5432/tapline")  # as the schema's owner
    db.apply_policies(url, compress_after="7 days", retention="30 days")
    db.create_login("tapline_sink", "writer", password, url)  # a login in tapline_writer
    mode = db.check_migrated(writer_url)  # a sink that may not migrate: at head, or NotMigrated

`python -m db upgrade|policies|login` does the same from a shell. The schema takes one of three
modes (db.mode) depending on the TimescaleDB the server has; the summary view answers the same
queries in all. Two group roles (db.roles) hold the rights of the sink and of readers.
"""

from db.migrate import (
    DATABASE_VARIABLE,
    DEFAULT_URL,
    MIGRATION_LOCK_KEY,
    NotMigrated,
    alembic_config,
    check_migrated,
    connect,
    database_url,
    ensure_schema,
    head_revision,
    migrate,
    schema_revision,
    sqlalchemy_url,
)
from db.mode import (
    MODES,
    POSTGRESQL,
    TIMESCALEDB,
    TIMESCALEDB_APACHE,
    NoSchema,
    schema_mode,
)
from db.policies import apply_policies
from db.roles import GROUPS, READER, WRITER, create_login

__all__ = [
    "DATABASE_VARIABLE",
    "DEFAULT_URL",
    "GROUPS",
    "MIGRATION_LOCK_KEY",
    "MODES",
    "POSTGRESQL",
    "READER",
    "TIMESCALEDB",
    "TIMESCALEDB_APACHE",
    "WRITER",
    "NoSchema",
    "NotMigrated",
    "alembic_config",
    "apply_policies",
    "check_migrated",
    "connect",
    "create_login",
    "database_url",
    "ensure_schema",
    "head_revision",
    "migrate",
    "schema_mode",
    "schema_revision",
    "sqlalchemy_url",
]
