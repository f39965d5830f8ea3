"""Fewer indexes: only those the project's queries use.

Every index costs each row the sink writes. `bench/index_use.py` EXPLAINs every query the
project ships (docs/analytics.md, `tapline report`, the Grafana dashboard, `tapline captures
--ip`) on realistic rows: they use the time index (the windows) and the client index (one
client's requests), and the primary key makes writes idempotent; no plan used the (app, path,
status, time) index, the failed-requests partial index or the principal index, so they go.
docs/performance.md has the plans and PostgreSQL's cost per row before and after. A question
of your own that wants one back: `CREATE INDEX` it (DROPPED below has their definitions).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DROPPED = {
    "http_requests_app_path_status_time_idx": "(app, path, status_code, time DESC)",
    "http_requests_failed_time_idx":
        "(status_code, time DESC) WHERE status_code >= 400 OR status_code IS NULL",
    "http_requests_principal_time_idx": "(principal, time DESC) WHERE principal IS NOT NULL",
}


def upgrade() -> None:
    for name in DROPPED:
        op.execute(f"DROP INDEX IF EXISTS {name}")


def downgrade() -> None:
    for name, columns in DROPPED.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON http_requests {columns}")
