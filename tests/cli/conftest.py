"""Fixtures for the command line's tests: no real daemon, no real home.

- Every test runs with ``HOME`` and the ``XDG_*`` variables pointing into its own
  temporary directory, and without ``DATAERAI_SOCKET``.
- ``me_server`` is a stdlib HTTP server on 127.0.0.1 answering ``GET /api/v1/me``.
- ``fake_daemon`` is a JSON-RPC server on a Unix socket, built on the shared
  ``dataerai.protocol`` framing, that answers the methods a test scripts. It
  lets the real SDK and the command line talk to something, without the daemon.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dataerai.protocol import (
    LineSplitter,
    Request,
    Response,
    RpcError,
    encode_notification,
    encode_response,
    parse_request_line,
)
from fake_watches import FakeWatches, WatchFault
from loopback import LoopbackServer


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, XDG_CONFIG_HOME, XDG_STATE_HOME and XDG_RUNTIME_DIR (0700) for the test."""
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("DATAERAI_SOCKET", raising=False)
    return tmp_path


@pytest.fixture
def credentials_file(isolated_env: Path) -> Path:
    return isolated_env / "home" / ".config" / "dataerai" / "credentials.json"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# --- the repository's GET /api/v1/me ------------------------------------------------


@dataclass
class MeServer:
    """Answers every GET with ``status`` and ``body``; remembers the Authorization headers it got."""

    url: str
    status: int = 200
    body: Any = None
    authorizations: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def me_server() -> Iterator[MeServer]:
    state = MeServer(
        url="",
        body={
            "user_id": "usr_1",
            "email": "ada@example.org",
            "scopes": ["read", "write"],
            "token_expires_at": "2027-01-01T00:00:00Z",
        },
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.authorizations.append(self.headers.get("Authorization", ""))
            state.paths.append(self.path)
            payload = json.dumps(state.body).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- a scripted daemon ------------------------------------------------------------


@dataclass
class Reply:
    """A handler's answer: a result or an error, then notifications sent right after it."""

    result: Any = None
    error: RpcError | None = None
    then: list[dict[str, Any]] = field(default_factory=list)


Handler = Callable[[dict[str, Any]], Any]


class FakeDaemon:
    """Serves scripted JSON-RPC methods on a Unix socket; records every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {"events.unsubscribe": lambda _p: {}}
        self.requests: list[Request] = []
        self._server = LoopbackServer(self._serve, unix=path)

    def on(self, method: str, handler: Handler) -> None:
        self.handlers[method] = handler

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def _serve(self, conn: socket.socket, number: int) -> None:
        splitter = LineSplitter()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            for line in splitter.feed(data):
                for incoming in parse_request_line(line)[0]:
                    assert isinstance(incoming, Request), incoming
                    self.requests.append(incoming)
                    self._answer(conn, incoming)

    def _answer(self, conn: socket.socket, request: Request) -> None:
        handler = self.handlers.get(request.method)
        if handler is None:
            reply = Reply(error=RpcError("method_not_found", f"no method {request.method}"))
        else:
            answer = handler(request.params)
            reply = answer if isinstance(answer, Reply) else Reply(result=answer)
        conn.sendall(encode_response(Response(request.id, result=reply.result, error=reply.error)))
        for event in reply.then:
            conn.sendall(encode_notification("event", event))

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def fake_daemon(isolated_env: Path) -> Iterator[FakeDaemon]:
    """A scripted daemon on the default socket path ($XDG_RUNTIME_DIR/dataerai-transfer.sock)."""
    daemon = FakeDaemon(Path(os.environ["XDG_RUNTIME_DIR"]) / "dataerai-transfer.sock")
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def watches(fake_daemon: FakeDaemon) -> FakeWatches:
    """``fake_daemon`` answering ``watch.*`` over a table of watches the test may fill (``watches.put``)."""
    fake = FakeWatches()

    def replying(answer: Handler) -> Handler:
        def handler(params: dict[str, Any]) -> Any:
            try:
                return answer(params)
            except WatchFault as fault:
                return Reply(error=RpcError(fault.code, fault.message, fault.data))

        return handler

    for method, answer in fake.methods().items():
        fake_daemon.on(method, replying(answer))
    return fake


class Wire:
    """Protocol objects for scripting ``fake_daemon`` (the ``wire`` fixture)."""

    @staticmethod
    def job(job_id: str = "job_1", **fields: Any) -> dict[str, Any]:
        """A protocol job object with neutral defaults."""
        base: dict[str, Any] = {
            "job_id": job_id,
            "kind": "upload",
            "state": "queued",
            "priority": 0,
            "created_at": "2026-11-25T14:00:00Z",
            "updated_at": "2026-11-25T14:00:00Z",
            "bytes_done": 0,
            "bytes_total": 11,
            "chunk_count": 1,
            "chunks_done": 0,
            "file_name": "data.bin",
            "local_path": "/data/data.bin",
            "dest_dir": None,
            "asset_id": None,
            "content_id": None,
            "files": [],
            "error": None,
        }
        base.update(fields)
        return base

    @staticmethod
    def reply(result: Any, then: list[dict[str, Any]]) -> Reply:
        """A result followed by notifications (``event``s) on the same connection."""
        return Reply(result=result, then=then)

    @staticmethod
    def error(code: str, message: str, **data: Any) -> Reply:
        """An error answer with a stable code."""
        return Reply(error=RpcError(code, message, data))

    @staticmethod
    def state_event(event_id: int, final: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": event_id,
            "type": "job.state",
            "time": "2026-11-25T14:00:01Z",
            "job_id": final["job_id"],
            "state": final["state"],
            "previous_state": "running",
            "job": final,
        }

    @staticmethod
    def progress_event(event_id: int, job_id: str, done: int, total: int) -> dict[str, Any]:
        return {
            "id": event_id,
            "type": "job.progress",
            "job_id": job_id,
            "bytes_done": done,
            "bytes_total": total,
            "chunk_index": 0,
            "chunk_count": 1,
            "rate_bps": 1e6,
            "file_index": 0,
            "file_name": "data.bin",
        }


@pytest.fixture
def wire() -> type[Wire]:
    return Wire


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A small file to upload."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello world")
    return path
