"""Alembic environment for the daemon's queue database.

The daemon runs migrations itself on start (``dataeraid.store.migrate``) and
hands its connection in through ``config.attributes["connection"]``; running
``alembic`` by hand with ``-x db=PATH`` works too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dataeraid.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is not None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("pass the queue database: alembic -x db=/path/queue.sqlite3 upgrade head")
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
