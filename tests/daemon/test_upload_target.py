"""Where an upload goes: a new asset (title and owner required) or a new version of ``asset_id``
(neither required), with the asset's ``path``; from ``upload.start`` through the job's params
to the body of the repository's upload session."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dataerai.protocol import Request
from fake_repository import FakeRepository
from stand_ins import job_context

from dataeraid.engine import upload
from dataeraid.methods import REGISTRY

MiB = 1024 * 1024
PROJECT = "prj_12345678"
ASSET = "ast_12345678"


class _Jobs:
    """``Jobs.create`` that keeps what it was given."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def create(self, job: dict[str, Any]) -> dict[str, Any]:
        self.created.append(job)
        return {"job_id": job["job_id"], "state": "queued"}


def _call(jobs: _Jobs) -> SimpleNamespace:
    svc = SimpleNamespace(current=SimpleNamespace(default_chunk_size=64 * MiB), jobs=jobs)
    return SimpleNamespace(svc=svc, conn=SimpleNamespace(peer_pid=4242))


async def _start(params: dict[str, Any]) -> tuple[Any, _Jobs]:
    jobs = _Jobs()
    answer = await REGISTRY.answer(_call(jobs), Request("upload.start", params, 1))
    return answer, jobs


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "run42.h5"
    path.write_bytes(b"x" * 10)
    return path


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"owner_type": "project", "owner_id": PROJECT}, "title"),
        ({"title": "t", "owner_id": PROJECT}, "owner_type"),
        ({"title": "t", "owner_type": "project"}, "owner_id"),
        ({"title": "t", "owner_type": "project", "owner_id": None}, "owner_id"),
        ({}, "title"),
        ({"path": "raw/run42.h5"}, "title"),
    ],
)
async def test_a_new_asset_without_its_title_or_owner_is_invalid_naming_the_missing_one(
    source: Path, given: dict[str, Any], missing: str
) -> None:
    answer, jobs = await _start({"local_path": str(source), **given})
    assert answer.error is not None
    assert answer.error.code == "invalid_argument"
    assert answer.error.data == {"param": missing}
    assert "asset_id" in answer.error.message
    assert jobs.created == []


@pytest.mark.parametrize(
    ("given", "missing"),
    [({"owner_type": "project"}, "owner_id"), ({"owner_id": PROJECT}, "owner_type")],
)
async def test_a_new_version_takes_an_owner_whole_or_not_at_all(
    source: Path, given: dict[str, Any], missing: str
) -> None:
    answer, jobs = await _start({"local_path": str(source), "asset_id": ASSET, **given})
    assert answer.error is not None
    assert (answer.error.code, answer.error.data) == ("invalid_argument", {"param": missing})
    assert jobs.created == []


async def test_an_owner_given_with_a_new_version_is_still_checked(source: Path) -> None:
    answer, _ = await _start({"local_path": str(source), "asset_id": ASSET, "owner_type": "user",
                              "owner_id": PROJECT})
    assert answer.error is not None
    assert (answer.error.code, answer.error.data) == ("invalid_argument", {"param": "owner_id"})


@pytest.mark.parametrize("bad", ["/raw/a", "raw/../a", "raw//a", "raw/", "a\\b", "", "a\x00b"])
async def test_a_path_that_is_no_repository_path_is_invalid(source: Path, bad: str) -> None:
    answer, jobs = await _start({"local_path": str(source), "asset_id": ASSET, "path": bad})
    assert answer.error is not None
    assert (answer.error.code, answer.error.data) == ("invalid_argument", {"param": "path"})
    assert jobs.created == []


async def test_a_new_version_is_queued_with_its_asset_and_path_and_no_title_or_owner(source: Path) -> None:
    answer, jobs = await _start({"local_path": str(source), "asset_id": ASSET, "path": "watch/raw/run42.h5"})
    assert answer.error is None, answer.error
    (job,) = jobs.created
    params = job["params"]
    assert (params["asset_id"], params["path"]) == (ASSET, "watch/raw/run42.h5")
    assert params["title"] is None and params["owner_type"] is None and params["owner_id"] is None
    assert job["file_name"] == "run42.h5" and job["bytes_total"] == 10


async def test_a_new_asset_is_queued_as_before_with_its_path(source: Path) -> None:
    answer, jobs = await _start({"local_path": str(source), "title": "Run 42", "owner_type": "project",
                                 "owner_id": PROJECT, "path": "raw/run42.h5"})
    assert answer.error is None, answer.error
    params = jobs.created[0]["params"]
    assert (params["title"], params["owner_type"], params["owner_id"]) == ("Run 42", "project", PROJECT)
    assert params["path"] == "raw/run42.h5" and params["asset_id"] is None


# --- the session's body --------------------------------------------------------------


def _job(source: Path, **params: Any) -> dict[str, Any]:
    files = [["run42.h5", 10, 1, 2]]
    return {"job_id": "job_1", "file_name": source.name, "bytes_total": 10, "source_size": 10,
            "chunk_size": 64 * MiB, "remote_session": None,
            "params": {"title": None, "owner_type": None, "owner_id": None, "description": None, "alias": None,
                       "tags": [], "metadata": {}, "collection_id": None, "asset_id": None, "path": None,
                       "source_root": str(source.parent), "source_files": files, "skipped": [], **params}}


async def _session_body(job: dict[str, Any]) -> dict[str, Any]:
    repository = FakeRepository()
    ctx = job_context(repository, {}, job=job)
    session = await upload._session(ctx, upload.source_files(job)[1])  # type: ignore[arg-type]  # a stand-in context
    assert session["upload_id"] in repository.sessions
    (body,) = repository.bodies
    return body


async def test_a_new_versions_session_names_the_asset_and_path_and_leaves_out_title_and_owner(source: Path) -> None:
    body = await _session_body(_job(source, asset_id=ASSET, path="watch/run42.h5"))
    assert (body["asset_id"], body["path"], body["file_name"]) == (ASSET, "watch/run42.h5", "run42.h5")
    assert not {"title", "owner_type", "owner_id"} & set(body)


async def test_a_new_assets_session_has_its_title_and_owner_and_no_path_unless_given(source: Path) -> None:
    body = await _session_body(_job(source, title="Run 42", owner_type="project", owner_id=PROJECT))
    assert (body["title"], body["owner_type"], body["owner_id"]) == ("Run 42", "project", PROJECT)
    assert body["asset_id"] is None and "path" not in body
    with_path = await _session_body(_job(source, title="Run 42", owner_type="project", owner_id=PROJECT,
                                         path="raw/run42.h5"))
    assert with_path["path"] == "raw/run42.h5"


async def test_a_job_queued_before_paths_existed_still_makes_its_session(source: Path) -> None:
    job = _job(source, title="Run 42", owner_type="project", owner_id=PROJECT)
    del job["params"]["path"]
    body = await _session_body(job)
    assert body["title"] == "Run 42" and "path" not in body
