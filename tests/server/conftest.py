"""Fixtures for the repository server: real ``dataerai-server`` processes on temporary paths.

``env`` is one server shared by the session (tests make their own projects, so they
do not see each other's data) with users added by ``users add`` while it runs;
``start_server`` starts more, for tests that stop and restart one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from backends import postgres_database, s3_bucket, seaweed  # noqa: F401 - fixtures
from in_process import database_url, services  # noqa: F401 - fixtures
from server_harness import ALLOCATION, Env, Server


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``start_server(*extra_args)``: a started server on a fresh data dir; stopped at the end."""
    servers: list[Server] = []

    def start(*extra_args: str) -> Server:
        server = Server(tmp_path_factory.mktemp("srv") / "data", list(extra_args))
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        if server.process is not None:
            server.stop()


@pytest.fixture(scope="session")
def env(start_server: Any) -> Iterator[Env]:
    server: Server = start_server("--default-allocation", str(ALLOCATION))
    # Users are added while the server runs, as an administrator would.
    tokens = {
        "ada": server.add_user("ada@example.org").strip(),
        "bob": server.add_user("bob@example.org").strip(),
        "ada_read": server.add_user("ada@example.org", scope="read").strip(),
    }
    clients = {name: server.client(token) for name, token in tokens.items()}
    clients["anon"] = server.client()
    yield Env(server, tokens, clients)
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def carol(env: Env) -> Iterator[Any]:
    """A third writer, in no project until a test adds her (with whatever role it needs)."""
    client = env.server.client(env.server.add_user("carol@example.org").strip())
    yield client
    client.close()
