"""A full or read-only disk under the directory storage: part PUTs answer at once, with a code.

Real server processes whose data directory is a small tmpfs (mounting needs root), filled
up or remounted read-only while they run. A storage failure must answer the part PUT at
once (``507 disk_full`` / ``503 unavailable``, with ``Retry-After``), however much of the
body is still to come, store and count nothing of it, leave the server answering, and the
same part must upload once the disk is back.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import SERVER, Server, create_upload, data_of, error, new_project, ok, sha256

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs for the data directory needs root")

MiB = 1 << 20


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (mode 0700, so it may be a data directory as it is), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _leftovers(data_dir: Path) -> list[str]:
    """Files the storage is building or holds as parts (none may remain of a failed PUT)."""
    found = []
    for dirpath, _dirs, files in os.walk(data_dir / "objects"):
        found += [os.path.join(dirpath, f) for f in files]
    return found


def _target(client: httpx.Client, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
    url = f"/api/v1/uploads/{upload_id}/parts/{number}/target"
    return ok(client.post(url, json={"sha256": sha256(body), "size": len(body)}))  # type: ignore[no-any-return]


def test_a_full_disk_answers_507_at_once_and_the_part_uploads_once_space_is_freed(small_disk: Path) -> None:
    server = Server(small_disk)
    token = server.add_user("ada@example.org").strip()
    server.start()
    try:
        client = server.client(token)
        data = data_of(8 * MiB, seed=41)
        upload_id = create_upload(client, new_project(client)["project_id"], data, part_size=len(data))["upload_id"]
        target = _target(client, upload_id, 1, data)
        # Leave about 2 MiB: the part gets some way in before the disk is full.
        filler = small_disk / "filler"
        with open(filler, "wb") as out:
            out.write(b"\0" * (_free_bytes(small_disk) - 2 * MiB))
        free_before = _free_bytes(small_disk)

        with httpx.Client(timeout=60, trust_env=False) as parts:  # one connection, reused as a client would
            for _attempt in range(2):
                response = parts.put(target["url"], content=data, headers=target["headers"])
                err = error(response, 507, "disk_full")
                assert "full" in err["message"]
                assert int(response.headers["Retry-After"]) > 0
                # Nothing half-written stays, nothing is counted as stored.
                assert _leftovers(small_disk) == []
                assert _free_bytes(small_disk) >= free_before - 256 * 1024  # (the database may grow a little)
                session = ok(client.get(f"/api/v1/uploads/{upload_id}"))
                assert session["parts"] == [] and session["state"] == "open"
            assert ok(client.get("/api/v1/health"))["status"] == "ok"

            filler.unlink()
            stored = ok(parts.put(target["url"], content=data, headers=target["headers"]))
            assert stored["number"] == 1 and stored["size"] == len(data)
        result = ok(client.post(f"/api/v1/uploads/{upload_id}/complete", json={}))
        assert result["sha256"] == sha256(data)
    finally:
        server.stop()
    assert "storage.failed" in server.log_file.read_text()


def test_a_read_only_disk_answers_503_with_retry_after_and_the_part_uploads_once_writable(
    small_disk: Path, tmp_path: Path
) -> None:
    # The database elsewhere: a filesystem with a file open for writing cannot be remounted read-only.
    database = f"sqlite:///{tmp_path / 'repository.sqlite3'}"
    server = Server(small_disk, ["--database", database])
    server.start()
    token = subprocess.run(
        [SERVER, "users", "add", "ada@example.org", "--database", database], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        client = server.client(token)
        data = data_of(4 * MiB + 64 * 1024, seed=42)
        big, small = data[: 4 * MiB], data[4 * MiB :]
        upload_id = create_upload(client, new_project(client)["project_id"], data, part_size=4 * MiB)["upload_id"]
        targets = {1: _target(client, upload_id, 1, big), 2: _target(client, upload_id, 2, small)}
        try:
            _mount("-o", "remount,ro", str(small_disk))
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot remount the tmpfs read-only: {exc.stderr.decode().strip()}")
        with httpx.Client(timeout=60, trust_env=False) as parts:
            for number, body in ((1, big), (2, small), (1, big)):
                response = parts.put(targets[number]["url"], content=body, headers=targets[number]["headers"])
                err = error(response, 503, "unavailable")
                assert "Read-only file system" in err["message"]
                assert int(response.headers["Retry-After"]) > 0
                # A large unread rest closes the connection; a small one is read and dropped,
                # and the connection stays open for the next request.
                assert (response.headers.get("Connection") == "close") == (body is big)
            assert ok(client.get(f"/api/v1/uploads/{upload_id}"))["parts"] == []

            _mount("-o", "remount,rw", str(small_disk))
            for number, body in ((1, big), (2, small)):
                ok(parts.put(targets[number]["url"], content=body, headers=targets[number]["headers"]))
        assert ok(client.post(f"/api/v1/uploads/{upload_id}/complete", json={}))["sha256"] == sha256(data)
    finally:
        server.stop()
