"""Starting the daemon: a fake `dataerai` binary whose `daemon run` is the fake daemon."""

from __future__ import annotations

import builtins
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from dataerai import DaemonConnectionError, DaemonError, DaemonTimeoutError, DataeraiClient, _connection
from sdk_fake_daemon import fake_daemon_binary, make_binary

pytestmark = pytest.mark.usefixtures("spawned")


def _pids(socket_path: str) -> list[int]:
    with open(socket_path + ".pids") as f:
        return [int(line) for line in f.read().split()]


def test_auto_start_spawns_a_detached_daemon_on_the_clients_socket(sock_dir: Path) -> None:
    binary = fake_daemon_binary(sock_dir)
    path = str(sock_dir / "custom.sock")  # not the default: the daemon is told via DATAERAI_SOCKET
    with DataeraiClient(socket_path=path, binary_path=binary, start_timeout_s=10) as client:
        assert client.call("daemon.ping")["version"] == "0.1.0"
        (pid,) = _pids(path)
        assert client.call("daemon.ping")["pid"] == pid
        assert os.getsid(pid) == pid != os.getsid(0)  # its own session
    # The daemon outlives the client.
    with DataeraiClient(socket_path=path, auto_start=False) as again:
        assert again.call("daemon.ping")["pid"] == pid


def test_auto_start_polls_until_the_daemon_listens(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DAEMON_DELAY", "0.4")
    path = str(sock_dir / "d.sock")
    started = time.monotonic()
    with DataeraiClient(socket_path=path, binary_path=fake_daemon_binary(sock_dir)) as client:
        assert client.call("daemon.ping")
    assert 0.4 <= time.monotonic() - started < 5


def test_binary_found_on_path(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = sock_dir / "bin"
    bin_dir.mkdir()
    fake_daemon_binary(bin_dir)
    monkeypatch.setenv("PATH", str(bin_dir))
    with DataeraiClient(socket_path=str(sock_dir / "d.sock")) as client:
        assert client.call("daemon.ping")


def test_two_clients_starting_at_once_both_connect(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_DAEMON_DELAY", "0.2")
    path = str(sock_dir / "d.sock")
    binary = fake_daemon_binary(sock_dir)
    barrier = threading.Barrier(2)
    answers: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            client = DataeraiClient(socket_path=path, binary_path=binary)
            barrier.wait()
            with client:
                answers.append(client.call("daemon.ping")["pid"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(answers) == 2 and answers[0] == answers[1]
    assert answers[0] in _pids(path)


def test_a_stale_socket_file_is_not_running(sock_dir: Path) -> None:
    path = str(sock_dir / "d.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: connecting is refused
    stale.close()
    with pytest.raises(DaemonConnectionError, match="not running"):
        DataeraiClient(socket_path=path, auto_start=False).connect()
    with DataeraiClient(socket_path=path, binary_path=fake_daemon_binary(sock_dir)) as client:
        assert client.call("daemon.ping")


def test_no_binary_says_how_to_fix_it(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(sock_dir))
    with pytest.raises(builtins.ConnectionError, match="binary_path") as info:
        DataeraiClient(socket_path=str(sock_dir / "d.sock")).connect()
    assert isinstance(info.value, DaemonConnectionError)
    assert str(info.value).endswith(_connection.DAEMON_INSTALL_HINT)
    # The public index's `dataerai` is another project: the message sends people to the install page instead.
    assert "docs/install.md" in _connection.DAEMON_INSTALL_HINT and "--no-index" in _connection.DAEMON_INSTALL_HINT
    assert "pip install dataerai" not in str(info.value)


def test_binary_path_that_does_not_exist(sock_dir: Path) -> None:
    with pytest.raises(DaemonConnectionError, match="binary_path"):
        DataeraiClient(socket_path=str(sock_dir / "d.sock"), binary_path=sock_dir / "nope").connect()


def test_start_timeout(sock_dir: Path) -> None:
    binary = make_binary(sock_dir, "exec sleep 30")
    started = time.monotonic()
    with pytest.raises(DaemonTimeoutError) as info:
        DataeraiClient(socket_path=str(sock_dir / "d.sock"), binary_path=binary, start_timeout_s=0.3).connect()
    assert 0.3 <= time.monotonic() - started < 2
    assert info.value.code == "timeout" and info.value.transfer_id is None


def test_a_daemon_that_fails_to_start_is_reported_quickly(sock_dir: Path) -> None:
    binary = make_binary(sock_dir, "exit 3")
    started = time.monotonic()
    with pytest.raises(DaemonConnectionError, match="status 3"):
        DataeraiClient(socket_path=str(sock_dir / "d.sock"), binary_path=binary, start_timeout_s=10).connect()
    assert time.monotonic() - started < 3


def _cannot_start(code: str, message: str, pid: int) -> str:
    """The line the daemon logs when it refuses to start (``dataeraid.app._refuse``)."""
    return json.dumps({"code": code, "message": message, "pid": pid, "event": "cannot start", "level": "error"})


REFUSING_DAEMON = """\
import json, os, sys
log = os.path.join(os.environ["XDG_STATE_HOME"], "dataerai", "daemon.log")
with open(log, "a") as f:
    f.write(json.dumps({"code": "io_error", "message": "the queue database Q is damaged; move it aside",
                        "pid": os.getpid(), "event": "cannot start", "level": "error"}) + "\\n")
sys.exit(78)
"""


def test_a_daemon_that_refused_to_start_is_reported_with_its_reason(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = sock_dir / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    log = state / "dataerai" / "daemon.log"
    log.parent.mkdir(parents=True)
    # Another start's refusal, earlier in the log: not this one's reason.
    log.write_text(_cannot_start("conflict", "an old reason", os.getpid()) + "\n")
    (sock_dir / "refuse.py").write_text(REFUSING_DAEMON)
    binary = make_binary(sock_dir, f'exec "{sys.executable}" "{sock_dir / "refuse.py"}"')
    started = time.monotonic()
    with pytest.raises(DaemonError) as info:
        DataeraiClient(socket_path=str(sock_dir / "d.sock"), binary_path=binary, start_timeout_s=10).connect()
    assert time.monotonic() - started < 5
    assert info.value.code == "io_error"
    assert "the queue database Q is damaged; move it aside" in info.value.message
    assert "old reason" not in info.value.message


def test_a_daemon_that_exited_without_saying_why_points_to_its_log(
        sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = sock_dir / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    binary = make_binary(sock_dir, "exit 1")
    with pytest.raises(DaemonConnectionError, match="status 1") as info:
        DataeraiClient(socket_path=str(sock_dir / "d.sock"), binary_path=binary, start_timeout_s=10).connect()
    assert str(state / "dataerai" / "daemon.log") in str(info.value)


def test_the_client_restarts_a_daemon_that_went_away(sock_dir: Path) -> None:
    path = str(sock_dir / "d.sock")
    with DataeraiClient(socket_path=path, binary_path=fake_daemon_binary(sock_dir)) as client:
        first = client.call("daemon.ping")["pid"]
        (process,) = [p for p in _connection._SPAWNED if p.pid == first]
        process.terminate()
        process.wait(timeout=5)
        with pytest.raises(DaemonConnectionError):
            client.call("daemon.ping")
        second = client.call("daemon.ping")["pid"]
        assert second != first
