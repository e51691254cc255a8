"""The daemon as systemd and a second copy see it: notify, socket activation, one instance, durability."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import BIN, Stack, as_nobody, make_file, wait_for

from dataeraid.config import Settings

#: The status of a daemon that refuses to start (sysexits' EX_CONFIG; docs/reliability.md).
REFUSED = 78


@pytest.fixture
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A daemon's XDG directories and no repository server: all that starting a daemon needs."""
    with Stack(tmp_path_factory.mktemp("bare")) as stack:
        yield stack


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def _start_and_settle(env: dict[str, str], socket_path: Path) -> tuple[subprocess.Popen[str], bool]:
    """Start ``dataerai daemon run`` and wait until it exited or listens on ``socket_path``.

    The process, and whether it listens; a daemon that listens is the caller's to stop.
    """
    daemon = subprocess.Popen([str(BIN / "dataerai"), "daemon", "run"], env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: daemon.poll() is not None or _listening(socket_path), 30, "the daemon to exit or listen")
    return daemon, daemon.poll() is None


def _stderr_of(daemon: subprocess.Popen[str]) -> str:
    assert daemon.stderr is not None
    with daemon.stderr:
        return daemon.stderr.read()


def _notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    return sock


def test_sd_notify_ready_only_once_listening_then_watchdog_and_stopping(stack: Stack, tmp_path: Path) -> None:
    stack.stop_daemon()
    notify = _notify_socket(tmp_path / "notify")
    stack.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    stack.env["WATCHDOG_USEC"] = "400000"
    daemon = subprocess.Popen([str(BIN / "dataerai"), "daemon", "run"], env=stack.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first = notify.recv(4096).decode()
        assert "READY=1" in first
        # READY means the socket already answers.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(stack.socket_path))
        messages = [notify.recv(4096).decode() for _ in range(4)]
        assert any("WATCHDOG=1" in m for m in messages)
        assert any(m.startswith("STATUS=") for m in [first.split("\n")[1], *messages])
        daemon.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in notify.recv(4096).decode():
            pass
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
        notify.close()


def test_socket_activation_serves_the_passed_socket(stack: Stack, tmp_path: Path) -> None:
    """...and holds the queue: a daemon started by hand on the same state directory refuses."""
    stack.stop_daemon()
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    env = {**stack.env, "LISTEN_FDS": "1", "DATAERAI_SOCKET": str(stack.runtime / "unused.sock")}

    def as_fd_3() -> None:
        os.dup2(listener.fileno(), 3)

    # The shell's pid becomes the daemon's with exec, as systemd sets LISTEN_PID.
    daemon = subprocess.Popen(["/bin/sh", "-c", f'LISTEN_PID=$$ exec "{BIN / "dataerai"}" daemon run'], env=env,
                              preexec_fn=as_fd_3, close_fds=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener.close()
    try:
        from dataerai import DataeraiClient

        def answers() -> Any:
            try:
                with DataeraiClient(socket_path=str(path), auto_start=False) as client:
                    return client.call("daemon.ping")
            except OSError:
                return None

        pong = wait_for(answers, 20, "the activated daemon")
        assert pong["pid"] == daemon.pid
        assert not (stack.runtime / "unused.sock").exists()

        by_hand, listens = _start_and_settle(stack.env, stack.socket_path)
        if listens:
            by_hand.terminate()
            by_hand.wait(10)
        assert not listens and by_hand.returncode == REFUSED
        (line,) = _stderr_of(by_hand).splitlines()
        assert line.startswith("error[conflict]: ")
        assert f"pid {daemon.pid}" in line and str(path) in line
    finally:
        daemon.terminate()
        daemon.wait(10)


def test_a_second_daemon_exits_quietly(stack: Stack) -> None:
    second = subprocess.run([str(BIN / "dataerai"), "daemon", "run"], env=stack.env, capture_output=True,
                            timeout=30)
    assert second.returncode == 0
    assert stack.daemon is not None
    with stack.client() as client:
        assert client.call("daemon.ping")["pid"] == stack.daemon.pid


def test_two_daemons_started_at_once_for_one_socket_and_queue_one_serves_the_other_exits_0(bare: Stack) -> None:
    """The SDK's auto-start race: several clients start a daemon at the same moment."""
    both = [subprocess.Popen([str(BIN / "dataerai"), "daemon", "run"], env=bare.env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            for _ in range(2)]
    try:
        loser = wait_for(lambda: next((d for d in both if d.poll() is not None), None), 30, "one daemon to exit")
        (winner,) = [d for d in both if d is not loser]
        assert loser.returncode == 0
        assert "error[" not in _stderr_of(loser)
        wait_for(lambda: _listening(bare.socket_path), 30, "the winner to listen")
        with bare.client() as client:
            assert client.call("daemon.ping")["pid"] == winner.pid
    finally:
        for daemon in both:
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(10)
            if daemon.stderr is not None:
                daemon.stderr.close()


def test_a_second_daemon_on_the_same_queue_refuses_whatever_its_socket(bare: Stack) -> None:
    """Two daemons on one queue would both run its jobs: every byte sent twice."""
    first = bare.start_daemon()
    other = bare.runtime / "other.sock"
    second, listens = _start_and_settle({**bare.env, "DATAERAI_SOCKET": str(other)}, other)
    if listens:
        second.terminate()
        second.wait(10)
    assert not listens and second.returncode == REFUSED
    state_dir = bare.root / "state" / "dataerai"
    (line,) = _stderr_of(second).splitlines()
    assert line.startswith("error[conflict]: ")
    assert str(state_dir) in line and f"pid {first.pid}" in line and str(bare.socket_path) in line
    assert not other.exists()
    # The lock belongs to the queue's directory, private to its user.
    assert stat.S_IMODE((state_dir / "daemon.lock").stat().st_mode) == 0o600
    with bare.client() as client:
        assert client.call("daemon.ping")["pid"] == first.pid


def test_a_second_daemon_on_the_same_socket_with_another_queue_refuses(
        bare: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    first = bare.start_daemon()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    second, listens = _start_and_settle({**bare.env, "XDG_STATE_HOME": str(elsewhere)}, bare.socket_path)
    assert listens  # the first one's socket
    assert wait_for(lambda: second.poll() is not None, 30, "the second daemon to exit") and second.returncode == REFUSED
    (line,) = _stderr_of(second).splitlines()
    assert line.startswith("error[conflict]: ")
    assert str(bare.socket_path) in line and f"pid {first.pid}" in line
    assert str(bare.root / "state" / "dataerai") in line
    assert not (elsewhere / "dataerai" / "queue.sqlite3").exists()
    with bare.client() as client:
        assert client.call("daemon.ping")["pid"] == first.pid


def test_an_acknowledged_enqueue_survives_sigkill(make_stack: Any, tmp_path: Path) -> None:
    # The job must still be going when it is cancelled below: 8 MiB at 256 KiB/s is half a minute.
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 256 * 1024})
    source = make_file(tmp_path / "f.bin", 8 * 1024 * 1024)
    with stack.client() as client:
        job = client.upload(source, title="f", owner_type="project", owner_id=stack.project_id, wait=False)
    stack.stop_daemon(signal.SIGKILL)
    stack.start_daemon()
    with stack.client() as client:
        again = client.get_job(job.job_id)
        assert again.state in ("queued", "running")
        started = wait_for(lambda: client.get_job(job.job_id).upload_id, 30, "the upload session")
        client.cancel(job.job_id)
        assert client.get_job(job.job_id).state == "cancelled"
    # Cancelling also drops the repository's session and the parts it holds.
    with stack.api() as api:
        assert api.get(f"/uploads/{started}").json()["state"] == "aborted"


def test_auto_start_from_the_sdk(make_stack: Any, monkeypatch: Any) -> None:
    stack = make_stack(start_daemon=False)
    from dataerai import DataeraiClient

    # The auto-started daemon inherits this process's environment, as a notebook's would.
    for key in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(key, stack.env[key])

    pid = None
    try:
        with DataeraiClient(socket_path=str(stack.socket_path), binary_path=str(BIN / "dataerai"),
                            start_timeout_s=20) as client:
            pid = client.call("daemon.ping")["pid"]
            status = client.auth_status()
        assert status.user_email == "ada@example.org"
        # The auto-started daemon logs to the state directory, since its stderr goes nowhere.
        log = stack.root / "state" / "dataerai" / "daemon.log"
        wait_for(log.exists, 10, "the daemon's log file")
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        # It is nobody's child: stop it here, whatever happened above.
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not stack.socket_path.exists(), 10, "the daemon to stop")


def test_refuses_a_socket_directory_others_can_enter(stack: Stack, tmp_path: Path) -> None:
    stack.stop_daemon()
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    env = {**stack.env, "DATAERAI_SOCKET": str(open_dir / "d.sock")}
    result = subprocess.run([str(BIN / "dataerai"), "daemon", "run"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == REFUSED
    (line,) = result.stderr.splitlines()  # not a traceback
    assert line.startswith(f"error[permission_denied]: {open_dir} is open to other users") and "chmod 700" in line
    assert not (open_dir / "d.sock").exists()
    assert not (open_dir / "d.sock.lock").exists()


def test_another_user_cannot_connect(stack: Stack) -> None:
    if os.getuid() != 0:
        import pytest

        pytest.skip("needs root to act as another user")
    probe = ("import socket,sys\n"
             "s=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1])\n"
             " s.sendall(b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.ping\"}\\n')\n"
             " print(s.recv(100) or b'closed')\n"
             "except OSError as e: print('refused', e.errno)\n")
    result = subprocess.run(["python3", "-c", probe, str(stack.socket_path)], capture_output=True, text=True,
                            user=65534, group=65534, timeout=30)
    assert "refused" in result.stdout or "closed" in result.stdout


# --- a queue database the daemon cannot use ---------------------------------------

QUARANTINE = "dataerai daemon quarantine-queue"


def _state_dir(stack: Stack) -> Path:
    return stack.root / "state" / "dataerai"


def _real_queue(stack: Stack) -> Path:
    """A queue as a daemon leaves it: started, then stopped."""
    stack.start_daemon()
    assert stack.stop_daemon() == 0
    return _state_dir(stack) / "queue.sqlite3"


def _break_queue(stack: Stack, form: str) -> tuple[str, str]:
    """Put the queue in a broken ``form``; the code and the words the daemon's refusal must have."""
    queue = _state_dir(stack) / "queue.sqlite3"
    if form == "random bytes":
        queue.parent.mkdir(parents=True)
        queue.write_bytes(random.Random(7).randbytes(100_000))
        return "io_error", "is not a SQLite database"
    if form == "truncated":
        whole = _real_queue(stack).read_bytes()
        queue.write_bytes(whole[: len(whole) // 2])
        return "io_error", "is damaged"
    if form == "a directory":
        queue.mkdir(parents=True)
        return "io_error", "is a directory"
    if form == "newer schema":
        with sqlite3.connect(_real_queue(stack)) as db:
            db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
        return "conflict", "newer dataerai"
    raise AssertionError(form)


BROKEN_FORMS = ["random bytes", "truncated", "a directory", "newer schema"]


@pytest.mark.parametrize("form", BROKEN_FORMS)
def test_a_broken_queue_stops_the_daemon_in_one_line_and_quarantine_is_the_way_out(bare: Stack, form: str) -> None:
    code, words = _break_queue(bare, form)
    queue = _state_dir(bare) / "queue.sqlite3"
    kept = sorted(p.name for p in _state_dir(bare).iterdir() if p.name.startswith("queue.sqlite3"))
    refused = subprocess.run([str(BIN / "dataerai"), "daemon", "run"], env=bare.env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == REFUSED
    (line,) = refused.stderr.splitlines()  # not a traceback
    assert line.startswith(f"error[{code}]: the queue database {queue} ") and words in line
    assert QUARANTINE in line
    assert not bare.socket_path.exists()

    moved = bare.cli("daemon", "quarantine-queue", "--json")
    answer = json.loads(moved.stdout)
    assert sorted(Path(m["from"]).name for m in answer["moved"]) == kept
    for m in answer["moved"]:
        assert not Path(m["from"]).exists() and Path(m["to"]).exists()
        assert Path(m["to"]).parent == _state_dir(bare) and Path(m["to"]).name.startswith("queue.sqlite3.broken-")

    # The way out: the daemon starts again on a new, empty queue, private to its user.
    bare.start_daemon()
    with bare.client() as client:
        assert client.call("job.list")["jobs"] == []
    for name in ("queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm"):
        assert stat.S_IMODE((_state_dir(bare) / name).stat().st_mode) == 0o600


def _as_nobody() -> list[str]:
    """The command prefix that runs a program as nobody (65534); skips the test where that cannot run ours."""
    prefix = as_nobody()
    if prefix is None:
        pytest.skip("needs setpriv (util-linux) and an installation nobody (65534) can run")
    return prefix


def test_an_unreadable_queue_stops_the_daemon_in_one_line() -> None:
    """Mode 000. Root reads a file whatever its mode, so as root the daemon runs as nobody (65534) here,
    on a stack of its own under /tmp (pytest's directories are closed to other users)."""
    prefix = _as_nobody() if os.getuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="dq-", dir="/tmp"))
    try:
        with Stack(root) as stack:
            queue = _real_queue(stack)
            if prefix:
                for path in [root, *root.rglob("*")]:
                    os.chown(path, 65534, 65534, follow_symlinks=False)
                root.chmod(0o755)
            queue.chmod(0o000)
            refused = subprocess.run([*prefix, str(BIN / "dataerai"), "daemon", "run"], env=stack.env,
                                     capture_output=True, text=True, timeout=60)
        assert refused.returncode == REFUSED, refused.stderr
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"error[permission_denied]: the queue database {queue} ") and "chmod 600" in line
    finally:
        shutil.rmtree(root)


def test_quarantine_refuses_while_a_daemon_holds_the_queue(bare: Stack) -> None:
    daemon = bare.start_daemon()
    refused = bare.cli("daemon", "quarantine-queue", check=False)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error[conflict]: ")
    assert f"pid {daemon.pid}" in line and str(bare.socket_path) in line and str(_state_dir(bare)) in line
    assert (_state_dir(bare) / "queue.sqlite3").exists()
    assert not [p for p in _state_dir(bare).iterdir() if ".broken-" in p.name]


def test_quarantine_with_no_queue_moves_nothing(bare: Stack) -> None:
    nothing = bare.cli("daemon", "quarantine-queue", check=False)
    assert nothing.returncode == 1
    assert nothing.stderr.startswith("error[not_found]: ") and "queue.sqlite3" in nothing.stderr


# --- a start that fails says why, to the SDK and the CLI that started it -----------

KNOWN_KEYS = ", ".join(Settings.keys())  # the settings' one definition, in their order
BROKEN_CONFIGS = {
    "an unknown key": ("max_jobs = 3\n", f"unknown key 'max_jobs' in it; the keys are {KNOWN_KEYS}"),
    "a value of the wrong type": ('max_active_jobs = "four"\n', "max_active_jobs must be an integer, not 'four'"),
    "a value out of range": ("parts_per_job = 0\n", "parts_per_job must be at least 1, not 0"),
    "not TOML": ("max_active_jobs = \n", "is not valid TOML: "),  # then the parser's words, with the line
}


def _write_config(stack: Stack, text: str) -> Path:
    path = stack.root / "config" / "dataerai" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_a_broken_config_stops_the_daemon_in_one_line(bare: Stack, case: str) -> None:
    text, words = BROKEN_CONFIGS[case]
    config = _write_config(bare, text)
    refused = subprocess.run([str(BIN / "dataerai"), "daemon", "run"], env=bare.env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == REFUSED
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error[invalid_argument]: {config}: {words}")


def _as_this_process(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's XDG directories in this process's environment: the daemon the SDK starts inherits them."""
    for key in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "DATAERAI_SOCKET"):
        monkeypatch.setenv(key, stack.env[key])


def _cannot_start_lines(stack: Stack) -> list[dict[str, Any]]:
    log = _state_dir(stack) / "daemon.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [line for line in lines if line.get("event") == "cannot start"]


def test_the_sdk_says_why_its_daemon_did_not_start_a_broken_config(
        bare: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataerai import DaemonError, DataeraiClient

    _as_this_process(bare, monkeypatch)
    config = _write_config(bare, BROKEN_CONFIGS["an unknown key"][0])
    with pytest.raises(DaemonError) as info:
        DataeraiClient(binary_path=str(BIN / "dataerai"), start_timeout_s=30).connect()
    assert info.value.code == "invalid_argument"
    assert f"{config}: unknown key 'max_jobs' in it; the keys are {KNOWN_KEYS}" in info.value.message
    # The daemon wrote it to its log, since its stderr went nowhere.
    (logged,) = _cannot_start_lines(bare)
    assert logged["code"] == "invalid_argument" and "max_jobs" in logged["message"]


def test_the_sdk_says_why_its_daemon_did_not_start_a_broken_queue(
        bare: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataerai import DaemonError, DataeraiClient

    _as_this_process(bare, monkeypatch)
    code, words = _break_queue(bare, "random bytes")
    with pytest.raises(DaemonError) as info:
        DataeraiClient(binary_path=str(BIN / "dataerai"), start_timeout_s=30).connect()
    assert info.value.code == code
    assert f"the queue database {_state_dir(bare) / 'queue.sqlite3'} {words}" in info.value.message
    assert QUARANTINE in info.value.message


def test_the_cli_says_why_the_daemon_it_started_did_not_start(bare: Stack) -> None:
    config = _write_config(bare, BROKEN_CONFIGS["an unknown key"][0])
    result = bare.cli("auth", "status", check=False)  # needs a daemon: starts one
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error[invalid_argument]: ")
    assert f"{config}: unknown key 'max_jobs' in it; the keys are {KNOWN_KEYS}" in line
    assert not bare.socket_path.exists()
