"""An upload that targets an existing asset, and the asset's path, through real processes:
SDK or CLI → daemon → repository server. What a watch folder needs: a file that changed
becomes a new content of the same asset, at the path it chooses."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dataerai import DaemonError
from stack import Stack, make_file

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_modified_file_becomes_a_new_content_of_the_same_asset_at_its_path(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "run42.h5", 2 * MiB + 3, seed=1)
    with stack.client() as client:
        first = client.upload(source, title="Run 42", owner_type="project", owner_id=stack.project_id,
                              tags=["raw"], chunk_size_mb=1, path="watch/day1/run42.h5")
        assert client.call("asset.get", {"asset_id": first.asset_id})["path"] == "watch/day1/run42.h5"

        make_file(source, 3 * MiB + 9, seed=2)  # the file changed in place: new bytes, new size
        second = client.upload(source, asset_id=first.asset_id, chunk_size_mb=1)

        assert second.asset_id == first.asset_id
        assert second.content_id != first.content_id
        assert second.sha256 == sha256(source) != first.sha256
        asset = client.call("asset.get", {"asset_id": first.asset_id})
        assert asset["latest_content"]["content_id"] == second.content_id
        assert asset["latest_content"]["sha256"] == sha256(source)
        assert asset["latest_content"]["size"] == 3 * MiB + 9
        # A new version keeps what the asset was given, and where it was put.
        assert (asset["title"], asset["tags"], asset["path"]) == ("Run 42", ["raw"], "watch/day1/run42.h5")
        listed = list(client.list_assets(project_id=stack.project_id))
        assert [a.asset_id for a in listed] == [first.asset_id]

        # A new version with a path moves the asset; an owner given with it must be its own.
        make_file(source, 1000, seed=3)
        third = client.upload(source, asset_id=first.asset_id, owner_type="project", owner_id=stack.project_id,
                              path="watch/day2/run42.h5")
        assert third.asset_id == first.asset_id and third.content_id not in (first.content_id, second.content_id)
        assert client.call("asset.get", {"asset_id": first.asset_id})["path"] == "watch/day2/run42.h5"
        assert [a.raw["path"] for a in client.list_assets(project_id=stack.project_id)] == ["watch/day2/run42.h5"]

        back = client.download(first.asset_id, dest_dir=tmp_path / "back")
    (only,) = back.files
    assert sha256(Path(only.local_path)) == sha256(source)


def test_a_new_asset_without_a_path_is_at_its_file_name(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "plain.bin", 10)
    with stack.client() as client:
        result = client.upload(source, title="plain", owner_type="project", owner_id=stack.project_id)
        assert client.call("asset.get", {"asset_id": result.asset_id})["path"] == "plain.bin"


def test_an_unknown_asset_fails_the_job_with_not_found_at_once(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.bin", 10)
    with stack.client() as client:
        with pytest.raises(DaemonError) as info:
            # Not retried: a 404 fails the job, so this returns long before the timeout.
            client.upload(source, asset_id="ast_doesnotexist00", transfer_timeout_s=120)
        assert info.value.code == "not_found"
        (failed,) = client.list_jobs(states=["failed"])
        assert failed.error is not None and failed.error.code == "not_found"
        assert list(client.list_assets(project_id=stack.project_id)) == []


def test_an_owner_that_is_not_the_assets_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.bin", 10)
    with stack.client() as client:
        other = client.create_project("Another").project_id
        first = client.upload(source, title="f", owner_type="project", owner_id=stack.project_id)
        with pytest.raises(DaemonError) as info:
            client.upload(source, asset_id=first.asset_id, owner_type="project", owner_id=other)
        assert info.value.code == "invalid_argument"
        assert client.get_metadata(first.asset_id).content_id == first.content_id


def test_the_daemon_refuses_a_new_asset_without_a_title_naming_it(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.bin", 10)
    with stack.client() as client:
        with pytest.raises(DaemonError) as info:
            client.call("upload.start", {"local_path": str(source), "owner_type": "project",
                                         "owner_id": stack.project_id})
        assert (info.value.code, info.value.data.get("param")) == ("invalid_argument", "title")
        assert client.list_jobs() == []


def test_the_cli_uploads_a_new_version_with_asset_and_path(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "cli.bin", MiB + 1, seed=4)
    up = json.loads(stack.cli("upload", str(source), "--project", stack.project_id, "--path", "w/cli.bin",
                              "--json").stdout)
    make_file(source, MiB + 2, seed=5)
    again = json.loads(stack.cli("upload", str(source), "--asset", up["asset_id"], "--path", "w/moved/cli.bin",
                                 "--json").stdout)
    assert again["asset_id"] == up["asset_id"] and again["content_id"] != up["content_id"]
    assert again["sha256"] == sha256(source)
    shown = json.loads(stack.cli("assets", "show", up["asset_id"], "--json").stdout)
    assert shown["title"] == "cli.bin" and shown["latest_content"]["content_id"] == again["content_id"]
    # One asset, at the path the second upload moved it to (`assets ls` prints id, size, path).
    listed = stack.cli("assets", "ls", "--project", stack.project_id).stdout.splitlines()
    assert [line.split() for line in listed] == [[up["asset_id"], str(MiB + 2), "w/moved/cli.bin"]]
