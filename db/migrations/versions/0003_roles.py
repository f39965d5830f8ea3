"""roles: tapline_writer for the sink, tapline_reader for dashboards and reports.

The sink need not own the schema: it writes as a member of tapline_writer (SELECT and INSERT
on http_requests, nothing more), and the schema's owner runs the migrations. db/roles.py says
what each group may do and why. Grants on a hypertable reach its chunks, those there and those
to come; a continuous aggregate is read through its view, and GRANT on the view is enough.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from db.roles import create_groups, grant, revoke

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_groups(op.get_bind())
    grant(op.get_bind())


def downgrade() -> None:
    revoke(op.get_bind())
