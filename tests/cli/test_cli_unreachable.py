"""When no daemon listens and none can be started: exit 3 and a message that says what to do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dataeraid.cli import cli

NEEDS_A_DAEMON = [
    ["auth", "status"],
    ["daemon", "status"],
    ["project", "create", "Beamline 7"],
    ["download", "ast_1"],
    ["jobs", "show", "job_1"],
    ["jobs", "wait", "job_1"],
]


@pytest.fixture
def no_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the running program nor anything on PATH is a `dataerai` to start."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "argv", ["pytest"])


@pytest.mark.parametrize("args", NEEDS_A_DAEMON, ids=" ".join)
def test_no_auto_start(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    socket = tmp_path / "nobody.sock"
    monkeypatch.setenv("DATAERAI_SOCKET", str(socket))

    result = runner.invoke(cli, ["--no-auto-start", *args], prog_name="dataerai")

    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error[unavailable]: the dataerai daemon is not running at {socket}; ")
    assert "dataerai daemon run" in result.stderr
    if args != ["daemon", "status"]:  # which never starts one anyway
        assert result.stderr.endswith(" (--no-auto-start was given)\n")


@pytest.mark.usefixtures("no_executable")
def test_no_executable_to_start(runner: CliRunner, tmp_path: Path) -> None:
    socket = tmp_path / "nobody.sock"

    result = runner.invoke(cli, ["--socket", str(socket), "auth", "status"], prog_name="dataerai")

    assert result.exit_code == 3, result.output
    assert str(socket) in result.stderr
    assert "no `dataerai` executable was found to start it" in result.stderr


@pytest.mark.usefixtures("no_executable")
def test_upload_without_a_daemon(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"hello world")

    result = runner.invoke(cli, ["upload", str(data), "--project", "prj_1"], prog_name="dataerai")

    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error[unavailable]: ")


@pytest.mark.usefixtures("no_executable")
def test_json_error_on_stderr(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["jobs", "show", "job_1", "--json"], prog_name="dataerai")

    assert result.exit_code == 3
    assert result.stdout == ""
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "unavailable"
    assert "not running" in error["message"]
