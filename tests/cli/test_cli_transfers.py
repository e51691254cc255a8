"""Commands that go through the SDK to a daemon: here a scripted one (``fake_daemon``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dataeraid.cli import cli

MIB = 1 << 20


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli, list(args), prog_name="dataerai")


def script_job(fake_daemon: Any, wire: Any, start: str, final: dict[str, Any]) -> None:
    """``start`` queues the job; waiting sees it running, one progress event, then ``final``."""
    job_id = final["job_id"]
    fake_daemon.on(start, lambda _p: wire.job(job_id, kind=final["kind"]))
    fake_daemon.on("job.get", lambda _p: wire.job(job_id, kind=final["kind"], state="running"))
    fake_daemon.on(
        "events.subscribe",
        lambda _p: wire.reply(
            {"last_event_id": 1}, [wire.progress_event(2, job_id, 5, 11), wire.state_event(3, final)]
        ),
    )


def params_of(fake_daemon: Any, method: str) -> dict[str, Any]:
    (params,) = [r.params for r in fake_daemon.requests if r.method == method]
    return _sans_job_id(params)


def _sans_job_id(params: dict[str, Any]) -> dict[str, Any]:
    """Start parameters without the job id the SDK chose (checked for its shape), when there is one."""
    rest = dict(params)
    if "job_id" in rest and method_starts(rest):
        assert re.fullmatch(r"job_[0-9a-f]{24}", rest.pop("job_id"))
    return rest


def method_starts(params: dict[str, Any]) -> bool:
    return "local_path" in params or "dest_dir" in params


# --- upload -----------------------------------------------------------------------


def test_upload_waits_and_prints_the_ids(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    final = wire.job(kind="upload", state="completed", bytes_done=11, asset_id="ast_1", content_id="cnt_1")
    script_job(fake_daemon, wire, "upload.start", final)

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--tag", "raw", "--tag", "b7")

    assert result.exit_code == 0, result.output
    assert result.stdout == "asset_id: ast_1\ncontent_id: cnt_1\n"
    assert params_of(fake_daemon, "upload.start") == {
        "local_path": str(data_file.resolve()),
        "title": "data.bin",
        "owner_type": "project",
        "owner_id": "prj_1",
        "tags": ["raw", "b7"],
        "priority": 0,
        "client": {"pid": os.getpid()},
    }


def test_upload_json(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    final = wire.job(
        kind="upload", state="completed", bytes_done=11, asset_id="ast_1", content_id="cnt_1", sha256="ab" * 32
    )
    script_job(fake_daemon, wire, "upload.start", final)

    options = ["--title", "Run 42", "--description", "first", "--chunk-size-mb", "8", "--json"]
    result = invoke(runner, "upload", str(data_file), "--project", "prj_1", *options)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "job_id": "job_1",
        "asset_id": "ast_1",
        "content_id": "cnt_1",
        "size": 11,
        "sha256": "ab" * 32,
        "deduplicated": False,
    }
    params = params_of(fake_daemon, "upload.start")
    assert (params["title"], params["description"], params["chunk_size"]) == ("Run 42", "first", 8 * MIB)


def test_upload_says_when_it_was_deduplicated(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    final = wire.job(kind="upload", state="completed", bytes_done=11, asset_id="ast_1", content_id="cnt_1",
                     deduplicated=True)
    script_job(fake_daemon, wire, "upload.start", final)
    human = invoke(runner, "upload", str(data_file), "--project", "prj_1")
    assert human.exit_code == 0, human.output
    assert "asset_id: ast_1" in human.stdout and "deduplicated:" in human.stdout
    as_json = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--json")
    assert json.loads(as_json.stdout)["deduplicated"] is True


def test_upload_no_wait(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    fake_daemon.on("upload.start", lambda _p: wire.job("job_7"))

    human = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--no-wait")
    as_json = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--no-wait", "--json")

    assert human.exit_code == 0, human.output
    assert human.stdout == "job_7\n"
    job = json.loads(as_json.stdout)
    assert job["job_id"] == "job_7"
    assert job["state"] == "queued"
    assert job["created_at"] == "2026-11-25T14:00:00Z"
    assert "raw" not in job
    assert "job.get" not in fake_daemon.methods()


def test_upload_failed_job(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    final = wire.job(
        kind="upload",
        state="failed",
        error={"code": "source_changed", "message": "data.bin changed after it was queued"},
    )
    script_job(fake_daemon, wire, "upload.start", final)

    human = invoke(runner, "upload", str(data_file), "--project", "prj_1")
    as_json = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--json")

    assert human.exit_code == 1
    assert human.stdout == ""
    assert human.stderr == "error[source_changed]: data.bin changed after it was queued\n"
    assert as_json.exit_code == 1
    assert as_json.stdout == ""
    assert json.loads(as_json.stderr) == {
        "error": {"code": "source_changed", "message": "data.bin changed after it was queued", "job_id": "job_1"}
    }


def test_upload_refused_by_the_daemon(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    fake_daemon.on("upload.start", lambda _p: wire.error("not_found", "no project prj_x"))

    result = invoke(runner, "upload", str(data_file), "--project", "prj_x")

    assert result.exit_code == 1
    assert result.stderr == "error[not_found]: no project prj_x\n"


def test_upload_of_a_new_version_needs_no_owner_or_title(
    runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path
) -> None:
    final = wire.job(kind="upload", state="completed", bytes_done=11, asset_id="ast_1", content_id="cnt_2")
    script_job(fake_daemon, wire, "upload.start", final)

    result = invoke(runner, "upload", str(data_file), "--asset", "ast_1", "--path", "watch/data.bin")

    assert result.exit_code == 0, result.output
    assert result.stdout == "asset_id: ast_1\ncontent_id: cnt_2\n"
    assert params_of(fake_daemon, "upload.start") == {
        "local_path": str(data_file.resolve()),
        "asset_id": "ast_1",
        "path": "watch/data.bin",
        "priority": 0,
        "client": {"pid": os.getpid()},
    }


def test_upload_of_a_new_version_passes_on_its_owner(runner: CliRunner, fake_daemon: Any, wire: Any,
                                                     data_file: Path) -> None:
    fake_daemon.on("upload.start", lambda _p: wire.job("job_7"))

    result = invoke(runner, "upload", str(data_file), "--asset", "ast_1", "--collection", "col_1", "--no-wait")

    assert result.exit_code == 0, result.output
    params = params_of(fake_daemon, "upload.start")
    assert (params["asset_id"], params["owner_type"], params["owner_id"]) == ("ast_1", "collection", "col_1")
    assert "title" not in params


def test_upload_of_a_new_asset_sends_its_path(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    fake_daemon.on("upload.start", lambda _p: wire.job("job_7"))

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--path", "raw/d.bin", "--no-wait")

    assert result.exit_code == 0, result.output
    params = params_of(fake_daemon, "upload.start")
    assert (params["title"], params["path"]) == ("data.bin", "raw/d.bin")
    assert "asset_id" not in params


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "give --project or --collection (or --asset for a new version)"),
        (["--project", "prj_1", "--collection", "col_1"], "give one of --project and --collection, not both"),
        (["--asset", "ast_1", "--title", "T"], "--title cannot go with --asset"),
        (["--asset", "ast_1", "--tag", "a", "--description", "d"], "--tag, --description cannot go with --asset"),
    ],
)
def test_upload_refuses_a_target_it_cannot_mean(
    runner: CliRunner, fake_daemon: Any, data_file: Path, options: list[str], message: str
) -> None:
    result = invoke(runner, "upload", str(data_file), *options)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error[invalid_argument]: {message}")
    assert "upload.start" not in fake_daemon.methods()


def test_upload_of_a_missing_file_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "upload", str(tmp_path / "nope"), "--project", "prj_1")

    assert result.exit_code == 2


# --- waiting ------------------------------------------------------------------------


def test_wait_timeout_names_the_job(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("job.get", lambda _p: wire.job("job_9", state="running"))
    fake_daemon.on("events.subscribe", lambda _p: {"last_event_id": 0})  # and then nothing happens

    human = invoke(runner, "jobs", "wait", "job_9", "--timeout", "0.2")
    as_json = invoke(runner, "jobs", "wait", "job_9", "--timeout", "0.2", "--json")

    assert human.exit_code == 4
    assert human.stderr.startswith("error[timeout]: job job_9 did not finish in time")
    assert "dataerai jobs wait job_9" in human.stderr
    assert as_json.exit_code == 4
    assert as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["job_id"] == "job_9"


def test_upload_timeout_names_the_job(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    fake_daemon.on("upload.start", lambda _p: wire.job("job_3"))
    fake_daemon.on("job.get", lambda _p: wire.job("job_3", state="running"))
    fake_daemon.on("events.subscribe", lambda _p: {"last_event_id": 0})

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--timeout", "0.2")

    assert result.exit_code == 4
    assert "dataerai jobs wait job_3" in result.stderr


def test_jobs_wait_on_a_finished_job(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on(
        "job.get",
        lambda _p: wire.job(
            "job_2", kind="download", state="completed", asset_id="ast_1", files=[{"local_path": "/d/a.h5", "size": 4}]
        ),
    )

    human = invoke(runner, "jobs", "wait", "job_2")
    as_json = invoke(runner, "jobs", "wait", "job_2", "--json")

    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert "job_id: job_2" in lines
    assert "state: completed" in lines
    assert "file: /d/a.h5 (4 bytes)" in lines
    assert not any(line.startswith(("dest_dir:", "error:", "raw:")) for line in lines)
    assert json.loads(as_json.stdout)["files"] == [{"local_path": "/d/a.h5", "size": 4}]


def test_jobs_wait_on_a_cancelled_job(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("job.get", lambda _p: wire.job("job_2", state="cancelled"))

    result = invoke(runner, "jobs", "wait", "job_2", "--json")

    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "cancelled"
    assert json.loads(result.stderr)["error"]["code"] == "cancelled"


def test_jobs_show(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on(
        "job.get",
        lambda p: wire.job(p["job_id"], state="failed", error={"code": "io_error", "message": "cannot read"}),
    )

    human = invoke(runner, "jobs", "show", "job_5")
    as_json = invoke(runner, "jobs", "show", "job_5", "--json")

    assert human.exit_code == 0
    assert "error: [io_error] cannot read" in human.stdout.splitlines()
    job = json.loads(as_json.stdout)
    assert job["job_id"] == "job_5"
    assert job["error"] == {"code": "io_error", "message": "cannot read", "data": {}}


def test_jobs_show_unknown(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("job.get", lambda p: wire.error("not_found", f"no job {p['job_id']}"))

    result = invoke(runner, "jobs", "show", "job_x")

    assert result.exit_code == 1
    assert result.stderr == "error[not_found]: no job job_x\n"


# --- download -----------------------------------------------------------------------


def test_download(runner: CliRunner, fake_daemon: Any, wire: Any, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    files = [{"local_path": str(tmp_path / "run42.h5"), "size": 11}]
    final = wire.job(kind="download", state="completed", asset_id="ast_1", content_id="cnt_1", files=files)
    script_job(fake_daemon, wire, "download.start", final)
    monkeypatch.chdir(tmp_path)

    human = invoke(runner, "download", "ast_1")
    as_json = invoke(runner, "download", "ast_1", "--dest", "out", "--overwrite", "--content-id", "cnt_0", "--json")

    assert human.exit_code == 0, human.output
    assert human.stdout == f"{tmp_path / 'run42.h5'} (11 bytes)\n"
    assert json.loads(as_json.stdout) == {"job_id": "job_1", "asset_id": "ast_1", "content_id": "cnt_1", "files": files}
    first, second = [_sans_job_id(r.params) for r in fake_daemon.requests if r.method == "download.start"]
    assert first == {"asset_id": "ast_1", "dest_dir": str(tmp_path), "overwrite": False, "priority": 0,
                     "client": {"pid": os.getpid()}}
    assert second == {
        "asset_id": "ast_1",
        "dest_dir": str(tmp_path / "out"),
        "overwrite": True,
        "content_id": "cnt_0",
        "priority": 0,
        "client": {"pid": os.getpid()},
    }


# --- project and daemon -------------------------------------------------------------


def test_project_create(runner: CliRunner, fake_daemon: Any) -> None:
    project = {
        "project_id": "prj_1",
        "name": "Beamline 7",
        "description": "raw",
        "root_collection_id": "col_1",
        "allocation_bytes": 1 << 40,
        "used_bytes": 0,
        "role": "owner",
        "created_at": "2026-11-25T14:00:00Z",
    }
    fake_daemon.on("project.create", lambda _p: project)

    human = invoke(runner, "project", "create", "Beamline 7", "--description", "raw")
    as_json = invoke(runner, "project", "create", "Beamline 7", "--json")

    assert human.exit_code == 0, human.output
    assert human.stdout == "prj_1\n"
    assert json.loads(as_json.stdout) == project
    assert [r.params for r in fake_daemon.requests] == [
        {"name": "Beamline 7", "description": "raw"},
        {"name": "Beamline 7", "description": ""},
    ]


def test_daemon_status(runner: CliRunner, fake_daemon: Any) -> None:
    status = {"version": "0.1.0", "pid": 4242, "jobs": {"running": 1, "queued": 2}, "last_event_id": 17}
    fake_daemon.on("daemon.status", lambda _p: status)

    human = invoke(runner, "daemon", "status")
    as_json = invoke(runner, "daemon", "status", "--json")

    assert human.exit_code == 0, human.output
    assert human.stdout.splitlines() == [
        f"dataerai daemon 0.1.0, pid 4242, socket {fake_daemon.path}",
        "jobs: running 1, queued 2",
        "last event id: 17",
    ]
    assert json.loads(as_json.stdout) == status


def test_socket_option(runner: CliRunner, fake_daemon: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_daemon.on("daemon.status", lambda _p: {"version": "0.1.0", "pid": 1})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "elsewhere"))  # the default path is wrong now

    by_option = invoke(runner, "--socket", str(fake_daemon.path), "daemon", "status", "--json")
    monkeypatch.setenv("DATAERAI_SOCKET", str(fake_daemon.path))
    by_env = invoke(runner, "daemon", "status", "--json")

    assert by_option.exit_code == 0, by_option.output
    assert by_env.exit_code == 0, by_env.output
    assert fake_daemon.methods() == ["daemon.status", "daemon.status"]
