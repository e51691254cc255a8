"""Parts sent straight to storage: the digest signed into each part's URL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_part_targets",
        sa.Column("upload_id", sa.String(40), sa.ForeignKey("upload_sessions.id"), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("minted_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_part_targets")
