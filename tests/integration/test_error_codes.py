"""One test per error code the daemon produces over RPC, against real processes.

Each asserts the stable code, its JSON-RPC integer from the one catalogue, and
that the message says what to do or what was wrong. Codes that need features
not built yet (or a fault a test cannot cause on this machine) are listed in
``NOT_PRODUCIBLE_HERE`` with the reason, so the list is checked to be complete.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError, DaemonTimeoutError
from dataerai.protocol import ERRORS
from stack import Stack, make_file, wait_for

from dataeraid import credentials

MiB = 1024 * 1024

#: Codes this file cannot make the daemon produce, and why.
NOT_PRODUCIBLE_HERE = {
    "internal": "a bug; there is none to trigger on purpose",
    "checksum_mismatch": "needs a server that corrupts bytes: tests/integration/test_hostile_server.py",
    "rate_limited": "the reference server never answers 429; the daemon retries it as waiting_for_network",
    "disk_full": "needs a full file system",
    "unsafe_path": "needs a server that sends hostile paths: tests/integration/test_hostile_server.py",
    "systemd_unavailable": "the command line's own (`dataerai service`): tests/cli/test_cli_service.py",
    "service_failed": "the command line's own (`dataerai service install --now`): tests/cli/test_cli_service.py",
}
def raw_exchange(stack: Stack, data: bytes) -> dict[str, Any]:
    """Send bytes on a fresh connection and read one answer line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(stack.socket_path))
        sock.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection without an answer"
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def check_rpc_error(answer: dict[str, Any], code: str) -> str:
    error = answer["error"]
    assert error["data"]["code"] == code
    assert error["code"] == ERRORS[code].rpc_code
    assert error["message"]
    return str(error["message"])


def expect(code: str, call: Any) -> DaemonError:
    with pytest.raises(DaemonError) as err:
        call()
    assert err.value.code == code, err.value
    assert len(err.value.message) > 10
    return err.value


def test_the_list_of_codes_is_complete() -> None:
    import sys

    module = sys.modules[__name__]
    tested = {name.removeprefix("test_code_") for name in dir(module) if name.startswith("test_code_")}
    assert tested | set(NOT_PRODUCIBLE_HERE) == set(ERRORS), set(ERRORS) - tested - set(NOT_PRODUCIBLE_HERE)
    assert not tested & set(NOT_PRODUCIBLE_HERE)


def test_code_parse_error(stack: Stack) -> None:
    check_rpc_error(raw_exchange(stack, b"{not json\n"), "parse_error")


def test_code_invalid_request(stack: Stack) -> None:
    check_rpc_error(raw_exchange(stack, b'{"jsonrpc": "2.0", "id": 1}\n'), "invalid_request")


def test_code_method_not_found(stack: Stack) -> None:
    message = check_rpc_error(raw_exchange(stack, b'{"jsonrpc": "2.0", "id": 1, "method": "job.frobnicate"}\n'),
                              "method_not_found")
    assert "job.frobnicate" in message


def test_code_frame_too_large(stack: Stack) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "daemon.ping", "params": {"x": "y" * (1 << 20)}})
    check_rpc_error(raw_exchange(stack, line.encode() + b"\n"), "frame_too_large")


def test_code_invalid_argument(stack: Stack) -> None:
    with stack.client() as client:
        params = {"job_id": "job_" + "0" * 24, "priority": "hi"}
        err = expect("invalid_argument", lambda: client.call("job.set_priority", params))
        assert "priority" in err.message
        err = expect("invalid_argument", lambda: client.call("events.subscribe", {"types": ["job.nope"]}))
        assert "job.state" in err.message
        expect("invalid_argument", lambda: client.call("download.start", {"asset_id": "a", "dest_dir": "rel"}))


NO_JOB = "job_" + "0" * 24


def test_code_not_found(stack: Stack) -> None:
    with stack.client() as client:
        for call in (client.get_job, client.cancel, client.pause, client.resume, client.retry):
            assert NO_JOB in expect("not_found", lambda c=call: c(NO_JOB)).message
        expect("not_found", lambda: client.get_metadata("ast_00000000nope"))


def test_code_conflict(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        result = client.upload(make_file(tmp_path / "c.bin", 10), title="c", owner_type="project",
                               owner_id=stack.project_id)
        err = expect("conflict", lambda: client.resume(result.transfer_id))
        assert "completed" in err.message
        expect("conflict", lambda: client.cancel(result.transfer_id))
        expect("conflict", lambda: client.set_priority(result.transfer_id, 3))


def test_code_timeout(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 2 * MiB})
    with stack.client() as client:
        job = client.upload(make_file(tmp_path / "t.bin", 8 * MiB), title="t", owner_type="project",
                            owner_id=stack.project_id, chunk_size_mb=1, wait=False)
        err = expect("timeout", lambda: client.call("job.wait", {"job_id": job.job_id, "timeout_s": 0.1}))
        assert isinstance(err, DaemonTimeoutError) and err.job_id == job.job_id
        assert err.data["job_id"] == job.job_id
        client.cancel(job.job_id)


def test_code_cancelled(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 2 * MiB})
    with stack.client() as client:
        job = client.upload(make_file(tmp_path / "x.bin", 8 * MiB), title="x", owner_type="project",
                            owner_id=stack.project_id, chunk_size_mb=1, wait=False)
        client.cancel(job.job_id)
        ended = client.wait(job.job_id)
        assert ended.error is not None and ended.error.code == "cancelled"
        # A blocking wait=True transfer raises it: the same check on the ended job.
        expect("cancelled", lambda: client._finished(ended))


def test_code_source_changed(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "s.bin", 2 * MiB)
    with stack.client() as client:
        job = client.upload(source, title="s", owner_type="project", owner_id=stack.project_id, wait=False)
        client.pause(job.job_id)
        source.write_bytes(b"different")
        client.resume(job.job_id)
        ended = client.wait(job.job_id, timeout_s=60)
    assert ended.state == "failed" and ended.error is not None and ended.error.code == "source_changed"
    assert str(source) in ended.error.message


def test_code_destination_exists(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "d.bin", 1000)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d.bin").write_bytes(b"something else")
    with stack.client() as client:
        result = client.upload(source, title="d", owner_type="project", owner_id=stack.project_id)
        err = expect("destination_exists", lambda: client.download(result.asset_id, dest))
    assert "overwrite" in err.message and err.data["job_id"]


def test_code_io_error(stack: Stack, tmp_path: Path) -> None:
    directory = tmp_path / "empty-directory"
    directory.mkdir()
    with stack.client() as client:
        err = expect("invalid_argument", lambda: client.upload(directory, title="x", owner_type="project",
                                                               owner_id=stack.project_id))
        assert "no regular files" in err.message
        # A path whose parent is a file cannot even be looked at: the OS error, mapped.
        (tmp_path / "plain").write_bytes(b"")
        err = expect("io_error", lambda: client.call("upload.start", {
            "local_path": str(tmp_path / "plain" / "child"), "title": "x", "owner_type": "project",
            "owner_id": stack.project_id}))


def test_code_unavailable(stack: Stack) -> None:
    stack.stop_server()
    with stack.client() as client:
        err = expect("unavailable", lambda: client.get_metadata("ast_00000001"))
    assert "cannot be reached" in err.message


def _write_credentials(stack: Stack, token: str) -> None:
    assert stack.url is not None
    credentials.save(stack.root / "config" / "dataerai" / "credentials.json",
                     credentials.Credentials(server_url=stack.url, token=token))


def test_code_auth_required(stack: Stack) -> None:
    (stack.root / "config" / "dataerai" / "credentials.json").unlink()
    with stack.client() as client:
        client.call("auth.reload")
        err = expect("auth_required", client.auth_status)
    assert "dataerai auth login" in err.message


def test_code_auth_expired(stack: Stack) -> None:
    _write_credentials(stack, stack.add_user("old@example.org", expires_in_days=0))
    with stack.client() as client:
        client.call("auth.reload")
        expect("auth_expired", client.auth_status)


def test_code_permission_denied(stack: Stack) -> None:
    stack.login(stack.add_user("reader@example.org", scope="read"))
    with stack.client() as client:
        err = expect("permission_denied", lambda: client.create_project("nope"))
    assert err.message


def test_expired_token_jobs_wait_for_auth_say_so_and_resume_after_a_new_login(stack: Stack, tmp_path: Path) -> None:
    _write_credentials(stack, stack.add_user("ada@example.org", expires_in_days=0))
    source = make_file(tmp_path / "a.bin", 3 * MiB)
    with stack.client() as client:
        client.call("auth.reload")
        job = client.upload(source, title="a", owner_type="project", owner_id=stack.project_id, wait=False)
        wait_for(lambda: client.get_job(job.job_id).state == "waiting_for_auth", 30, "waiting_for_auth")
        waiting = [e for e in client.list_events(0, [job.job_id], ["job.state"]) if e.state == "waiting_for_auth"]
        assert waiting and waiting[0].job is not None and waiting[0].job.error is not None
        assert waiting[0].job.error.code == "auth_expired"
        stack.login(stack.add_user("ada@example.org"))  # a fresh token; `auth login` tells the daemon
        done = client.wait(job.job_id, timeout_s=60)
        reloads = client.list_events(0, types=["auth.reloaded"])
    assert done.state == "completed" and done.asset_id, done.error
    assert any(job.job_id in e.raw["waiting_jobs"] for e in reloads)


def test_code_quota_exceeded(stack: Stack, tmp_path: Path) -> None:
    import sqlite3

    # The operator lowered the project's allocation below what one more file needs.
    with sqlite3.connect(stack.server_dir / "repository.sqlite3") as db:
        db.execute("UPDATE projects SET allocation_bytes = 1000 WHERE id = ?", (stack.project_id,))
    source = make_file(tmp_path / "big.bin", 5000)
    with stack.client() as client:
        err = expect("quota_exceeded", lambda: client.upload(source, title="x", owner_type="project",
                                                             owner_id=stack.project_id))
    assert "1000" in err.message or err.data.get("allocation_bytes") == 1000, err
