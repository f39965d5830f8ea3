"""withheld: why a body is not in the row, when redaction withheld it.

Record version 2 says when the proxy could not scan a body and withheld it (binary,
undecodable, over the redaction budget); the row keeps that reason next to the empty body, so
that a question in SQL can tell an empty body from a withheld one. Nullable, no default:
adding them rewrites nothing.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE http_requests ADD COLUMN IF NOT EXISTS request_body_withheld text")
    op.execute("ALTER TABLE http_requests ADD COLUMN IF NOT EXISTS response_body_withheld text")


def downgrade() -> None:
    op.execute("ALTER TABLE http_requests DROP COLUMN IF EXISTS response_body_withheld")
    op.execute("ALTER TABLE http_requests DROP COLUMN IF EXISTS request_body_withheld")
