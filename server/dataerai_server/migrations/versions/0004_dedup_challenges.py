"""Content deduplication: proof-of-possession challenges, and contents found by digest or storage key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Only CREATE TABLE and CREATE INDEX, so it runs the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dedup_challenges",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("upload_id", sa.String(40), sa.ForeignKey("upload_sessions.id"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("ranges", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("answered_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_dedup_challenges_upload_id", "dedup_challenges", ["upload_id"])
    # Finding a held content by what a new upload claims, and whether a storage key is still used.
    op.create_index("ix_contents_sha256_size", "contents", ["sha256", "size"])
    op.create_index("ix_contents_storage_key", "contents", ["storage_key"])


def downgrade() -> None:
    op.drop_index("ix_contents_storage_key", "contents")
    op.drop_index("ix_contents_sha256_size", "contents")
    op.drop_index("ix_dedup_challenges_upload_id", "dedup_challenges")
    op.drop_table("dedup_challenges")
