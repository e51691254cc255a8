"""Bring a database to the newest schema with Alembic, from code (no ``alembic.ini``).

The migration scripts live inside the package (``dataerai_server/migrations``), so a
wheel carries them and ``run`` and ``users add`` can upgrade a fresh data directory.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine


def alembic_config() -> Config:
    """The Alembic configuration pointing at the packaged scripts."""
    config = Config()
    config.set_main_option("script_location", "dataerai_server:migrations")
    return config


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied. Blocking; call it from a thread.

    Runs in one transaction that takes the write lock first (see ``db.Database.write_engine``),
    so two processes starting on one fresh SQLite database upgrade it once, in turn.
    """
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
