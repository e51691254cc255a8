"""The scheduler's index: queued jobs by client, each client's in its own order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_runnable", "jobs", ["state", "client", sa.text("priority DESC"), "seq"])


def downgrade() -> None:
    op.drop_index("ix_jobs_runnable", "jobs")
