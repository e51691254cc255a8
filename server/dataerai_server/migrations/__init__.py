"""Alembic migration scripts for the repository database (applied by ``dataerai_server.migrate``)."""
