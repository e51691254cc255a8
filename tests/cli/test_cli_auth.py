"""``dataerai auth``: login checks the token against a fake repository; nothing touches the real home."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dataeraid.cli import cli

TOKEN = "dtk_" + "A" * 43


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    return runner.invoke(cli, list(args), input=input, prog_name="dataerai")


def test_login_with_token_on_stdin_writes_credentials_0600(runner: CliRunner, me_server: Any,
                                                           credentials_file: Path) -> None:
    result = invoke(runner, "auth", "login", "--server", me_server.url + "/", "--token-stdin", input=TOKEN + "\n")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"Logged in to {me_server.url} as ada@example.org (token expires 2027-01-01T00:00:00Z)\n"
    assert TOKEN not in result.output
    assert me_server.paths == ["/api/v1/me"]
    assert me_server.authorizations == [f"Bearer {TOKEN}"]
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials_file.parent.stat().st_mode) == 0o700
    assert json.loads(credentials_file.read_text()) == {"server_url": me_server.url, "token": TOKEN}


def test_login_json(runner: CliRunner, me_server: Any) -> None:
    me_server.body["token_expires_at"] = None
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", "--json", input=TOKEN)

    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["user_email"] == "ada@example.org"
    assert out["user_id"] == "usr_1"
    assert out["scopes"] == ["read", "write"]
    assert out["expires_at"] is None
    assert out["daemon_reloaded"] is False
    assert TOKEN not in result.output


def test_login_at_the_hidden_prompt(runner: CliRunner, me_server: Any, credentials_file: Path) -> None:
    result = invoke(runner, "auth", "login", "--server", me_server.url, input=TOKEN + "\n")

    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    assert "(token expires 2027-01-01T00:00:00Z)" in result.stdout
    assert json.loads(credentials_file.read_text())["token"] == TOKEN


def test_login_refused_with_401(runner: CliRunner, me_server: Any, credentials_file: Path) -> None:
    me_server.status = 401
    me_server.body = {"error": {"code": "auth_required", "message": "unknown token"}}
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", input=TOKEN)

    assert result.exit_code == 1
    assert result.stderr == "error[auth_required]: unknown token\n"
    assert result.stdout == ""
    assert TOKEN not in result.output
    assert not credentials_file.exists()


def test_login_expired_token_as_json(runner: CliRunner, me_server: Any, credentials_file: Path) -> None:
    me_server.status = 401
    me_server.body = {"error": {"code": "auth_expired", "message": "the token expired"}}
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", "--json", input=TOKEN)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert json.loads(result.stderr) == {"error": {"code": "auth_expired", "message": "the token expired"}}
    assert not credentials_file.exists()


def test_login_401_without_an_error_body_is_auth_required(runner: CliRunner, me_server: Any) -> None:
    me_server.status = 401
    me_server.body = "nope"
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", input=TOKEN)

    assert result.exit_code == 1
    assert result.stderr.startswith("error[auth_required]: ")


def test_login_server_unreachable(runner: CliRunner, closed_port_url: str, credentials_file: Path) -> None:
    result = invoke(runner, "auth", "login", "--server", closed_port_url, "--token-stdin", input=TOKEN)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error[unavailable]: cannot reach {closed_port_url}")
    assert TOKEN not in result.output
    assert not credentials_file.exists()


def test_login_needs_a_token(runner: CliRunner, me_server: Any) -> None:
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", input="\n")

    assert result.exit_code == 1
    assert result.stderr == "error[invalid_argument]: no token was given\n"
    assert me_server.paths == []


def test_login_needs_an_http_url(runner: CliRunner) -> None:
    result = invoke(runner, "auth", "login", "--server", "ftp://repo.example.org", "--token-stdin", input=TOKEN)

    assert result.exit_code == 2
    assert "http:// or https://" in result.stderr


def test_login_warns_about_plain_http_to_another_host(runner: CliRunner) -> None:
    # The warning comes before the token is read; without a token nothing is sent.
    result = invoke(runner, "auth", "login", "--server", "http://192.0.2.1:9", "--token-stdin", input="")

    assert result.stderr.splitlines() == [
        "warning: http://192.0.2.1:9 is not https; the token travels unencrypted",
        "error[invalid_argument]: no token was given",
    ]


def test_login_tells_a_running_daemon(runner: CliRunner, me_server: Any, fake_daemon: Any) -> None:
    fake_daemon.on("auth.reload", lambda _p: {"server_url": me_server.url, "user_email": "ada@example.org"})
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", "--json", input=TOKEN)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["daemon_reloaded"] is True
    assert fake_daemon.methods() == ["auth.reload"]
    assert all(TOKEN not in json.dumps(r.params) for r in fake_daemon.requests)


def test_login_ignores_a_stale_socket(runner: CliRunner, me_server: Any, isolated_env: Path) -> None:
    (isolated_env / "run" / "dataerai-transfer.sock").touch()  # nobody listens there
    result = invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", input=TOKEN)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_logout_removes_the_file_and_tells_the_daemon(
    runner: CliRunner, me_server: Any, fake_daemon: Any, wire: Any, credentials_file: Path
) -> None:
    fake_daemon.on("auth.reload", lambda _p: {})
    assert invoke(runner, "auth", "login", "--server", me_server.url, "--token-stdin", input=TOKEN).exit_code == 0
    # After a logout the daemon re-reads the file, finds none and says so: that is a success here.
    fake_daemon.on("auth.reload", lambda _p: wire.error("auth_required", "not logged in"))

    result = invoke(runner, "auth", "logout", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "logged_out": True,
        "credentials_file": str(credentials_file),
        "daemon_reloaded": True,
    }
    assert not credentials_file.exists()
    assert fake_daemon.methods() == ["auth.reload", "auth.reload"]


def test_logout_when_not_logged_in(runner: CliRunner, credentials_file: Path) -> None:
    result = invoke(runner, "auth", "logout")

    assert result.exit_code == 0
    assert result.stdout == f"Not logged in: there is no {credentials_file}\n"


def test_status_asks_the_daemon(runner: CliRunner, fake_daemon: Any) -> None:
    fake_daemon.on(
        "auth.status",
        lambda _p: {
            "server_url": "https://repo.example.org",
            "user_id": "usr_1",
            "user_email": "ada@example.org",
            "scopes": ["read", "write"],
            "expires_at": "2027-01-01T00:00:00Z",
        },
    )

    human = invoke(runner, "auth", "status")
    as_json = invoke(runner, "auth", "status", "--json")

    assert human.exit_code == 0, human.output
    assert human.stdout.splitlines() == [
        "Logged in to https://repo.example.org as ada@example.org (token expires 2027-01-01T00:00:00Z)",
        "user: usr_1",
        "scopes: read, write",
    ]
    assert json.loads(as_json.stdout) == {
        "user_email": "ada@example.org",
        "expires_at": "2027-01-01T00:00:00Z",
        "server_url": "https://repo.example.org",
        "user_id": "usr_1",
        "scopes": ["read", "write"],
    }


def test_status_when_not_logged_in(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("auth.status", lambda _p: wire.error("auth_required", "not logged in: run `dataerai auth login`"))
    result = invoke(runner, "auth", "status")

    assert result.exit_code == 1
    assert result.stderr == "error[auth_required]: not logged in: run `dataerai auth login`\n"
