"""principal: the fingerprint of the request's credentials, to study behaviour per user.

The proxy replaces credentials by keyed fingerprints before a record leaves it; the sink puts
the Authorization header's fingerprint here, so sessions and paths can be grouped per user
without anyone seeing a credential.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE http_requests ADD COLUMN IF NOT EXISTS principal text")
    op.execute("CREATE INDEX IF NOT EXISTS http_requests_principal_time_idx "
               "ON http_requests (principal, time DESC) WHERE principal IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS http_requests_principal_time_idx")
    op.execute("ALTER TABLE http_requests DROP COLUMN IF EXISTS principal")
