"""Deduplication through real processes: SDK → daemon → repository server.

The second upload of the same bytes completes without sending them, once the daemon
proved possession: up front when its digest cache knows the unchanged source, and
speculatively (the whole-file hash finishes long before the sending) when it does not.
What the server received is read from the session's ``bytes_received``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from stack import Stack, make_file

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def upload(stack: Stack, source: Path) -> tuple[Any, dict[str, Any]]:
    """Upload ``source`` and wait; the finished job and the server's view of its session."""
    with stack.client() as client:
        job = client.upload(source, title=source.name, owner_type="project", owner_id=stack.project_id,
                            chunk_size_mb=1, wait=False)
        done = client.wait(job.job_id, timeout_s=120)
    assert done.state == "completed", done
    with stack.api() as api:
        response = api.get(f"/uploads/{done.upload_id}")
        response.raise_for_status()
    return done, response.json()


def requests(stack: Stack, upload_id: str) -> list[tuple[str, str, int]]:
    """``(method, path after the session's, status)`` of each request the server logged for the session."""
    found = []
    for line in (stack.root / "server.log").read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "request" and f"/uploads/{upload_id}" in entry["path"]:
            found.append((entry["method"], entry["path"].split(upload_id, 1)[1], entry["status"]))
    return found


def downloaded(stack: Stack, asset_id: str, dest: Path) -> list[Path]:
    with stack.client() as client:
        result = client.download(asset_id, dest_dir=dest)
    return [Path(f.local_path) for f in result.files]


def test_the_same_file_twice_sends_no_bytes_the_second_time(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 32 * MiB})
    size = 16 * MiB + 5
    source = make_file(tmp_path / "run.bin", size, seed=31)
    first, first_session = upload(stack, source)
    assert not first.deduplicated and first_session["bytes_received"] == size

    # Unchanged (same size, mtime and inode): the digest cache has it, possession is proved up front.
    second, session = upload(stack, source)
    assert second.deduplicated, second
    assert session["bytes_received"] == 0 and session["parts"] == []
    assert not [r for r in requests(stack, second.upload_id) if "/parts/" in r[1]], "not even a part target"
    assert second.content_id != first.content_id and second.asset_id != first.asset_id
    assert second.sha256 == first.sha256 == sha256(source)
    (back,) = downloaded(stack, second.asset_id, tmp_path / "out")
    assert sha256(back) == sha256(source)


def test_an_unknown_copy_is_deduplicated_while_it_is_being_sent(make_stack: Any, tmp_path: Path) -> None:
    # Slow sending (8 MiB/s) beside hashing at memory speed: the whole digest is known after a
    # few parts, and the rest is never sent.
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 8 * MiB, "parts_per_job": 2})
    size = 24 * MiB
    original = make_file(tmp_path / "a.bin", size, seed=32)
    first, _ = upload(stack, original)
    copy = tmp_path / "copy.bin"
    shutil.copyfile(original, copy)  # another inode: the digest cache does not know it

    second, session = upload(stack, copy)
    assert second.deduplicated, second
    # Whatever was in flight when the senders stopped, far less than the file.
    assert session["bytes_received"] <= 6 * MiB, session["bytes_received"]
    assert second.content_id != first.content_id
    (back,) = downloaded(stack, second.asset_id, tmp_path / "out")
    assert back.name == "copy.bin" and sha256(back) == sha256(original)

    # The copy's digest is cached now: a third upload proves possession before sending anything.
    third, session = upload(stack, copy)
    assert third.deduplicated and session["bytes_received"] == 0


def test_another_file_of_the_same_size_is_sent_whole(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 16 * MiB, "parts_per_job": 2})
    size = 12 * MiB
    first, _ = upload(stack, make_file(tmp_path / "a.bin", size, seed=33))
    other = make_file(tmp_path / "b.bin", size, seed=34)
    second, session = upload(stack, other)
    assert not second.deduplicated
    # The speculative attempt was refused (a challenge, one answer: no_match). The parts in
    # flight went on meanwhile, so nothing was sent twice.
    dedup = [(method, path, status) for method, path, status in requests(stack, second.upload_id) if "/dedup" in path]
    assert [(m, status) for m, _, status in dedup] == [("POST", 200), ("POST", 409)], dedup
    assert session["bytes_received"] == size
    assert [p["writes"] for p in session["parts"]] == [1] * 12
    (back,) = downloaded(stack, second.asset_id, tmp_path / "out")
    assert sha256(back) == sha256(other) != first.sha256


def test_a_directory_is_deduplicated_with_its_own_manifest(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 8 * MiB, "parts_per_job": 2})
    top = tmp_path / "run42"
    (top / "raw").mkdir(parents=True)
    make_file(top / "big.bin", 10 * MiB + 17, seed=35)
    for i in range(20):
        (top / "raw" / f"f{i:03}.txt").write_bytes(f"frame {i}\n".encode() * (i + 1))
    first, first_session = upload(stack, top)
    total = first_session["size"]
    assert not first.deduplicated and first_session["bytes_received"] == total

    again, session = upload(stack, top)  # unchanged: from the digest cache
    assert again.deduplicated and session["bytes_received"] == 0

    renamed = tmp_path / "run43"
    shutil.copytree(top, renamed)  # the same stream of bytes under other names: speculative
    copy, session = upload(stack, renamed)
    assert copy.deduplicated, copy
    assert session["bytes_received"] <= 6 * MiB
    with stack.api() as api:
        files = api.get(f"/assets/{copy.asset_id}/files", params={"limit": 100}).json()["files"]
    assert {f["path"] for f in files} == {f"run43/{p}" for p in tree(renamed)}
    assert all(f["sha256"] == tree(renamed)[f["path"].removeprefix("run43/")] for f in files)
    downloaded(stack, copy.asset_id, tmp_path / "out")
    assert tree(tmp_path / "out" / "run43") == tree(renamed)


def test_a_file_rewritten_in_place_is_not_taken_for_its_cached_digest(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 16 * MiB, "parts_per_job": 2})
    size = 6 * MiB
    source = make_file(tmp_path / "run.bin", size, seed=36)
    inode = source.stat().st_ino
    first, _ = upload(stack, source)
    # One byte changed in place, same size, same inode: only the mtime tells the cache the file
    # changed. Taken for its cached digest, the proof's four 64 KiB ranges would most likely miss
    # that byte, and the old content would be recorded for the new file.
    with open(source, "r+b") as f:
        f.seek(size // 2 + 12345)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1_000_000))
    assert source.stat().st_ino == inode
    second, session = upload(stack, source)
    assert not second.deduplicated
    assert session["bytes_received"] == size
    assert second.sha256 == sha256(source) != first.sha256
    (back,) = downloaded(stack, second.asset_id, tmp_path / "out")
    assert sha256(back) == sha256(source)
