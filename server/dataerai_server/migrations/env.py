"""Alembic's entry point: migrate the connection ``migrate.upgrade`` hands over.

Without a handed-over connection (the ``alembic`` command line, for writing a new
revision), it connects to ``sqlalchemy.url`` from the Alembic config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dataerai_server.models import Base

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    handed = config.attributes.get("connection")
    if handed is not None:
        _run(handed)
    else:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("set sqlalchemy.url, or migrate with `dataerai-server run`")
        with create_engine(url).begin() as connection:
            _run(connection)
