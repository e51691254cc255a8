"""The transfer queue: jobs, chunk checkpoints, durable events, settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("local_path", sa.Text),
        sa.Column("dest_dir", sa.Text),
        sa.Column("file_name", sa.Text),
        sa.Column("source_size", sa.BigInteger),
        sa.Column("source_mtime_ns", sa.BigInteger),
        sa.Column("source_inode", sa.BigInteger),
        sa.Column("chunk_size", sa.BigInteger, nullable=False),
        sa.Column("chunk_count", sa.Integer),
        sa.Column("bytes_total", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("remote_session", sa.String(64)),
        sa.Column("asset_id", sa.String(64)),
        sa.Column("content_id", sa.String(64)),
        sa.Column("files", sa.JSON),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("deadline", sa.Float),
    )
    op.create_index("ix_jobs_state_priority", "jobs", ["state", "priority", "seq"])
    op.create_table(
        "chunks",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64)),
    )
    op.create_table(
        "events",
        sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("payload", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_job", "events", ["job_id", "event_id"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_index("ix_events_job", "events")
    op.drop_table("events")
    op.drop_table("chunks")
    op.drop_index("ix_jobs_state_priority", "jobs")
    op.drop_table("jobs")
