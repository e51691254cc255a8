"""Assets, files, collections and provenance links through the SDK, its async twin and the CLI,
against real server and daemon processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError
from dataerai.aio import AsyncDataeraiClient
from stack import Stack, make_file


def _upload(client: Any, path: Path, owner_type: str, owner_id: str, title: str) -> Any:
    return client.upload(path, title=title, owner_type=owner_type, owner_id=owner_id)


def test_assets_are_listed_by_prefix_and_glob_and_deleted(stack: Stack, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.h5", "b.h5", "notes.txt"):
        make_file(raw / name, 100, seed=len(name))
    with stack.client() as client:
        ids = {name: _upload(client, raw / name, "project", stack.project_id, name).asset_id
               for name in ("a.h5", "b.h5", "notes.txt")}
        client.set_metadata(ids["b.h5"], path="raw/deep/b.h5")
        listed = [a.asset_id for a in client.list_assets(project_id=stack.project_id, page_size=1)]
        assert listed == [ids["a.h5"], ids["notes.txt"], ids["b.h5"]], "ordered by path, paged one at a time"
        assert [a.asset_id for a in client.list_assets(project_id=stack.project_id, glob="*.h5")] == [ids["a.h5"]]
        assert [a.asset_id for a in client.list_assets(project_id=stack.project_id, glob="**/*.h5")] == [
            ids["a.h5"], ids["b.h5"]], "`**/` spans zero or more directories"
        assert [a.asset_id for a in client.list_assets(project_id=stack.project_id, glob="raw/**/*.h5")] == [
            ids["b.h5"]]
        assert [a.asset_id for a in client.list_assets(project_id=stack.project_id, path_prefix="raw/")] == [
            ids["b.h5"]]
        info = client.get_file_info(ids["a.h5"], "a.h5")
        assert (info.path, info.size, info.offset) == ("a.h5", 100, 0)
        client.delete_asset(ids["notes.txt"])
        with pytest.raises(DaemonError) as gone:
            client.get_metadata(ids["notes.txt"])
        assert gone.value.code == "not_found"
        with pytest.raises(DaemonError) as bad:
            list(client.list_assets())
        assert bad.value.code == "invalid_argument"


def test_collections_own_uploads_and_links_carry_provenance(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        calibration = client.create_collection(stack.project_id, "calibration")
        collections = client.list_collections(stack.project_id)
        assert [c.name for c in collections][1:] == ["calibration"] and collections[0].parent_id is None
        raw = _upload(client, make_file(tmp_path / "raw.bin", 50, seed=1), "collection",
                      calibration.collection_id, "raw")
        analysis = _upload(client, make_file(tmp_path / "fit.bin", 60, seed=2), "project", stack.project_id,
                           "fit")
        in_collection = list(client.list_assets(collection_id=calibration.collection_id))
        assert [a.asset_id for a in in_collection] == [raw.asset_id]
        link = client.create_relationship(analysis.asset_id, raw.asset_id, relationship_type="analysis_of",
                                          analysis_mode="non_destructive", qualifier_time="2026-11-30T12:00:00+01:00",
                                          qualifiers={"tool": "pycroscopy"})
        assert link.type == "analysis_of" and link.related_asset is not None
        assert link.related_asset["id"] == raw.asset_id
        assert link.qualifier_time == "2026-11-30T11:00:00Z"
        incoming = client.list_relationships(raw.asset_id)
        assert [(r.relationship_id, r.raw["direction"]) for r in incoming] == [(link.relationship_id, "incoming")]
        with pytest.raises(DaemonError) as bad:
            client.create_relationship(analysis.asset_id, raw.asset_id, "x", analysis_mode="gentle")
        assert bad.value.code == "invalid_argument"
        assert {p.project_id for p in client.list_projects()} >= {stack.project_id}


def test_the_async_twin_lists_assets_and_files(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        asset = _upload(client, make_file(tmp_path / "x.bin", 10), "project", stack.project_id, "x")

    async def main() -> tuple[list[str], list[str]]:
        async with AsyncDataeraiClient(socket_path=str(stack.socket_path), auto_start=False) as aclient:
            assets = [a.asset_id async for a in await aclient.list_assets(project_id=stack.project_id)]
            files = [f.path async for f in await aclient.list_files(asset.asset_id)]
            return assets, files

    assert asyncio.run(main()) == ([asset.asset_id], ["x.bin"])


def test_cli_assets_meta_rel_and_collections(stack: Stack, tmp_path: Path) -> None:
    top = tmp_path / "run7"
    top.mkdir()
    make_file(top / "a.bin", 10, seed=1)
    (top / "sub").mkdir()
    make_file(top / "sub" / "b.bin", 20, seed=2)

    def cli_json(*args: str) -> Any:
        return json.loads(stack.cli(*args, "--json").stdout)

    up = cli_json("upload", str(top), "--project", stack.project_id)
    other = cli_json("upload", str(top / "a.bin"), "--project", stack.project_id)
    assert [f["path"] for f in cli_json("assets", "files", up["asset_id"])["files"]] == ["run7/a.bin",
                                                                                        "run7/sub/b.bin"]
    listed = cli_json("assets", "ls", "--project", stack.project_id, "--glob", "run*")
    assert [a["asset_id"] for a in listed["assets"]] == [up["asset_id"]]
    changed = cli_json("meta", "set", up["asset_id"], "--title", "Run 7", "--tag", "raw", "--metadata",
                       '{"beam": 7}')
    assert (changed["title"], changed["tags"], changed["metadata"]) == ("Run 7", ["raw"], {"beam": 7})
    assert cli_json("meta", "get", up["asset_id"])["title"] == "Run 7"
    link = cli_json("rel", "add", other["asset_id"], up["asset_id"], "--type", "part_of", "--mode", "in_situ")
    assert (link["type"], link["analysis_mode"]) == ("part_of", "in_situ")
    assert [r["relationship_id"] for r in cli_json("rel", "ls", up["asset_id"])["relationships"]] == [
        link["relationship_id"]]
    made = cli_json("collection", "create", stack.project_id, "derived")
    assert made["name"] == "derived"
    refused = stack.cli("assets", "rm", other["asset_id"], check=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert cli_json("assets", "rm", other["asset_id"], "--yes") == {"asset_id": other["asset_id"], "deleted": True}
    missing = stack.cli("meta", "get", other["asset_id"], check=False)
    assert missing.returncode == 1 and "error[not_found]" in missing.stderr
