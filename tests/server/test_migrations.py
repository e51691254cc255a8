"""The server's Alembic migrations, on SQLite and on PostgreSQL: from every revision to head.

The revisions are the ones Alembic finds in the package, so revisions added later are
covered without touching this file. PostgreSQL tests are skipped unless
``DATAERAI_TEST_POSTGRES_URL`` is set (the skip message says how).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from backends import new_postgres_database
from dataerai_server import migrate
from dataerai_server.db import Database
from dataerai_server.models import Base
from sqlalchemy import inspect
from sqlalchemy.engine import Engine


def _revisions() -> list[str]:
    """Every revision, oldest first, with "base" (an empty database) before them."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return ["base", *reversed([r.revision for r in script.walk_revisions()])]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite3'}"
        return
    with new_postgres_database("dataerai_mig") as url:
        yield url


def _upgrade(engine: Engine, revision: str) -> None:
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _downgrade(engine: Engine, revision: str) -> None:
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _current(engine: Engine) -> Any:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_heads()


@pytest.mark.parametrize("start", _revisions())
def test_upgrade_from_every_revision_to_head(fresh_url: str, start: str) -> None:
    db = Database(fresh_url)
    try:
        if start != "base":
            _upgrade(db.write_engine, start)
            assert _current(db.engine) == (start,)
        migrate.upgrade(db.write_engine)  # as `dataerai-server run` does
        head = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
        assert set(_current(db.engine)) == set(head)
        # The schema at head has every table the models declare.
        tables = set(inspect(db.engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        migrate.upgrade(db.write_engine)  # again: nothing to do, no error
        assert set(_current(db.engine)) == set(head)
    finally:
        db.dispose()


def test_the_revisions_are_found() -> None:
    revisions = _revisions()
    assert revisions[0] == "base" and len(revisions) >= 2


def test_processes_upgrading_one_fresh_database_at_once_upgrade_it_once(fresh_url: str) -> None:
    """Servers started together on a new database (SQLite or PostgreSQL) must not race the upgrade."""
    import threading

    databases = [Database(fresh_url) for _ in range(3)]
    errors: list[BaseException] = []

    def upgrade(db: Database) -> None:
        try:
            migrate.upgrade(db.write_engine)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(db,)) for db in databases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not any(t.is_alive() for t in threads), "an upgrade is stuck behind another"
        assert not errors, errors
        heads = _current(databases[0].write_engine)
        assert set(heads) == {_revisions()[-1]}
    finally:
        for db in databases:
            db.dispose()


def test_0007_keeps_existing_tokens_working_and_makes_them_revocable(fresh_url: str) -> None:
    """Tokens issued before 0007 (no prefix, no revocation column) still authenticate after it,
    and can be revoked; down again drops the columns and keeps the tokens."""
    from dataerai_server.auth import lookup_principal, revoke_token, token_hash
    from dataerai_server.clock import utcnow
    from dataerai_server.errors import ApiError
    from sqlalchemy import text

    db = Database(fresh_url)
    try:
        _upgrade(db.write_engine, "0006")
        with db.write_engine.begin() as connection:
            connection.execute(
                text("insert into users (id, email, created_at) values ('usr_old', 'old@example.org', :now)"),
                {"now": utcnow().replace(tzinfo=None)},
            )
            connection.execute(
                text(
                    "insert into tokens (id, user_id, token_hash, scopes, expires_at, created_at) "
                    "values ('tok_old', 'usr_old', :hash, '[\"read\"]', null, :now)"
                ),
                {"hash": token_hash("dtk_old"), "now": utcnow().replace(tzinfo=None)},
            )
        migrate.upgrade(db.write_engine)
        principal = db.read_sync(lambda s: lookup_principal(s, "dtk_old", utcnow()))
        assert principal.user_id == "usr_old" and principal.scopes == ("read",)
        assert db.write_sync(lambda s: revoke_token(s, "tok_old", utcnow()))[0] == "tok_old"
        with pytest.raises(ApiError) as refused:
            db.read_sync(lambda s: lookup_principal(s, "dtk_old", utcnow()))
        assert refused.value.code == "auth_expired"
        _downgrade(db.write_engine, "0006")
        columns = {c["name"] for c in inspect(db.engine).get_columns("tokens")}
        assert "revoked_at" not in columns and "prefix" not in columns
        with db.engine.connect() as connection:
            assert connection.execute(text("select count(*) from tokens")).scalar() == 1
    finally:
        db.dispose()


def test_0008_counts_what_each_project_holds(fresh_url: str) -> None:
    """``projects.used_bytes`` starts at the sizes of each project's contents (every version;
    a user's own assets count in no project), and down again drops it and keeps the rows."""
    from dataerai_server import projects
    from dataerai_server.clock import utcnow
    from sqlalchemy import text

    db = Database(fresh_url)
    try:
        _upgrade(db.write_engine, "0007")
        now = utcnow().replace(tzinfo=None)
        with db.write_engine.begin() as connection:
            connection.execute(
                text("insert into users (id, email, created_at) values ('usr_a', 'a@example.org', :now)"), {"now": now}
            )
            for project in ("prj_full", "prj_empty"):
                connection.execute(text(
                    "insert into projects (id, name, description, root_collection_id, allocation_bytes, created_by,"
                    " created_at) values (:id, :id, '', 'col_none', 1000000, 'usr_a', :now)"),
                    {"id": project, "now": now})
            owned: list[tuple[str, str | None]] = [("ast_1", "prj_full"), ("ast_2", "prj_full"), ("ast_own", None)]
            for asset, owner in owned:
                connection.execute(text(
                    "insert into assets (id, tags, metadata, owner_type, owner_id, project_id, path, created_by,"
                    " created_at, updated_at) values (:id, '[]', '{}', 'project', 'x', :project, :id, 'usr_a', :now,"
                    " :now)"), {"id": asset, "project": owner, "now": now})
            for content, asset, size in (("cnt_1", "ast_1", 100), ("cnt_1b", "ast_1", 250), ("cnt_2", "ast_2", 7),
                                         ("cnt_own", "ast_own", 5000)):
                connection.execute(text(
                    "insert into contents (id, asset_id, size, sha256, storage_key, created_at)"
                    " values (:id, :asset, :size, :sha, :id, :now)"),
                    {"id": content, "asset": asset, "size": size, "sha": "0" * 64, "now": now})
        migrate.upgrade(db.write_engine)

        def used(session: Any) -> dict[str, tuple[int, int]]:
            return {p: (projects.used_bytes(session, p), projects.counted_bytes(session, p))
                    for p in ("prj_full", "prj_empty")}

        assert db.read_sync(used) == {"prj_full": (357, 357), "prj_empty": (0, 0)}
        _downgrade(db.write_engine, "0007")
        assert "used_bytes" not in {c["name"] for c in inspect(db.engine).get_columns("projects")}
        with db.engine.connect() as connection:
            assert connection.execute(text("select count(*) from projects")).scalar() == 2
    finally:
        db.dispose()
