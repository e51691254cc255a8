"""Bring a database to the newest schema with Alembic, from code (no ``alembic.ini``).

The migration scripts live inside the package (``dataerai_server/migrations``), so a
wheel carries them and ``run`` and ``users add`` can upgrade a fresh data directory.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Engine

#: The PostgreSQL advisory lock that upgrades take, so that servers starting at once on
#: one fresh database upgrade it once, in turn (an arbitrary constant: "dataerai").
UPGRADE_LOCK = 0x64617461657261


def alembic_config() -> Config:
    """The Alembic configuration pointing at the packaged scripts."""
    config = Config()
    config.set_main_option("script_location", "dataerai_server:migrations")
    return config


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied. Blocking; call it from a thread.

    Runs in one transaction that takes a lock first: the write lock on SQLite (see
    ``db.Database.write_engine``), a transaction-scoped advisory lock on PostgreSQL. So
    several processes starting on one fresh database upgrade it once, in turn.
    """
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
