"""Fixtures for the SDK tests: a fake daemon on a short socket path, a client for it."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dataerai
from dataerai import _connection
from sdk_fake_daemon import FakeDaemon


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory short enough for AF_UNIX paths (108 bytes), unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="dsdk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[FakeDaemon]:
    with FakeDaemon(str(sock_dir / "d.sock")) as fake:
        yield fake


@pytest.fixture
def client(daemon: FakeDaemon) -> Iterator[dataerai.DataeraiClient]:
    with dataerai.DataeraiClient(socket_path=daemon.socket_path, auto_start=False, request_timeout_s=5.0) as c:
        yield c


@pytest.fixture
def spawned() -> Iterator[None]:
    """Kill, by pid, every daemon the SDK spawned during the test."""
    before = {p.pid for p in _connection._SPAWNED}
    yield
    for process in list(_connection._SPAWNED):
        if process.pid not in before and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=3)
            except Exception:
                process.kill()
                process.wait()
