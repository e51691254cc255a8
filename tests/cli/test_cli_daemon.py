"""``dataerai daemon quarantine-queue``: a broken queue moved aside, whole, and never while a daemon holds it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from dataeraid.cli import cli
from dataeraid.instance import Holder, queue_lock_path, take_lock


def _state_dir(isolated_env: Path) -> Path:
    return isolated_env / "home" / ".local" / "state" / "dataerai"


def test_moves_the_queue_and_its_wal_and_shm_aside_together(runner: CliRunner, isolated_env: Path) -> None:
    state = _state_dir(isolated_env)
    state.mkdir(parents=True)
    for suffix, body in (("", b"not a database"), ("-wal", b"log"), ("-shm", b"index")):
        (state / f"queue.sqlite3{suffix}").write_bytes(body)

    result = runner.invoke(cli, ["daemon", "quarantine-queue", "--json"], prog_name="dataerai")

    assert result.exit_code == 0, result.output
    moved = {Path(m["from"]).name: Path(m["to"]) for m in json.loads(result.stdout)["moved"]}
    assert set(moved) == {"queue.sqlite3", "queue.sqlite3-wal", "queue.sqlite3-shm"}
    base = moved["queue.sqlite3"]
    assert base.parent == state and base.name.startswith("queue.sqlite3.broken-")
    # The -wal and -shm keep their suffix after the new name: SQLite finds them beside the moved file.
    assert moved["queue.sqlite3-wal"] == Path(f"{base}-wal") and moved["queue.sqlite3-shm"] == Path(f"{base}-shm")
    assert base.read_bytes() == b"not a database" and Path(f"{base}-wal").read_bytes() == b"log"
    assert not any(p.name.startswith("queue.sqlite3") and ".broken-" not in p.name for p in state.iterdir())
    # The lock it took while moving is the daemon's, private.
    assert stat.S_IMODE(queue_lock_path(state).stat().st_mode) == 0o600


def test_two_quarantines_in_one_second_keep_both(runner: CliRunner, isolated_env: Path) -> None:
    state = _state_dir(isolated_env)
    state.mkdir(parents=True)
    for body in (b"first", b"second"):
        (state / "queue.sqlite3").write_bytes(body)
        assert runner.invoke(cli, ["daemon", "quarantine-queue"], prog_name="dataerai").exit_code == 0
    kept = sorted(p.read_bytes() for p in state.iterdir() if ".broken-" in p.name)
    assert kept == [b"first", b"second"]


def test_a_directory_in_its_place_is_moved_too(runner: CliRunner, isolated_env: Path) -> None:
    state = _state_dir(isolated_env)
    (state / "queue.sqlite3").mkdir(parents=True)

    result = runner.invoke(cli, ["daemon", "quarantine-queue"], prog_name="dataerai")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"moved {state / 'queue.sqlite3'} to {state / 'queue.sqlite3.broken-'}")
    assert not (state / "queue.sqlite3").exists()


def test_refuses_while_the_queue_is_held(runner: CliRunner, isolated_env: Path) -> None:
    state = _state_dir(isolated_env)
    state.mkdir(parents=True)
    (state / "queue.sqlite3").write_bytes(b"in use")
    held = take_lock(queue_lock_path(state), Holder(4242, "/run/user/0/d.sock", str(state)))
    try:
        result = runner.invoke(cli, ["daemon", "quarantine-queue"], prog_name="dataerai")
    finally:
        os.close(held)

    assert result.exit_code == 1
    assert result.stderr == (
        f"error[conflict]: another dataerai daemon (pid 4242, socket /run/user/0/d.sock) uses the queue in {state};"
        " stop it first (`kill 4242`, or `systemctl --user stop dataerai-transfer.socket dataerai-transfer.service`)\n"
    )
    assert (state / "queue.sqlite3").read_bytes() == b"in use"
