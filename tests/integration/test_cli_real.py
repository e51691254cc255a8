"""The `dataerai` CLI against a real daemon and server: --json outputs and error exits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stack import Stack, make_file


def test_cli_project_upload_download_json(stack: Stack, tmp_path: Path) -> None:
    project = json.loads(stack.cli("project", "create", "CLI project", "--json").stdout)
    assert project["project_id"].startswith("prj_")
    source = make_file(tmp_path / "cli.bin", 3 * 1024 * 1024 + 5)
    up = json.loads(stack.cli("upload", str(source), "--project", project["project_id"], "--title", "T",
                              "--tag", "a", "--tag", "b", "--chunk-size-mb", "1", "--json").stdout)
    assert up["asset_id"] and up["content_id"] and up["job_id"]
    shown = json.loads(stack.cli("jobs", "show", up["job_id"], "--json").stdout)
    assert shown["state"] == "completed"
    assert (shown["asset_id"], shown["content_id"]) == (up["asset_id"], up["content_id"])
    down = json.loads(stack.cli("download", up["asset_id"], "--dest", str(tmp_path / "back"), "--json").stdout)
    local = Path(down["files"][0]["local_path"])
    assert hashlib.sha256(local.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    # Downloading again onto the same file is a no-op; a different file there is refused.
    again = stack.cli("download", up["asset_id"], "--dest", str(tmp_path / "back"), "--json")
    assert json.loads(again.stdout)["files"][0]["size"] == source.stat().st_size
    local.write_bytes(b"something else")
    clash = stack.cli("download", up["asset_id"], "--dest", str(tmp_path / "back"), "--json", check=False)
    assert clash.returncode == 1
    assert json.loads(clash.stderr)["error"]["code"] == "destination_exists"
    assert local.read_bytes() == b"something else"


def test_cli_no_wait_then_wait(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "nw.bin", 1024 * 1024)
    job = json.loads(stack.cli("upload", str(source), "--project", stack.project_id, "--no-wait", "--json").stdout)
    assert job["job_id"].startswith("job_")
    waited = json.loads(stack.cli("jobs", "wait", job["job_id"], "--json").stdout)
    assert waited["state"] == "completed" and waited["asset_id"]


def test_cli_errors_have_codes_and_nonzero_exits(stack: Stack, tmp_path: Path) -> None:
    missing = stack.cli("upload", str(tmp_path / "nope.bin"), "--project", stack.project_id, check=False)
    assert missing.returncode == 2  # a usage error, found before the daemon is asked
    assert "does not exist" in missing.stderr
    unknown = stack.cli("download", "ast_doesnotexist", "--dest", str(tmp_path), "--json", check=False)
    assert unknown.returncode == 1
    assert json.loads(unknown.stderr)["error"]["code"] == "not_found"
    bad_project = stack.cli("upload", str(make_file(tmp_path / "x.bin", 10)), "--project", "prj_000000nope", "--json",
                            check=False)
    assert bad_project.returncode == 1
    assert json.loads(bad_project.stderr)["error"]["code"] in ("not_found", "permission_denied")


def test_auth_status_and_logout(stack: Stack) -> None:
    status = json.loads(stack.cli("auth", "status", "--json").stdout)
    assert status["user_email"] == "ada@example.org"
    assert stack.token and stack.token not in json.dumps(status)
    stack.cli("auth", "logout")
    after = stack.cli("auth", "status", "--json", check=False)
    assert after.returncode == 1
    assert json.loads(after.stderr)["error"]["code"] == "auth_required"
