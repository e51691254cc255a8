"""A project's used bytes are kept on its row: ``projects.used_bytes``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Until now every project-owned upload session summed the sizes of the project's contents
to check its allocation, a cost that grew with the project. The column starts at the sum
of what the project holds, computed here once; from then on the transactions that add or
remove a content keep it in step.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("used_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE projects SET used_bytes = COALESCE(("
        "SELECT SUM(contents.size) FROM contents JOIN assets ON contents.asset_id = assets.id"
        " WHERE assets.project_id = projects.id), 0)"
    )


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table, and other tables' foreign keys
    # refuse the old one's removal. Both databases drop a plain column in place (SQLite
    # since 3.35).
    op.execute("ALTER TABLE projects DROP COLUMN used_bytes")
