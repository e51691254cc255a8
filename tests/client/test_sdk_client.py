"""The blocking client against the fake daemon: parameter mapping, models, errors, waiting."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dataerai
import pytest
import trio
from dataerai import (
    DaemonConnectionError,
    DaemonError,
    DaemonTimeoutError,
    DataeraiClient,
    ProgressEvent,
)
from dataerai.aio import AsyncDataeraiClient
from dataerai.protocol import ERRORS, Request
from sdk_fake_daemon import NO_REPLY, Fail, FakeConnection, FakeDaemon, Plan

# --- the contract's shape -----------------------------------------------------


def _sans_job_id(params: dict[str, Any]) -> dict[str, Any]:
    """Start parameters without the job id the SDK chose (checked for its shape)."""
    rest = dict(params)
    assert re.fullmatch(r"job_[0-9a-f]{24}", rest.pop("job_id"))
    return rest


def _defaults(func: Any) -> dict[str, Any]:
    return {
        name: param.default
        for name, param in inspect.signature(func).parameters.items()
        if name != "self" and param.kind is not param.VAR_KEYWORD
    }


def test_both_spellings_are_one_class() -> None:
    assert dataerai.DataEraiClient is dataerai.DataeraiClient


def test_constructor_matches_the_contract() -> None:
    empty = inspect.Parameter.empty
    assert _defaults(DataeraiClient.__init__) == {
        "socket_path": None,
        "binary_path": None,
        "auto_start": True,
        "start_timeout_s": 10.0,
        "request_timeout_s": 30.0,
        # Beyond the contract: the fairness tag (keyword, defaulted, so the contract's calls work).
        "client_name": None,
    }
    for param in list(inspect.signature(DataeraiClient.__init__).parameters.values())[1:]:
        assert param.kind is param.KEYWORD_ONLY
    assert _defaults(DataeraiClient.upload) == {
        "local_path": empty,
        # The contract's required three: still required for a new asset (the client says so,
        # test_upload_without_an_owner_or_asset_id_is_invalid), not for a new version of asset_id.
        "title": None,
        "owner_type": None,
        "owner_id": None,
        "description": None,
        "alias": None,
        "tags": None,
        "metadata": None,
        "collection_id": None,
        # Beyond the contract: a new version of an existing asset, and the asset's path.
        "asset_id": None,
        "path": None,
        "chunk_size_mb": None,
        "on_progress": None,
        # Beyond the contract: state changes, and why a job waits (keyword, defaulted).
        "on_state": None,
        "transfer_timeout_s": 3600.0,
        "wait": True,
        "priority": 0,
        "window": None,
    }
    assert _defaults(DataeraiClient.download) == {
        "asset_id": empty,
        "dest_dir": empty,
        "content_id": None,
        "overwrite": False,
        "on_progress": None,
        "on_state": None,
        "transfer_timeout_s": 3600.0,
        "wait": True,
        "priority": 0,
        "window": None,
    }
    assert _defaults(DataeraiClient.create_project) == {"name": empty, "description": ""}
    assert _defaults(DataeraiClient.call) == {"method": empty, "params": None, "timeout": None}
    assert _defaults(DataeraiClient.wait) == {"job_id": empty, "timeout_s": None, "on_progress": None,
                                              "on_state": None}
    assert _defaults(DataeraiClient.events) == {"since": None, "jobs": None, "types": None}
    rel = _defaults(DataeraiClient.create_relationship)
    assert rel["rel_type"] is None and rel["relationship_type"] is None
    assert set(rel) >= {"analysis_mode", "qualifier_note", "qualifier_time", "qualifiers"}


def test_socket_path_default_is_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAERAI_SOCKET", "/tmp/first.sock")
    client = DataeraiClient()
    monkeypatch.setenv("DATAERAI_SOCKET", "/tmp/second.sock")
    assert client.socket_path == "/tmp/first.sock"
    assert DataeraiClient(socket_path=Path("/tmp/x.sock")).socket_path == "/tmp/x.sock"


def test_no_method_takes_or_returns_a_token() -> None:
    for name, member in inspect.getmembers(DataeraiClient, inspect.isfunction):
        assert "token" not in inspect.signature(member).parameters, name
    status = dataerai.AuthStatus.from_wire({"user_email": "a@b", "token": "dtk_secret"})
    assert "dtk_secret" not in repr(status) and "token" not in status.raw


# --- life and state -----------------------------------------------------------


def test_states_and_misuse(daemon: FakeDaemon) -> None:
    client = DataeraiClient(socket_path=daemon.socket_path, auto_start=False)
    assert isinstance(client.state, dataerai.ClientState)
    assert client.state.name == "UNOPENED"
    assert client.connect() is client
    assert client.state.name == "OPENED"
    client.connect()  # idempotent
    client.call("daemon.ping")
    assert len(daemon.connections) == 1
    client.close()
    client.close()
    assert client.state.name == "CLOSED"
    with pytest.raises(RuntimeError, match="closed"):
        client.auth_status()
    with pytest.raises(RuntimeError, match="closed"):
        client.connect()


def test_lazy_connect_on_first_call(daemon: FakeDaemon) -> None:
    client = DataeraiClient(socket_path=daemon.socket_path, auto_start=False)
    assert client.call("daemon.ping")["version"] == "0.1.0"
    assert client.state.name == "OPENED"
    client.close()


def test_context_manager(daemon: FakeDaemon) -> None:
    with DataeraiClient(socket_path=daemon.socket_path, auto_start=False) as client:
        assert client.state.name == "OPENED"
    assert client.state.name == "CLOSED"


def test_not_running_without_auto_start(sock_dir: Path) -> None:
    path = str(sock_dir / "none.sock")
    with pytest.raises(DaemonConnectionError, match="not running") as info:
        DataeraiClient(socket_path=path, auto_start=False).connect()
    assert isinstance(info.value, builtins.ConnectionError)
    assert info.value.socket_path == path


# --- methods: params and models ---------------------------------------------------


def test_auth_status(client: DataeraiClient, daemon: FakeDaemon) -> None:
    status = client.auth_status()
    assert status.user_email == "ada@example.org"
    assert status.expires_at == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert (status.server_url, status.user_id, status.scopes) == ("http://repo.example", "usr_1", ["read", "write"])
    assert daemon.calls("auth.status")[0].params == {}


def test_auth_status_without_expiry_and_logged_out(client: DataeraiClient, daemon: FakeDaemon) -> None:
    assert daemon.auth is not None
    daemon.auth["expires_at"] = None
    assert client.auth_status().expires_at is None
    daemon.auth = None
    with pytest.raises(DaemonError) as info:
        client.auth_status()
    assert info.value.code == "auth_required"
    assert "auth login" in info.value.message


def test_create_project(client: DataeraiClient, daemon: FakeDaemon) -> None:
    project = client.create_project("Beamline 7", description="Demo")
    assert daemon.calls("project.create")[0].params == {"name": "Beamline 7", "description": "Demo"}
    assert (project.project_id, project.name, project.description) == ("prj_1", "Beamline 7", "Demo")
    assert project.root_collection_id == "col_1"
    assert project.role == "owner" and project.allocation_bytes == 1 << 40
    client.create_project("Other")
    assert daemon.calls("project.create")[1].params == {"name": "Other", "description": ""}


def test_upload_maps_params_and_reports_progress(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data.csv").write_bytes(b"x" * 10)
    monkeypatch.chdir(tmp_path)
    seen: list[ProgressEvent] = []
    result = client.upload(
        "data.csv",
        title="My dataset",
        owner_type="project",
        owner_id="prj_1",
        description="d",
        alias="a",
        tags=("csv", "demo"),
        metadata={"beam": 7},
        collection_id="col_9",
        chunk_size_mb=8,
        on_progress=seen.append,
        priority=5,
    )
    (start,) = daemon.calls("upload.start")
    assert _sans_job_id(start.params) == {
        "local_path": str(tmp_path / "data.csv"),
        "title": "My dataset",
        "owner_type": "project",
        "owner_id": "prj_1",
        "description": "d",
        "alias": "a",
        "tags": ["csv", "demo"],
        "metadata": {"beam": 7},
        "collection_id": "col_9",
        "chunk_size": 8 * 1024 * 1024,
        "priority": 5,
        "client": {"pid": os.getpid()},
    }
    job_id = start_job_id(daemon)
    assert daemon.calls("events.subscribe")[0].params == {"jobs": [job_id]}
    assert daemon.calls("events.unsubscribe")
    assert result == dataerai.UploadResult(
        asset_id=f"ast_{job_id}", content_id=f"cnt_{job_id}", transfer_id=job_id, size=3000, sha256="ab" * 32
    )
    assert [p.bytes_done for p in seen] == [1000, 2000, 3000, 3000]
    assert all(p.transfer_id == job_id for p in seen)
    assert seen[0].percent == pytest.approx(100 / 3) and seen[0].rate_mbps == 2.5
    assert seen[0].file_name == "run42.h5" and seen[0].chunk_count == 3
    assert seen[-1].completed and seen[-1].percent == 100.0


def start_job_id(daemon: FakeDaemon) -> str:
    job_ids: list[str] = sorted(daemon.jobs)
    return job_ids[-1]


def test_upload_omits_unset_options(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    client.upload(path, title="t", owner_type="user", owner_id="usr_1")
    assert _sans_job_id(daemon.calls("upload.start")[0].params) == {
        "local_path": str(path),
        "title": "t",
        "owner_type": "user",
        "owner_id": "usr_1",
        "priority": 0,
        "client": {"pid": os.getpid()},
    }


def test_upload_accepts_collection_owner(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    client.upload(str(path), title="t", owner_type="collection", owner_id="col_1")
    assert daemon.calls("upload.start")[0].params["owner_type"] == "collection"


def test_upload_of_a_new_version_sends_the_asset_and_path_and_no_owner(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"2")
    result = client.upload(path, asset_id="ast_12345678", path="raw/day1/f")
    assert _sans_job_id(daemon.calls("upload.start")[0].params) == {
        "local_path": str(path),
        "asset_id": "ast_12345678",
        "path": "raw/day1/f",
        "priority": 0,
        "client": {"pid": os.getpid()},
    }
    assert result.transfer_id == start_job_id(daemon)


def test_upload_of_a_new_version_passes_on_an_owner_given_with_it(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"2")
    client.upload(path, asset_id="ast_12345678", owner_type="project", owner_id="prj_1", wait=False)
    params = daemon.calls("upload.start")[0].params
    assert (params["asset_id"], params["owner_type"], params["owner_id"]) == ("ast_12345678", "project", "prj_1")
    assert "title" not in params and "path" not in params


def test_upload_of_a_new_asset_sends_its_path(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    client.upload(path, title="t", owner_type="project", owner_id="prj_1", path="watch/f")
    params = daemon.calls("upload.start")[0].params
    assert params["path"] == "watch/f" and "asset_id" not in params


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [
        ({}, "title, owner_type, owner_id are required"),
        ({"owner_type": "project", "owner_id": "prj_1"}, "title is required"),
        ({"title": "t", "owner_id": "prj_1"}, "owner_type is required"),
        ({"title": "t", "owner_type": "project"}, "owner_id is required"),
        ({"title": "t", "owner_type": "project", "owner_id": None}, "owner_id is required"),
    ],
)
def test_upload_without_an_owner_or_asset_id_is_invalid(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path, kwargs: dict[str, Any], missing: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    with pytest.raises(DaemonError, match=missing) as info:
        client.upload(path, **kwargs)
    assert info.value.code == "invalid_argument"
    assert "asset_id" in info.value.message
    assert daemon.calls("upload.start") == []


def test_upload_of_a_new_version_still_checks_an_owner_type(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    with pytest.raises(DaemonError, match="owner_type") as info:
        client.upload(path, asset_id="ast_12345678", owner_type="group", owner_id="grp_1")
    assert info.value.code == "invalid_argument"
    assert daemon.calls("upload.start") == []


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_the_async_twin_takes_the_same_upload_arguments(
    daemon: FakeDaemon, tmp_path: Path, library: str
) -> None:
    assert _defaults(AsyncDataeraiClient.upload) == _defaults(DataeraiClient.upload)
    path = tmp_path / "f"
    path.write_bytes(b"2")

    async def scenario() -> Any:
        async with AsyncDataeraiClient(socket_path=daemon.socket_path, auto_start=False) as client:
            with pytest.raises(DaemonError) as info:
                await client.upload(path, owner_type="project", owner_id="prj_1")
            assert info.value.code == "invalid_argument"
            return await client.upload(path, asset_id="ast_12345678", path="a/b")

    result = asyncio.run(scenario()) if library == "asyncio" else trio.run(scenario)
    (start,) = daemon.calls("upload.start")
    assert (start.params["asset_id"], start.params["path"]) == ("ast_12345678", "a/b")
    assert "title" not in start.params and "owner_id" not in start.params
    assert result.transfer_id == start_job_id(daemon)


def test_upload_sha256_from_the_asset_when_the_job_lacks_it(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.plan = Plan(sha256=None)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    result = client.upload(path, title="t", owner_type="project", owner_id="prj_1")
    assert result.sha256 == "cd" * 32
    assert daemon.calls("asset.get")[0].params == {"asset_id": result.asset_id}


def test_upload_missing_file_is_not_found_before_the_daemon(client: DataeraiClient, daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonError) as info:
        client.upload("/nonexistent/file.csv", title="t", owner_type="project", owner_id="p")
    assert info.value.code == "not_found"
    assert daemon.calls("upload.start") == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size_mb": 0}, "chunk_size_mb"),
        ({"chunk_size_mb": -1}, "chunk_size_mb"),
        ({"chunk_size_mb": 1.5}, "chunk_size_mb"),
        ({"chunk_size_mb": True}, "chunk_size_mb"),
        ({"owner_type": "group"}, "owner_type"),
        ({"tags": "csv"}, "tags"),
        ({"tags": ["a", 1]}, "tags"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_upload_invalid_arguments(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    args: dict[str, Any] = {"title": "t", "owner_type": "project", "owner_id": "p", **kwargs}
    with pytest.raises(DaemonError, match=match) as info:
        client.upload(path, **args)
    assert info.value.code == "invalid_argument"
    assert daemon.calls("upload.start") == []


def test_upload_failed_job_raises_its_code(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(outcome="failed", error={"code": "quota_exceeded", "message": "allocation used up"})
    path = tmp_path / "f"
    path.write_bytes(b"1")
    with pytest.raises(DaemonError) as info:
        client.upload(path, title="t", owner_type="project", owner_id="p")
    assert (info.value.code, info.value.message) == ("quota_exceeded", "allocation used up")
    assert info.value.data["job_id"] == start_job_id(daemon)


def test_upload_cancelled_job_raises_cancelled(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(outcome="cancelled")
    path = tmp_path / "f"
    path.write_bytes(b"1")
    with pytest.raises(DaemonError) as info:
        client.upload(path, title="t", owner_type="project", owner_id="p")
    assert info.value.code == "cancelled"


def test_job_that_ended_before_the_subscription_is_seen_by_replay(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.plan = Plan(before_subscribe=True)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    # upload.start already says "completed" here, so the client need not subscribe at all;
    # make the start answer say "queued" to force the replay path.
    original = daemon.handlers["upload.start"]

    def stale_start(conn: FakeConnection, request: Request) -> Any:
        return {**original(conn, request), "state": "queued"}

    daemon.handlers["upload.start"] = stale_start
    result = client.upload(path, title="t", owner_type="project", owner_id="p")
    assert result.asset_id.startswith("ast_")
    assert daemon.calls("events.subscribe")


def test_final_event_without_job_falls_back_to_job_get(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.plan = Plan(job_in_event=False)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    assert client.upload(path, title="t", owner_type="project", owner_id="p").content_id
    assert daemon.calls("job.get")


def test_gap_makes_the_client_ask_for_the_job(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(gap=True)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    result = client.upload(path, title="t", owner_type="project", owner_id="p")
    assert result.transfer_id == start_job_id(daemon)
    assert daemon.calls("job.get")[0].params == {"job_id": result.transfer_id}


def test_upload_without_waiting_then_wait(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    job = client.upload(path, title="t", owner_type="project", owner_id="p", wait=False)
    assert isinstance(job, dataerai.Job)
    assert (job.kind, job.state, job.local_path) == ("upload", "queued", str(path))
    assert daemon.calls("events.subscribe") == []
    seen: list[ProgressEvent] = []
    done = client.wait(job.job_id, on_progress=seen.append)
    assert done.state == "completed" and done.is_terminal and done.asset_id
    assert seen[-1].completed


def test_wait_returns_failed_jobs_without_raising(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="failed")
    job = client.download("ast_1", "/tmp/somewhere", wait=False)
    done = client.wait(job.job_id)
    assert done.state == "failed"
    assert done.error == dataerai.JobError("source_changed", "file changed")


def test_transfer_timeout_names_the_job_which_goes_on(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    daemon.plan = Plan(outcome="hang", progress=1)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    started = time.monotonic()
    with pytest.raises(DaemonTimeoutError) as info:
        client.upload(path, title="t", owner_type="project", owner_id="p", transfer_timeout_s=0.3)
    assert time.monotonic() - started < 3
    error = info.value
    job_id = start_job_id(daemon)
    assert (error.code, error.transfer_id) == ("timeout", job_id)
    assert isinstance(error, TimeoutError) and isinstance(error, DaemonError)
    assert job_id in str(error)
    # The job goes on; waiting again (on a fresh connection) sees it end.
    threading.Timer(0.2, daemon.finish, args=(job_id,)).start()
    assert client.wait(error.transfer_id or "", timeout_s=5).state == "completed"


def test_wait_timeout(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    job = client.download("ast_1", "/tmp/x", wait=False)
    with pytest.raises(DaemonTimeoutError) as info:
        client.wait(job.job_id, timeout_s=0.2)
    assert info.value.transfer_id == job.job_id


def test_on_progress_exception_propagates_and_the_client_recovers(
    client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")

    def boom(event: ProgressEvent) -> None:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        client.upload(path, title="t", owner_type="project", owner_id="p", on_progress=boom)
    assert client.get_job(start_job_id(daemon)).job_id == start_job_id(daemon)


def test_download(client: DataeraiClient, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    seen: list[ProgressEvent] = []
    result = client.download("ast_1", "out", content_id="cnt_7", overwrite=True, on_progress=seen.append, priority=2)
    assert _sans_job_id(daemon.calls("download.start")[0].params) == {
        "asset_id": "ast_1",
        "dest_dir": str(tmp_path / "out"),
        "content_id": "cnt_7",
        "overwrite": True,
        "priority": 2,
        "client": {"pid": os.getpid()},
    }
    assert result.asset_id == "ast_1" and result.content_id == "cnt_7"
    assert result.files == [dataerai.DownloadedFile(str(tmp_path / "out" / "run42.h5"), 3000)]
    assert result.transfer_id == start_job_id(daemon)
    assert len(seen) == 4

    client.download("ast_1", tmp_path)
    assert _sans_job_id(daemon.calls("download.start")[1].params) == {
        "asset_id": "ast_1",
        "dest_dir": str(tmp_path),
        "overwrite": False,
        "priority": 0,
        "client": {"pid": os.getpid()},
    }


def test_download_errors(client: DataeraiClient, daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonError) as info:
        client.download("missing", "/tmp/x")
    assert info.value.code == "not_found"
    daemon.plan = Plan(outcome="failed", error={"code": "destination_exists", "message": "a different file"})
    with pytest.raises(DaemonError) as info:
        client.download("ast_1", "/tmp/x")
    assert info.value.code == "destination_exists"


def test_metadata(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"1")
    asset_id = client.upload(path, title="t", owner_type="project", owner_id="p").asset_id
    meta = client.get_metadata(asset_id)
    assert daemon.calls("asset.get")[-1].params == {"asset_id": asset_id}
    assert (meta.asset_id, meta.title, meta.tags, meta.metadata) == (asset_id, "Run 42", ["raw"], {"beam": 7})
    assert meta.owner_type == "project" and meta.project_id == "prj_1" and meta.collection_id == "col_1"
    assert meta.latest_content is not None and meta.latest_content.size == 3000
    assert meta.content_id == meta.latest_content.content_id and meta.sha256 == "cd" * 32
    assert meta.created_at == datetime(2026, 11, 25, 14, tzinfo=timezone.utc)

    updated = client.set_metadata(asset_id, title="v2", tags=["csv", "demo"])
    assert daemon.calls("asset.update")[0].params == {"asset_id": asset_id, "title": "v2", "tags": ["csv", "demo"]}
    assert (updated.title, updated.tags) == ("v2", ["csv", "demo"])
    with pytest.raises(DaemonError) as info:
        client.set_metadata(asset_id, colour="red")
    assert info.value.code == "invalid_argument"
    with pytest.raises(DaemonError, match="tags"):
        client.set_metadata(asset_id, tags="csv")


def test_jobs(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang")
    a = client.download("ast_1", "/tmp/a", wait=False)
    client.download("ast_2", "/tmp/b", wait=False)
    assert [j.job_id for j in client.list_jobs()] == sorted(daemon.jobs)
    assert daemon.calls("job.list")[0].params == {}
    cancelled = client.cancel(a.job_id)
    assert cancelled.state == "cancelled"
    assert daemon.calls("job.cancel")[0].params == {"job_id": a.job_id}
    assert [j.job_id for j in client.list_jobs(states=["cancelled"])] == [a.job_id]
    assert daemon.calls("job.list")[1].params == {"states": ["cancelled"]}
    assert client.get_job(a.job_id).state == "cancelled"
    with pytest.raises(DaemonError) as info:
        client.get_job("job_nope")
    assert info.value.code == "not_found"
    with pytest.raises(DaemonError) as info:
        client.cancel(a.job_id)
    assert info.value.code == "conflict"


def test_create_relationship(client: DataeraiClient, daemon: FakeDaemon) -> None:
    rel = client.create_relationship(
        "ast_a", "ast_b", relationship_type="derived_from", analysis_mode="non_destructive", qualifiers={"tool": "x"}
    )
    assert daemon.calls("relationship.create")[0].params == {
        "from_asset_id": "ast_a",
        "to_asset_id": "ast_b",
        "type": "derived_from",
        "analysis_mode": "non_destructive",
        "qualifiers": {"tool": "x"},
    }
    assert rel.type == "derived_from" and rel.related_asset == {"id": "ast_b", "title": "raw"}
    assert client.create_relationship("a", "b", "analysis_of").type == "analysis_of"
    cases: list[dict[str, Any]] = [
        {},
        {"rel_type": "x" * 256},
        {"rel_type": "a", "relationship_type": "b"},
        {"rel_type": "a", "analysis_mode": "gentle"},
    ]
    for bad in cases:
        with pytest.raises(DaemonError) as info:
            client.create_relationship("a", "b", **bad)
        assert info.value.code == "invalid_argument"


def test_call_is_the_raw_bottom(client: DataeraiClient, daemon: FakeDaemon) -> None:
    assert client.call("job.list", {"states": ["running"]}) == {"jobs": []}
    with pytest.raises(DaemonError) as info:
        client.call("no.such.method")
    assert info.value.code == "method_not_found"


def test_a_shared_client_serialises_threads(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.handlers["echo"] = lambda conn, request: request.params

    def work(n: int) -> None:
        for i in range(20):
            assert client.call("echo", {"n": n, "i": i}) == {"n": n, "i": i}

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(daemon.calls("echo")) == 80


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_catalogue_code_becomes_a_daemon_error(client: DataeraiClient, daemon: FakeDaemon, code: str) -> None:
    def fail(conn: FakeConnection, request: Request) -> Any:
        raise Fail(code, f"it went {code}", job_id="job_7", extra=1)

    daemon.handlers["x.fail"] = fail
    with pytest.raises(DaemonError) as info:
        client.call("x.fail")
    error = info.value
    assert (error.code, error.message) == (code, f"it went {code}")
    assert error.data == {"job_id": "job_7", "extra": 1}
    assert str(error) == f"{code}: it went {code}"
    if code == "timeout":
        assert isinstance(error, DaemonTimeoutError) and error.transfer_id == "job_7"
    else:
        assert type(error) is DaemonError


def test_unknown_codes_pass_through(client: DataeraiClient, daemon: FakeDaemon) -> None:
    def fail(conn: FakeConnection, request: Request) -> Any:
        raise Fail("brand_new_code", "from the future")

    daemon.handlers["x"] = fail
    with pytest.raises(DaemonError) as info:
        client.call("x")
    assert info.value.code == "brand_new_code"


def test_request_timeout_then_the_late_answer_is_dropped(client: DataeraiClient, daemon: FakeDaemon) -> None:
    """Answers are matched by id: the late answer to a timed-out request is not taken for the next one."""
    second_arrived = threading.Event()
    stale_sent = threading.Event()

    def slow(conn: FakeConnection, request: Request) -> Any:
        def later() -> None:
            second_arrived.wait(60)  # a cap for a broken test only: the second request comes at once
            conn.respond(request.id, "stale answer to the first request")
            stale_sent.set()

        threading.Thread(target=later, daemon=True).start()
        return NO_REPLY

    def fast(conn: FakeConnection, request: Request) -> Any:
        second_arrived.set()
        assert stale_sent.wait(60)  # the stale answer goes out first
        return "fresh"

    daemon.handlers["slow"] = slow
    daemon.handlers["fast"] = fast
    with pytest.raises(DaemonTimeoutError) as info:
        client.call("slow", timeout=0.2)
    assert info.value.transfer_id is None and info.value.code == "timeout"
    assert client.call("fast") == "fresh"
    assert client.call("daemon.ping")["version"] == "0.1.0"


def test_request_timeout_from_constructor(daemon: FakeDaemon) -> None:
    daemon.handlers["never"] = lambda conn, request: NO_REPLY
    with DataeraiClient(socket_path=daemon.socket_path, auto_start=False, request_timeout_s=0.1) as client:
        started = time.monotonic()
        with pytest.raises(DaemonTimeoutError):
            client.call("never")
        assert time.monotonic() - started < 2


def test_disconnect_is_connection_error_and_the_next_call_reconnects(
    client: DataeraiClient, daemon: FakeDaemon
) -> None:
    def hang_up(conn: FakeConnection, request: Request) -> Any:
        conn.close()
        return NO_REPLY

    daemon.handlers["hang.up"] = hang_up
    with pytest.raises(dataerai.ConnectionError) as info:
        client.call("hang.up")
    assert isinstance(info.value, builtins.ConnectionError)
    assert isinstance(info.value, DaemonConnectionError)
    assert not isinstance(info.value, DaemonError)
    assert client.call("daemon.ping")["version"] == "0.1.0"
    assert len(daemon.connections) == 2


def test_disconnect_during_a_transfer(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(close=True)
    path = tmp_path / "f"
    path.write_bytes(b"1")
    with pytest.raises(builtins.ConnectionError):
        client.upload(path, title="t", owner_type="project", owner_id="p")


def test_daemon_gone_entirely(daemon: FakeDaemon) -> None:
    client = DataeraiClient(socket_path=daemon.socket_path, auto_start=False).connect()
    daemon.stop()
    with pytest.raises(DaemonConnectionError):
        client.call("daemon.ping")
    with pytest.raises(DaemonConnectionError, match="not running"):
        client.call("daemon.ping")


def test_garbage_from_the_daemon_is_a_connection_error(client: DataeraiClient, daemon: FakeDaemon) -> None:
    def garbage(conn: FakeConnection, request: Request) -> Any:
        conn.send(b"this is not json\n")
        return NO_REPLY

    daemon.handlers["garbage"] = garbage
    with pytest.raises(DaemonConnectionError, match="not JSON-RPC"):
        client.call("garbage")


def test_an_oversized_request_is_refused_before_sending(client: DataeraiClient, daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonError) as info:
        client.call("asset.update", {"asset_id": "a", "metadata": {"blob": "x" * (1 << 20)}})
    assert info.value.code == "frame_too_large"
    assert daemon.calls("asset.update") == []
    assert client.call("daemon.ping")


def test_parameters_that_are_not_json(client: DataeraiClient, daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonError, match="JSON") as info:
        client.set_metadata("a", metadata={"when": datetime.now()})
    assert info.value.code == "invalid_argument"
    assert client.call("daemon.ping")


def test_an_id_less_error_answers_the_request_in_flight(client: DataeraiClient, daemon: FakeDaemon) -> None:
    def framing_error(conn: FakeConnection, request: Request) -> Any:
        conn.fail(None, "frame_too_large", "frame longer than 1048576 bytes")
        return NO_REPLY

    daemon.handlers["big"] = framing_error
    with pytest.raises(DaemonError) as info:
        client.call("big")
    assert info.value.code == "frame_too_large"


def test_non_utf8_file_names_travel(client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.csv"
    with open(raw, "wb") as f:
        f.write(b"1")
    name = os.fsdecode(raw)  # holds a lone surrogate
    client.upload(name, title="t", owner_type="project", owner_id="p", wait=False)
    assert daemon.calls("upload.start")[0].params["local_path"] == name


# --- events and buffering -------------------------------------------------------


def test_events_stream(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    job = client.download("ast_1", "/tmp/x", wait=False)
    with client.events(since=0, jobs=[job.job_id]) as stream:
        assert daemon.calls("events.subscribe")[0].params == {"since": 0, "jobs": [job.job_id]}
        assert stream.last_event_id == 1
        first = next(stream)
        assert (first.type, first.job_id, first.state) == ("job.state", job.job_id, "queued")
        assert first.job is not None and first.job.kind == "download"
        assert first.time == datetime(2026, 11, 25, 14, tzinfo=timezone.utc)
        running = next(stream)  # the fake starts a job once someone follows it
        assert (running.type, running.previous_state, running.state) == ("job.state", "queued", "running")
        daemon.broadcast({"type": "job.progress", "job_id": job.job_id, "bytes_done": 5, "bytes_total": 10})
        progress = next(stream)
        assert progress.progress is not None and progress.progress.percent == 50.0
        daemon.broadcast({"type": "gap", "missed_from": 3, "missed_to": 9})
        gap = next(stream)
        assert (gap.type, gap.missed_from, gap.missed_to) == ("gap", 3, 9)
        with pytest.raises(RuntimeError, match="events"):
            client.wait(job.job_id)
        with pytest.raises(RuntimeError, match="already open"):
            client.events()
    assert stream.closed
    assert daemon.calls("events.unsubscribe")
    assert list(stream) == []


def test_notifications_arriving_during_a_request_are_kept(client: DataeraiClient, daemon: FakeDaemon) -> None:
    stream = client.events()
    assert daemon.calls("events.subscribe")[0].params == {}

    def chatty(conn: FakeConnection, request: Request) -> Any:
        for n in range(3):
            daemon.broadcast({"type": "job.progress", "job_id": "job_x", "bytes_done": n})
        return "answer"

    daemon.handlers["chatty"] = chatty
    assert client.call("chatty") == "answer"
    assert [next(stream).progress.bytes_done for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    stream.close()
    assert client.call("daemon.ping")


def test_buffer_overflow_turns_into_a_gap(daemon: FakeDaemon) -> None:
    from dataerai import _connection

    client = DataeraiClient(socket_path=daemon.socket_path, auto_start=False)
    stream = client.events()
    connection = client._connection
    assert connection is not None
    connection._max_notifications = 5

    def flood(conn: FakeConnection, request: Request) -> Any:
        for n in range(12):
            daemon.broadcast({"type": "job.progress", "job_id": "j", "bytes_done": n})
        return "ok"

    daemon.handlers["flood"] = flood
    first_id = daemon.broadcast({"type": "noop"})["id"]
    assert next(stream).type == "noop"
    assert client.call("flood") == "ok"
    gap = next(stream)
    assert (gap.type, gap.missed_from, gap.missed_to, gap.raw["source"]) == ("gap", first_id + 1, first_id + 7, "sdk")
    assert [next(stream).progress.bytes_done for _ in range(5)] == [7, 8, 9, 10, 11]  # type: ignore[union-attr]
    assert _connection.MAX_BUFFERED_NOTIFICATIONS >= 1024
    client.close()
    with pytest.raises(StopIteration):
        next(stream)
