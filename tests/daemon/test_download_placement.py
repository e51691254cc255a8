"""A download whose daemon stopped while moving its files into place goes on from its
checkpoints: files already in place are taken back, nothing is fetched again. The
server and the checkpoint store are stand-ins; the files are real."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from stand_ins import job_context, nothing

from dataeraid import download

RANGE = 64 * 1024
FILES = {"run/a.bin": b"a" * (RANGE + 100), "run/b.bin": b"b" * 300, "run/c/d.bin": b"d" * (2 * RANGE)}


def _content() -> tuple[bytes, list[dict[str, Any]]]:
    entries, offset = [], 0
    for path, data in FILES.items():
        entries.append({"path": path, "offset": offset, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    return b"".join(FILES.values()), entries


class _Repository:
    def __init__(self) -> None:
        self.data, files = _content()
        self.target = {"url": "u", "content_id": "cnt_1", "size": len(self.data), "file_name": "run",
                       "sha256": hashlib.sha256(self.data).hexdigest(), "files": files}
        self.ranges: list[tuple[int, int]] = []

    async def download_target(self, _asset_id: str, _content_id: str | None) -> dict[str, Any]:
        return self.target

    async def read_range(self, _target: Any, start: int, length: int, _what: str) -> AsyncIterator[bytes]:
        self.ranges.append((start, length))
        yield self.data[start : start + length]


class _Checkpoints:
    """Every range of the content checkpointed, as the daemon left them before it stopped."""

    def __init__(self, count: int) -> None:
        self.done = {i: {"idx": i, "size": RANGE} for i in range(count)}
        self.cleared = False

    async def checkpoints(self, _job_id: str) -> dict[int, Any]:
        return dict(self.done)

    async def clear_checkpoints(self, _job_id: str) -> None:
        self.cleared = True
        self.done = {}

    checkpoint_many = staticmethod(nothing)


def _progress(*_args: Any) -> SimpleNamespace:
    return SimpleNamespace(bytes_done=0, chunks_done=0, publish_now=lambda: None, finish=lambda: None,
                           add=lambda *a: None, chunk_finished=lambda: None, at_file=lambda *a: None)


def _half_placed(dest: Path, placed: dict[str, bytes]) -> None:
    """``placed`` files at their destinations, the others still ``.part`` files."""
    for path, data in FILES.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in placed:
            target.write_bytes(placed[path])
        else:
            (dest / (path + ".part")).write_bytes(data)


async def _resume(dest: Path, repository: _Repository, store: _Checkpoints, overwrite: bool) -> dict[str, Any]:
    job = {"params": {"asset_id": "ast_1", "overwrite": overwrite}, "dest_dir": str(dest), "chunk_size": RANGE,
           "content_id": "cnt_1"}
    ctx = job_context(repository, {"parts_per_job": 2, "io_block_size": 16 * 1024}, job=job, store=store,
                      progress=_progress, save=nothing)
    return await download.run_download(ctx)  # type: ignore[arg-type]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
async def test_files_placed_before_a_restart_are_taken_back_not_fetched_again(tmp_path: Path,
                                                                              overwrite: bool) -> None:
    repository = _Repository()
    store = _Checkpoints(count=-(-len(repository.data) // RANGE))
    _half_placed(tmp_path, {"run/a.bin": FILES["run/a.bin"]})

    result = await _resume(tmp_path, repository, store, overwrite)

    assert repository.ranges == [] and not store.cleared
    assert _tree(tmp_path) == FILES  # every file in place, no .part left
    assert [f["local_path"] for f in result["files"]] == [str(tmp_path / p) for p in FILES]


async def test_a_placed_file_changed_since_voids_the_checkpoints(tmp_path: Path) -> None:
    repository = _Repository()
    store = _Checkpoints(count=-(-len(repository.data) // RANGE))
    _half_placed(tmp_path, {"run/a.bin": b"edited by hand" + FILES["run/a.bin"][14:]})

    await _resume(tmp_path, repository, store, overwrite=True)

    assert store.cleared
    assert sum(length for _, length in repository.ranges) == len(repository.data)
    assert _tree(tmp_path) == FILES
