"""Tokens can be revoked, and show a prefix: ``tokens.revoked_at`` and ``tokens.prefix``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Two nullable columns (existing tokens: not revoked, no prefix known), added in batch mode
as 0005 does, so it runs the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("prefix", sa.String(12), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("prefix")
        batch.drop_column("revoked_at")
