"""Fixtures that start real server and daemon processes on temporary paths."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from stack import Stack


@pytest.fixture
def make_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``make_stack(daemon_config=...)``: a running server and daemon, a logged-in user, a project."""
    stacks: list[Stack] = []

    def make(daemon_config: dict[str, Any] | None = None, start_daemon: bool = True) -> Stack:
        # Short root: a Unix socket path must stay under 108 bytes.
        root = tmp_path_factory.mktemp("st", numbered=True)
        stack = Stack(root, daemon_config=daemon_config)
        stacks.append(stack)
        if start_daemon:
            stack.spawn_daemon()  # it needs nothing of the server's to start: both start at once
        stack.start_server()
        # The token and the credentials file from this process (tests/cli covers `auth login` itself).
        stack.sign_in(stack.add_user("ada@example.org", scope="write"), reload=False)
        if start_daemon:
            stack.wait_for_daemon()
            with stack.client() as client:
                client.call("auth.reload")  # the daemon may have read no credentials yet
                stack.project_id = client.create_project("Beamline 7").project_id
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    return make_stack()  # type: ignore[no-any-return]
