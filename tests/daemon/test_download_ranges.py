"""Ranges fetched in parallel, with the whole-stream hash beside them. A range cut off half-way
goes on from where it stopped; ranges on disk from before are not fetched again. The server is
a stand-in."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import trio
from stand_ins import job_context

from dataeraid import download
from dataeraid.errors import TransientError
from dataeraid.fileset import FileSet, StreamFile

RANGE = 64 * 1024
BLOCK = 16 * 1024
T = TypeVar("T")


class _Repository:
    def __init__(self, data: bytes, cut_once: int | None = None) -> None:
        self.data = data
        self.cut_once = cut_once
        self.events: list[str] = []
        self.requests: list[tuple[int, int]] = []

    async def read_range(self, _target: Any, start: int, length: int, _what: str) -> AsyncIterator[bytes]:
        self.requests.append((start, length))
        index = start // RANGE
        for at in range(start, start + length, BLOCK // 2):
            if index == self.cut_once and at - index * RANGE >= RANGE // 2:
                self.cut_once = None
                self.events.append(f"{index} cut")
                raise TransientError("connection reset")
            self.events.append(f"{index} block")
            await trio.sleep(0.001)
            yield self.data[at : min(at + BLOCK // 2, start + length)]


async def _download(tmp_path: Path, repository: _Repository, todo: list[int]) -> str:
    size = len(repository.data)
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, size)], "part")

    ctx = job_context(repository, {"parts_per_job": 3, "io_block_size": BLOCK})
    progress = SimpleNamespace(add=lambda *a: None, chunk_finished=lambda: None, at_file=lambda *a: None)
    try:
        stream = await download._fetch_ranges(ctx, fileset, {"url": "u", "content_id": "c"},  # type: ignore[arg-type]
                                               "ast_1", size, RANGE, todo, progress)  # type: ignore[arg-type]
    finally:
        fileset.close()
    return stream.whole.hexdigest()


def _data(ranges: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (ranges * RANGE // 32) + b"tail"


async def test_a_range_cut_off_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    data = _data(4)
    repository = _Repository(data, cut_once=1)
    assert await _download(tmp_path, repository, list(range(5))) == hashlib.sha256(data).hexdigest()
    assert "1 cut" in repository.events
    assert (RANGE + RANGE // 2, RANGE // 2) in repository.requests  # the rest of range 1 only
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_ranges_on_disk_from_before_are_not_fetched_again(tmp_path: Path) -> None:
    data = _data(3)
    (tmp_path / "f.bin.part").write_bytes(data[:RANGE] + bytes(len(data) - RANGE))
    repository = _Repository(data)
    assert await _download(tmp_path, repository, [1, 2, 3]) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.bin.part").read_bytes() == data
    assert sorted(start for start, _ in repository.requests) == [RANGE, 2 * RANGE, 3 * RANGE]
