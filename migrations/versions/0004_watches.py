"""Watch folders: the watches and every entry each one knows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watches",
        sa.Column("watch_id", sa.String(72), primary_key=True),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("user_paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("problem_code", sa.String(64)),
        sa.Column("problem_message", sa.Text),
        sa.Column("root_dev", sa.BigInteger),
        sa.Column("root_inode", sa.BigInteger),
        sa.Column("marker", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("last_scan_at", sa.Float),
        sa.Column("scan_gen", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "watch_files",
        sa.Column("watch_id", sa.String(72), sa.ForeignKey("watches.watch_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("rel", sa.Text, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False, server_default="file"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime_ns", sa.BigInteger),
        sa.Column("inode", sa.BigInteger),
        sa.Column("stable_since", sa.Float),
        sa.Column("job_id", sa.String(40)),
        sa.Column("asset_id", sa.String(72)),
        sa.Column("content_id", sa.String(72)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_at", sa.Float),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("seen_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("scan_gen", sa.Integer, nullable=False, server_default="0"),
        sa.Column("gone_at", sa.Float),
    )
    op.create_index("ix_watch_files_state", "watch_files", ["watch_id", "state", "seen_at"])
    op.create_index("ix_watch_files_due", "watch_files", ["watch_id", "state", "retry_at"])
    op.create_index("ix_watch_files_job", "watch_files", ["job_id"])
    op.create_index("ix_watch_files_updated", "watch_files", ["state", "updated_at"])


def downgrade() -> None:
    op.drop_table("watch_files")
    op.drop_table("watches")
