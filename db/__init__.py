"""tapline's database schema, http_requests and http_requests_5m: Alembic migrations run from code.

    import db
    mode = db.migrate("postgresql://postgres@127.0.0.1:5432/tapline")  # at every sink's start
    db.apply_policies(url, compress_after="7 days", retention="30 days")

`python -m db upgrade` does the same from a shell. The schema takes one of three modes (db.mode)
depending on the TimescaleDB the server has; the summary view answers the same queries in all.
"""

from db.migrate import (
    DATABASE_VARIABLE,
    DEFAULT_URL,
    MIGRATION_LOCK_KEY,
    alembic_config,
    connect,
    database_url,
    migrate,
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

__all__ = [
    "DATABASE_VARIABLE",
    "DEFAULT_URL",
    "MIGRATION_LOCK_KEY",
    "MODES",
    "POSTGRESQL",
    "TIMESCALEDB",
    "TIMESCALEDB_APACHE",
    "NoSchema",
    "alembic_config",
    "apply_policies",
    "connect",
    "database_url",
    "migrate",
    "schema_mode",
    "sqlalchemy_url",
]
