"""Directories through real processes: one asset whose content is many files, packed end to end."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

from stack import Stack, make_file, wait_for

MiB = 1024 * 1024


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file below ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def make_tree(top: Path) -> Path:
    (top / "raw" / "deep" / "er").mkdir(parents=True)
    make_file(top / "big.bin", 3 * MiB + 17, seed=1)
    for i in range(40):  # many small files share parts
        (top / "raw" / f"f{i:03}.txt").write_bytes(f"frame {i}\n".encode() * (i + 1))
    (top / "raw" / "deep" / "er" / "empty").write_bytes(b"")
    (top / "raw" / "deep" / "tail.bin").write_bytes(b"x")
    (top / "link").symlink_to(top / "big.bin")  # skipped, as rclone does
    return top


def test_a_directory_round_trips_as_one_asset(make_stack: Any, tmp_path: Path) -> None:
    # Slow enough that throttled progress events see several files go by.
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 8 * MiB, "parts_per_job": 1})
    top = make_tree(tmp_path / "run42")
    seen: list[Any] = []
    with stack.client() as client:
        result = client.upload(top, title="run 42", owner_type="project", owner_id=stack.project_id,
                               chunk_size_mb=1, on_progress=seen.append)
        dl = client.download(result.asset_id, dest_dir=tmp_path / "out")
    expected = {k: v for k, v in tree(tmp_path).items() if k.startswith("run42/")}
    assert "run42/link" not in expected
    assert tree(tmp_path / "out") == expected
    assert sorted(Path(f.local_path).relative_to(tmp_path / "out").as_posix() for f in dl.files) == sorted(expected)
    assert {f.size for f in dl.files} >= {0, 1, 3 * MiB + 17}
    assert max(e.file_index for e in seen) > 0, "progress names the file being sent"
    assert {e.file_name for e in seen} >= {"run42/big.bin"}
    with stack.api() as api:
        asset = api.get(f"/assets/{result.asset_id}").json()
        one = api.get(f"/assets/{result.asset_id}/files", params={"path": "run42/raw/f007.txt"})
    assert one.status_code == 200, one.text
    info = one.json()
    assert info["size"] == len(b"frame 7\n") * 8
    assert info["sha256"] == expected["run42/raw/f007.txt"], "each file's digest is recorded"
    assert asset["title"] == "run 42"
    skipped = [json.loads(line) for line in (stack.root / "daemon.log").read_text().splitlines()
               if "left out of the upload" in line]
    assert skipped and skipped[0]["paths"] == ["run42/link"], "skipped entries are logged with the job"
    assert skipped[0]["job_id"]


def test_a_directory_download_refuses_to_clobber_and_resumes_nothing_twice(stack: Stack, tmp_path: Path) -> None:
    top = make_tree(tmp_path / "run7")
    with stack.client() as client:
        result = client.upload(top, title="run 7", owner_type="project", owner_id=stack.project_id,
                               chunk_size_mb=1)
        client.download(result.asset_id, dest_dir=tmp_path / "out")
        # The same content already there: nothing to do.
        again = client.download(result.asset_id, dest_dir=tmp_path / "out")
        assert len(again.files) == len(tree(top))
        (tmp_path / "out" / "run7" / "raw" / "f001.txt").write_bytes(b"edited")
        job = client.download(result.asset_id, dest_dir=tmp_path / "out", wait=False)
        done = client.wait(job.job_id, timeout_s=60)
    assert done.state == "failed" and done.error is not None and done.error.code == "destination_exists", done
    assert (tmp_path / "out" / "run7" / "raw" / "f001.txt").read_bytes() == b"edited"


def test_sigkill_mid_directory_upload_resumes(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"bandwidth_limit_bps": 16 * MiB, "parts_per_job": 2})
    top = tmp_path / "many"
    top.mkdir()
    for i in range(12):
        make_file(top / f"part{i:02}.bin", 2 * MiB + i, seed=i)
    with stack.client() as client:
        job = client.upload(top, title="many", owner_type="project", owner_id=stack.project_id,
                            chunk_size_mb=1, wait=False)

        def far_enough() -> bool:
            state = client.get_job(job.job_id)
            assert state.state not in ("completed", "failed"), state
            return bool(state.bytes_done >= 6 * MiB)

        wait_for(far_enough, 60, "a quarter of the directory", interval=0.05)
    stack.stop_daemon(signal.SIGKILL)
    stack.start_daemon()
    with stack.client() as client:
        done = client.wait(job.job_id, timeout_s=120)
        assert done.state == "completed", done
        client.download(done.asset_id, dest_dir=tmp_path / "out")
    assert tree(tmp_path / "out" / "many") == tree(top)
