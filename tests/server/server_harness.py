"""The harness for the repository server's tests: real ``dataerai-server`` processes, API helpers.

A test talks to the server the way the daemon does: over HTTP with httpx, on a free
loopback port. Users and tokens come from the ``dataerai-server users add`` command,
run while the server is up.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
SERVER = str(BIN / "dataerai-server")
#: Small enough that the quota test can fill it with a few hundred KiB.
ALLOCATION = 1 << 20
PART = 64 * 1024  # the smallest part size the API allows


def json_answer(sock: socket.socket) -> bytes:
    """One whole answer with a JSON object body, read from a raw socket (the body ends in ``}``)."""
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    """One ``dataerai-server run`` process; ``start``/``stop`` may be repeated on the same data dir."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    port: int = 0  # 0 until the first start; a restart binds the same port again
    #: The umask the server and its commands are started with (None: this process's).
    umask: int | None = None

    @property
    def ready_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.url"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 20.0) -> str:
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [
                    SERVER,
                    "run",
                    "--data-dir",
                    str(self.data_dir),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--ready-file",
                    str(self.ready_file),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=self._preexec(),
            )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"dataerai-server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dataerai-server was not ready in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.url = self.ready_file.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def add_user(self, email: str, scope: str = "write", expires_in: float | str | None = None) -> str:
        """Run ``users add`` and return its stdout, which must be the token alone."""
        args = [SERVER, "users", "add", email, "--scope", scope, "--data-dir", str(self.data_dir)]
        if expires_in is not None:
            args += ["--expires-in", str(expires_in)]
        done = subprocess.run(args, capture_output=True, timeout=60, check=True, preexec_fn=self._preexec())
        return done.stdout.decode()

    def _preexec(self) -> Callable[[], None] | None:
        umask = self.umask
        if umask is None:
            return None

        def set_umask() -> None:
            os.umask(umask)

        return set_umask

    def db(self) -> sqlite3.Connection:
        """A read connection to the server's database, for checks the API does not expose."""
        return sqlite3.connect(f"file:{self.data_dir / 'repository.sqlite3'}?mode=ro", uri=True)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)


@dataclass
class Env:
    """The shared server plus a few users, each with a ready client."""

    server: Server
    tokens: dict[str, str]
    clients: dict[str, httpx.Client]

    @property
    def ada(self) -> httpx.Client:
        """A user with a write token."""
        return self.clients["ada"]

    @property
    def bob(self) -> httpx.Client:
        """Another writer, in none of ada's projects."""
        return self.clients["bob"]

    @property
    def ada_read(self) -> httpx.Client:
        """ada again, with a read-only token."""
        return self.clients["ada_read"]

    @property
    def anon(self) -> httpx.Client:
        return self.clients["anon"]


# --- API helpers ---------------------------------------------------------------------


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json() if response.content else None


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error object of a response that must be the error ``code`` with ``status``."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    body = response.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def new_project(client: httpx.Client, name: str = "Beamline 7") -> dict[str, Any]:
    return ok(client.post("/api/v1/projects", json={"name": name}), 201)  # type: ignore[no-any-return]


def parts_of(data: bytes, part_size: int) -> list[bytes]:
    """The parts a file is cut into: all ``part_size`` but the last; one empty part for no data."""
    return [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]


def create_upload(
    client: httpx.Client,
    owner_id: str,
    data: bytes,
    *,
    part_size: int = PART,
    owner_type: str = "project",
    **fields: Any,
) -> dict[str, Any]:
    body = {
        "owner_type": owner_type,
        "owner_id": owner_id,
        "file_name": "run42.h5",
        "size": len(data),
        "part_size": part_size,
        "sha256": sha256(data),
        **fields,
    }
    response = client.post("/api/v1/uploads", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def send_part(
    client: httpx.Client, upload_id: str, number: int, body: bytes, *, signed_sha256: str | None = None
) -> httpx.Response:
    """Ask for the part's target (signing ``signed_sha256``, by default the body's) and PUT ``body`` there."""
    target = ok(
        client.post(
            f"/api/v1/uploads/{upload_id}/parts/{number}/target",
            json={"sha256": signed_sha256 or sha256(body), "size": len(body)},
        )
    )
    assert target["method"] == "PUT"
    # The signed URL needs no token: send it without one, as a storage URL would be used.
    return httpx.put(target["url"], content=body, headers=target["headers"], timeout=30, trust_env=False)


def upload(
    client: httpx.Client, owner_id: str, data: bytes, *, part_size: int = PART, key: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A whole upload; returns the completion result."""
    session = create_upload(client, owner_id, data, part_size=part_size, idempotency_key=key, **fields)
    for number, body in enumerate(parts_of(data, part_size), start=1):
        ok(send_part(client, session["upload_id"], number, body))
    return ok(client.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={"idempotency_key": key}))  # type: ignore[no-any-return]


def data_of(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking test data."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])
