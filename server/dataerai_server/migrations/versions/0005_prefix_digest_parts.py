"""Parts checked against their prefix digest (the content's SHA-256 through the part's end).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upload_parts") as batch:
        batch.add_column(sa.Column("prefix", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("upload_parts") as batch:
        batch.drop_column("prefix")
