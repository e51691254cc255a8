"""Jobs remember which client submitted them, so the scheduler can be fair across clients.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond adding a column, and
    # batch keeps the upgrade portable should the queue ever move.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("client", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("client")
