"""Stored bytes waiting to be deleted, so that a failed or interrupted deletion is tried again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Only CREATE TABLE, so it runs the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_deletions",
        sa.Column("storage_key", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("storage_deletions")
