"""``dataerai daemon reload|stop|restart`` and SIGHUP, on real daemon processes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack import Stack, make_file, wait_for

from dataeraid.cli._daemon import _gone

MiB = 1024 * 1024


@pytest.fixture
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A daemon on its own XDG directories, with no repository server: all these commands need."""
    with Stack(tmp_path_factory.mktemp("ctl"), daemon_config={"bwlimit": "10M:1M"}) as stack:
        yield stack


def _config(stack: Stack) -> Path:
    return stack.root / "config" / "dataerai" / "config.toml"


def _status(stack: Stack) -> dict:  # type: ignore[type-arg]
    return json.loads(stack.cli("daemon", "status", "--json").stdout)  # type: ignore[no-any-return]


def test_reload_and_sighup_change_the_limit_and_a_bad_file_keeps_the_old(bare: Stack) -> None:
    bare.start_daemon()
    assert _status(bare)["bandwidth"] == {"upload_bps": 10 * MiB, "download_bps": MiB, "shared_bps": 0,
                                          "bwlimit": "10M:1M", "next_change": None}
    _config(bare).write_text('bwlimit = "2M"\nmax_active_jobs = 2\nwatch_max_attempts = 3\nauth_warn_days = [7, 1]\n')
    answer = json.loads(bare.cli("daemon", "reload", "--json").stdout)
    assert answer == {"changed": ["max_active_jobs", "watch_max_attempts", "auth_warn_days", "bwlimit"],
                      "restart_needed": []}
    assert _status(bare)["bandwidth"]["download_bps"] == 2 * MiB

    _config(bare).write_text('bwlimit = "Mon-Fri 08:00,2Q"\n')
    refused = bare.cli("daemon", "reload", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error[invalid_argument]: {_config(bare)}: bwlimit 'Mon-Fri 08:00,2Q': "
                                     "at column 15: '2Q' is not a rate")
    assert _status(bare)["bandwidth"]["upload_bps"] == 2 * MiB  # the old settings stay

    _config(bare).write_text("bandwidth_limit_bps = 4096\n")
    assert bare.daemon is not None
    bare.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: _status(bare)["bandwidth"]["shared_bps"] == 4096, 10, "SIGHUP to reload config.toml")
    assert _status(bare)["bandwidth"]["upload_bps"] == 0
    assert bare.daemon.poll() is None  # SIGHUP reloads; it no longer kills the daemon


def test_a_reload_changes_the_part_size_of_the_uploads_queued_after_it(bare: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "f.bin", 24 * MiB)
    bare.start_daemon()
    with bare.client() as client:
        before = client.upload(source, title="f", owner_type="project", owner_id="prj_00000000", wait=False)
        _config(bare).write_text(f"default_chunk_size = {8 * MiB}\n")
        assert client.call("daemon.reload") == {"changed": ["default_chunk_size", "bwlimit"], "restart_needed": []}
        after = client.upload(source, title="f", owner_type="project", owner_id="prj_00000000", wait=False)
        assert (client.get_job(before.job_id).chunk_count, client.get_job(after.job_id).chunk_count) == (1, 3)


def test_stop_waits_until_the_daemon_is_gone_then_says_nothing_runs(bare: Stack) -> None:
    daemon = bare.start_daemon()
    stopped = bare.cli("daemon", "stop", "--json")
    assert json.loads(stopped.stdout) == {"stopped": daemon.pid}
    assert daemon.wait(5) == 0  # a clean stop, as after SIGTERM
    assert not bare.socket_path.exists()
    again = bare.cli("daemon", "stop", check=False)
    assert again.returncode == 3
    assert again.stderr == f"error[unavailable]: no dataerai daemon is running at {bare.socket_path}: nothing to stop\n"


def test_restart_starts_a_new_daemon_as_any_command_does(bare: Stack) -> None:
    daemon = bare.start_daemon()
    first = json.loads(bare.cli("daemon", "restart", "--json").stdout)
    assert first["stopped"] == daemon.pid and daemon.wait(5) == 0
    new_pid = first["started"]
    try:
        assert new_pid != daemon.pid and _status(bare)["pid"] == new_pid
        assert _status(bare)["bandwidth"]["upload_bps"] == 10 * MiB  # it read config.toml
    finally:
        bare.cli("daemon", "stop")
    assert not bare.socket_path.exists()
    assert _gone(new_pid)  # exited (a zombie where nobody reaps the auto-started daemon here)


def test_a_daemon_under_systemd_refuses_daemon_stop(bare: Stack) -> None:
    notify = bare.root / "notify"
    import socket

    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(notify))
    try:
        bare.env["NOTIFY_SOCKET"] = str(notify)
        bare.start_daemon()
        refused = bare.cli("daemon", "stop", check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error[conflict]: this daemon")
        assert "systemctl --user stop dataerai-transfer.socket dataerai-transfer.service" in refused.stderr
        refused = bare.cli("daemon", "restart", check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error[conflict]: this daemon")
        assert "`systemctl --user restart dataerai-transfer.service`" in refused.stderr
        assert bare.daemon is not None and bare.daemon.poll() is None
    finally:
        bare.stop_daemon()
        sink.close()


def test_the_installed_service_unit_reloads_by_sighup() -> None:
    from dataeraid.systemd_units import SERVICE_UNIT, render

    text = render("/opt/x/bin/dataerai")[SERVICE_UNIT]
    assert "\nExecReload=kill -HUP $MAINPID\n" in text
    assert "\nExecStart=/opt/x/bin/dataerai daemon run\n" in text


def test_a_reload_lifts_the_limit_of_a_running_upload(make_stack: Any, tmp_path: Path) -> None:
    # 16 MiB at 256 KiB/s would take a minute; with the limit lifted it takes a moment.
    stack = make_stack(daemon_config={"bwlimit": "256k"})
    source = make_file(tmp_path / "f.bin", 16 * MiB)
    with stack.client() as client:
        job = client.upload(source, title="f", owner_type="project", owner_id=stack.project_id, chunk_size_mb=1,
                            wait=False)
        wait_for(lambda: client.get_job(job.job_id).bytes_done >= MiB, 30, "the upload to move bytes")
        assert client.get_job(job.job_id).state == "running"
        _config(stack).write_text('bwlimit = "off"\n')
        assert client.call("daemon.reload") == {"changed": ["bwlimit"], "restart_needed": []}
        done = client.wait(job.job_id, timeout_s=20)
        assert done.state == "completed"
