"""Pure pieces of issue 3's server side: path rules, globs, timestamps, and migration 0001 → 0002 with data."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from dataerai_server import assets, migrate
from dataerai_server.clock import parse_timestamp
from dataerai_server.db import Database
from dataerai_server.models import Asset, Base
from dataerai_server.paths import glob_regex, literal_prefix, manifest_problem, path_problem
from sqlalchemy import text


@pytest.mark.parametrize("path", ["a", "a/b", "a.b/c-d_e f", "ü/日本", ".hidden", "a..b", "x" * 1024])
def test_valid_paths(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    "path", ["", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "../a", "a\\b", "a\x00b", "x" * 1025]
)
def test_invalid_paths(path: str) -> None:
    assert path_problem(path) is not None


def test_manifest_rules() -> None:
    assert manifest_problem(["a", "b/c", "b/d", "bc"]) is None
    assert manifest_problem(["a", "a"]) is not None
    assert manifest_problem(["a", "a/b"]) is not None
    assert manifest_problem(["x/y/z", "x/y"]) is not None
    assert manifest_problem(["ab", "a/b"]) is None  # `ab` is not a directory of `a/b`


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.nwb", "a.nwb", True),
        ("*.nwb", "d/a.nwb", False),
        ("**/*.nwb", "a.nwb", True),
        ("**/*.nwb", "d/e/a.nwb", True),
        ("**", "d/e/a.nwb", True),
        ("d/**", "d/e/a.nwb", True),
        ("d/**", "d", False),
        ("d/*/a.nwb", "d/e/a.nwb", True),
        ("d/*/a.nwb", "d/e/f/a.nwb", False),
        ("?.nwb", "a.nwb", True),
        ("?.nwb", "/.nwb", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("[]].txt", "].txt", True),
        ("[a", "[a", True),  # an unclosed class is literal
        ("a.b", "aXb", False),  # `.` is literal
        ("a+(b)", "a+(b)", True),
        ("*.NWB", "a.nwb", False),
    ],
)
def test_globs(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_literal_prefix() -> None:
    assert literal_prefix("sub/deep/*.nwb") == "sub/deep/"
    assert literal_prefix("**/x") == ""
    assert literal_prefix("plain") == "plain"
    assert literal_prefix("a?[b]") == "a"


def test_parse_timestamp() -> None:
    utc = timezone.utc
    assert parse_timestamp("2026-11-30T12:00:00Z") == datetime(2026, 11, 30, 12, tzinfo=utc)
    assert parse_timestamp("2026-11-30T14:00:00+02:00") == datetime(2026, 11, 30, 12, tzinfo=utc)
    assert parse_timestamp("2026-11-30T12:00:00") == datetime(2026, 11, 30, 12, tzinfo=utc)
    assert parse_timestamp("2026-11-30") == datetime(2026, 11, 30, tzinfo=utc)
    assert parse_timestamp("2026-11-30T12:00:00.5Z") == datetime(2026, 11, 30, 12, 0, 0, 500000, tzinfo=utc)
    for bad in ("", "yesterday", "2026-13-01", "12:00", "2026-11-30T25:00:00Z"):
        assert parse_timestamp(bad) is None, bad


_SEED = [
    "insert into users values ('usr_1', 'ada@example.org', '2026-01-01 00:00:00')",
    "insert into projects values ('prj_1', 'p', '', 'col_1', 1000000, 'usr_1', '2026-01-01 00:00:00')",
    "insert into collections values ('col_1', 'prj_1', null, '', '2026-01-01 00:00:00')",
    "insert into memberships values ('prj_1', 'usr_1', 'owner', '2026-01-01 00:00:00')",
]


def _asset_row(asset_id: str) -> str:
    return (
        f"insert into assets values ('{asset_id}', 't', null, null, '[]', '{{}}', 'project', 'prj_1', 'prj_1',"
        " 'col_1', 'usr_1', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
    )


def _content_row(content_id: str, asset_id: str, size: int, name: str | None, when: str) -> str:
    name_sql = "null" if name is None else "'" + name.replace("'", "''") + "'"
    return (
        f"insert into contents values ('{content_id}', '{asset_id}', null, {size}, '{'a' * 64}', {name_sql},"
        f" '{content_id}', '{when}')"
    )


def test_migration_0002_backfills_existing_data(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    config = migrate.alembic_config()
    try:
        with db.write_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            for statement in [
                *_SEED,
                _asset_row("ast_two_versions"),
                _content_row("cnt_old", "ast_two_versions", 5, "old.h5", "2026-01-01 00:00:00"),
                _content_row("cnt_new", "ast_two_versions", 7, "new.h5", "2026-01-02 00:00:00"),
                _asset_row("ast_odd_name"),
                _content_row("cnt_odd", "ast_odd_name", 3, "..\\weird", "2026-01-01 00:00:00"),
                _asset_row("ast_nameless"),
                _content_row("cnt_nameless", "ast_nameless", 0, None, "2026-01-01 00:00:00"),
                _asset_row("ast_empty"),
            ]:
                connection.exec_driver_sql(statement)

        migrate.upgrade(db.write_engine)

        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            paths: dict[str, str] = dict(connection.execute(text("select id, path from assets")).all())
            files = connection.execute(
                text('select content_id, "index", path, "offset", size, sha256 from content_files order by content_id')
            ).all()
        assert paths == {
            "ast_two_versions": "new.h5",  # the latest content's name
            "ast_odd_name": "ast_odd_name",  # not a valid path: the id instead
            "ast_nameless": "ast_nameless",
            "ast_empty": "ast_empty",
        }
        assert [tuple(row) for row in files] == [
            ("cnt_nameless", 0, "ast_nameless", 0, 0, "a" * 64),
            ("cnt_new", 0, "new.h5", 0, 7, "a" * 64),
            ("cnt_odd", 0, "ast_odd_name", 0, 3, "a" * 64),
            ("cnt_old", 0, "old.h5", 0, 5, "a" * 64),
        ]
        # The server's views read the migrated rows.
        view = db.read_sync(lambda s: assets.asset_view(s, s.get_one(Asset, "ast_two_versions")))
        assert view["path"] == "new.h5"
        assert view["latest_content"]["files"] == [{"path": "new.h5", "offset": 0, "size": 7, "sha256": "a" * 64}]

        # And back down, and up again.
        with db.write_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
            tables = {row[0] for row in connection.exec_driver_sql("select name from sqlite_master where type='table'")}
            assert "content_files" not in tables and "relationships" not in tables
            columns = {row[1] for row in connection.exec_driver_sql("pragma table_info(assets)")}
            assert "path" not in columns
        migrate.upgrade(db.write_engine)
        with db.engine.connect() as connection:
            assert connection.execute(text("select count(*) from content_files")).scalar() == 4
    finally:
        db.dispose()


def test_openapi_references_resolve() -> None:
    from dataerai_server.openapi import openapi_document

    document = openapi_document("0")
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert "#/components/schemas/Relationship" in refs and "#/components/schemas/AssetList" in refs
    for ref in refs:
        target: object = document
        for key in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and key in target, ref
            target = target[key]
