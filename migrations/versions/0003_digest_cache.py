"""Deduplication: a cache of source digests, and whether a completed upload was deduplicated.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digest_cache",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("inode", sa.BigInteger, nullable=False),
        sa.Column("manifest", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file_sha256", sa.JSON),
        sa.Column("used_at", sa.Float, nullable=False),
    )
    op.create_index("ix_digest_cache_used_at", "digest_cache", ["used_at"])
    op.add_column("jobs", sa.Column("deduplicated", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deduplicated")
    op.drop_index("ix_digest_cache_used_at", "digest_cache")
    op.drop_table("digest_cache")
