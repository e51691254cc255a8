"""A repository that lies: hostile paths and corrupt bytes reach the real daemon, which must
refuse them with a stable code and write nothing outside its destination.

The repository here is a few lines of stdlib HTTP server on loopback (a user never runs a
hostile server, so this is the one place a stand-in is the point); the daemon, its CLI
login and the SDK are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError
from stack import Stack

BODY = b"0123456789" * 100


class Repository:
    """Serves one asset whose download target ``target`` (a dict) the test sets."""

    def __init__(self) -> None:
        self.target: dict[str, Any] = {}
        self.body = BODY
        repository = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, value: Any) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/v1/me":
                    self._json({"user_id": "usr_1", "email": "ada@example.org", "scopes": ["read", "write"],
                                "token_expires_at": None})
                elif self.path.startswith("/api/v1/assets/") and "/download" in self.path:
                    self._json(repository.target)
                elif self.path == "/data":
                    start, end = 0, len(repository.body) - 1
                    if "Range" in self.headers:
                        first, last = self.headers["Range"].removeprefix("bytes=").split("-")
                        start, end = int(first), int(last)
                    data = repository.body[start:end + 1]
                    self.send_response(206 if "Range" in self.headers else 200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, files: list[dict[str, Any]], *, sha256: str | None = None) -> None:
        self.target = {"content_id": "cnt_1", "size": len(BODY), "sha256": sha256 or hashlib.sha256(BODY).hexdigest(),
                       "file_name": "x", "url": f"{self.url}/data", "headers": {}, "files": files}


@pytest.fixture
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Repository]]:
    repository = Repository()
    thread = threading.Thread(target=repository.server.serve_forever, daemon=True)
    thread.start()
    stack = Stack(tmp_path_factory.mktemp("st", numbered=True))
    try:
        stack.url = repository.url
        stack.login("dtk_hostile")
        stack.start_daemon()
        yield stack, repository
    finally:
        stack.close()
        repository.server.shutdown()
        repository.server.server_close()


def _download(stack: Stack, dest: Path) -> DaemonError:
    with stack.client() as client, pytest.raises(DaemonError) as info:
        client.download("ast_00000001", dest_dir=dest)
    return info.value


def _everything_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("path", ["../escaped", "/tmp/absolute", "a/../../escaped", "a//b", "a\\b"])
def test_a_path_that_would_escape_is_refused_before_anything_is_written(
    hostile: tuple[Stack, Repository], tmp_path: Path, path: str
) -> None:
    stack, repository = hostile
    repository.serve([{"path": "ok.txt", "offset": 0, "size": 500, "sha256": None},
                      {"path": path, "offset": 500, "size": 500, "sha256": None}])
    dest = tmp_path / "dest"
    error = _download(stack, dest)
    assert error.code == "unsafe_path", error
    assert not (tmp_path / "escaped").exists()
    assert _everything_below(tmp_path) <= {"dest"}


def test_a_symlink_planted_in_the_tree_is_never_written_through(
    hostile: tuple[Stack, Repository], tmp_path: Path
) -> None:
    stack, repository = hostile
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "run").mkdir(parents=True)
    (dest / "run" / "sub").symlink_to(outside)
    repository.serve([{"path": "run/sub/evil.txt", "offset": 0, "size": 1000, "sha256": None}])
    error = _download(stack, dest)
    assert error.code == "unsafe_path", error
    assert list(outside.iterdir()) == []


def test_bytes_that_do_not_match_the_digest_are_never_put_in_place(
    hostile: tuple[Stack, Repository], tmp_path: Path
) -> None:
    stack, repository = hostile
    repository.serve([{"path": "data/a.bin", "offset": 0, "size": 1000, "sha256": None}])
    repository.body = BODY[:-1] + b"!"  # one byte flipped on the way
    dest = tmp_path / "dest"
    error = _download(stack, dest)
    assert error.code == "checksum_mismatch", error
    assert not (dest / "data" / "a.bin").exists()
    assert not list(dest.rglob("*.part")), "the damaged partial file is removed"


def test_a_file_whose_listed_digest_differs_is_a_checksum_mismatch(
    hostile: tuple[Stack, Repository], tmp_path: Path
) -> None:
    stack, repository = hostile
    wrong = hashlib.sha256(b"something else").hexdigest()
    repository.serve([{"path": "d/a.bin", "offset": 0, "size": 400, "sha256": hashlib.sha256(BODY[:400]).hexdigest()},
                      {"path": "d/b.bin", "offset": 400, "size": 600, "sha256": wrong}])
    error = _download(stack, tmp_path / "dest")
    assert error.code == "checksum_mismatch" and "d/b.bin" in error.message, error
    assert not (tmp_path / "dest" / "d" / "a.bin").exists(), "nothing is placed unless every file checks out"
