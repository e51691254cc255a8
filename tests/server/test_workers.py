"""``run --workers N``: several server processes on one listening socket."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
from server_harness import PART, Server, ok, sha256


def _listening_pids(server: Server) -> set[int]:
    lines = [json.loads(line) for line in server.log_file.read_text().splitlines() if line.startswith("{")]
    return {line["pid"] for line in lines if line.get("event") == "server.listening" and "pid" in line}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_share_the_socket_serve_an_upload_and_stop_together(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", ["--workers", "2"])
    server.start()
    try:
        workers = _listening_pids(server)
        assert len(workers) == 2 and server.process is not None and server.process.pid not in workers
        token = server.add_user("ada@example.org").strip()
        headers = {"Authorization": f"Bearer {token}"}
        me = ok(httpx.get(f"{server.url}/api/v1/me", headers=headers, timeout=30))
        data = os.urandom(PART + 10)
        body = {"owner_type": "user", "owner_id": me["user_id"], "file_name": "a.bin", "size": len(data),
                "part_size": PART, "sha256": sha256(data), "idempotency_key": "k1"}
        # A new connection per request: the kernel hands them to either worker.
        upload = ok(httpx.post(f"{server.url}/api/v1/uploads", json=body, headers=headers, timeout=30), 201)
        for number, chunk in ((1, data[:PART]), (2, data[PART:])):
            target = ok(httpx.post(f"{server.url}/api/v1/uploads/{upload['upload_id']}/parts/{number}/target",
                                   json={"sha256": sha256(chunk), "size": len(chunk)}, headers=headers, timeout=30))
            ok(httpx.put(target["url"], content=chunk, timeout=30))
        done = ok(httpx.post(f"{server.url}/api/v1/uploads/{upload['upload_id']}/complete", json={},
                             headers=headers, timeout=30))
        assert done["size"] == len(data) and done["sha256"] == sha256(data)
    finally:
        assert server.stop() == 0
    assert not server.ready_file.exists()
    assert not any(_alive(pid) for pid in workers)


def test_a_worker_that_dies_stops_the_server_with_status_1(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", ["--workers", "2"])
    server.start()
    workers = sorted(_listening_pids(server))
    assert len(workers) == 2 and server.process is not None
    os.kill(workers[0], signal.SIGKILL)
    assert server.process.wait(30) == 1
    assert not _alive(workers[1])
    server.process = None
