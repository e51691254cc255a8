"""Bounded growth: when a client saw a finished job's end (pruning counts from it), and each
watch's files counted by state, kept exact by triggers instead of read from every row.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The triggers that keep ``watch_file_counts`` equal to a count of ``watch_files`` by (watch, state).
#: A count that reaches 0 is deleted, so a removed watch leaves no rows behind.
_PLUS = ("INSERT INTO watch_file_counts (watch_id, state, n) VALUES (NEW.watch_id, NEW.state, 1) "
         "ON CONFLICT (watch_id, state) DO UPDATE SET n = n + 1;")
_MINUS = ("UPDATE watch_file_counts SET n = n - 1 WHERE watch_id = OLD.watch_id AND state = OLD.state; "
          "DELETE FROM watch_file_counts WHERE watch_id = OLD.watch_id AND state = OLD.state AND n <= 0;")
TRIGGERS = {
    "watch_files_count_insert": f"AFTER INSERT ON watch_files BEGIN {_PLUS} END",
    "watch_files_count_delete": f"AFTER DELETE ON watch_files BEGIN {_MINUS} END",
    "watch_files_count_update": (
        "AFTER UPDATE OF watch_id, state ON watch_files "
        f"WHEN OLD.state IS NOT NEW.state OR OLD.watch_id IS NOT NEW.watch_id BEGIN {_MINUS} {_PLUS} END"),
}


def upgrade() -> None:
    op.add_column("jobs", sa.Column("acknowledged_at", sa.Float))
    # Pruning's seek: only finished jobs whose end a client saw carry acknowledged_at.
    # Nothing recorded who saw a job end before this revision: a job that ended before the upgrade
    # counts as seen when it ended, so an upgraded queue sheds its old finished jobs like a new one.
    op.execute("UPDATE jobs SET acknowledged_at = updated_at WHERE state IN ('completed', 'failed', 'cancelled')")
    op.create_index("ix_jobs_acknowledged", "jobs", ["acknowledged_at"],
                    sqlite_where=sa.text("acknowledged_at IS NOT NULL"))
    op.create_table(
        "watch_file_counts",
        sa.Column("watch_id", sa.String(72), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.execute("INSERT INTO watch_file_counts (watch_id, state, n) "
               "SELECT watch_id, state, count(*) FROM watch_files GROUP BY watch_id, state")
    for name, body in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name}")
    op.drop_table("watch_file_counts")
    op.drop_index("ix_jobs_acknowledged", "jobs")
    op.drop_column("jobs", "acknowledged_at")
