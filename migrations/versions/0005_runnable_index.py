"""The scheduler's index: queued jobs by client, each client's in its own order; and
pruning's: watched files by when they went; and the jobs by seq, for the next one's.

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
    op.create_index("ix_jobs_seq", "jobs", ["seq"])
    op.create_index("ix_watch_files_gone", "watch_files", ["gone_at"], sqlite_where=sa.text("gone_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_watch_files_gone", "watch_files")
    op.drop_index("ix_jobs_seq", "jobs")
    op.drop_index("ix_jobs_runnable", "jobs")
