"""Transfer windows: a job's window, and when a ``scheduled`` job's window opens next.

Revision ID: 0008
Revises: 0007 (main already has 0006 and 0007; a plain 0006 would give alembic two heads)
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("window", sa.Text))
    op.add_column("jobs", sa.Column("not_before", sa.Float))
    op.create_index("ix_jobs_not_before", "jobs", ["not_before"], sqlite_where=sa.text("not_before IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_not_before", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
        batch.drop_column("window")
