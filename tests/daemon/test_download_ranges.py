"""Ranges fetched in parallel, and the whole-stream hash beside them: bytes written at the
hashing frontier are hashed from memory, bytes written ahead of it are read back. A range cut
off half-way goes on from where it stopped. The server is a stand-in."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import trio

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


async def _retrying(_what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    while True:
        try:
            return await attempt()
        except TransientError:
            await trio.sleep(0.01)


class _ReadBack:
    """Counts the bytes hashed by reading them back from the files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        original = download.StreamHasher.feed

        def feed(hasher: Any, fileset: Any, offset: int, length: int, block: int) -> None:
            self.bytes += length
            original(hasher, fileset, offset, length, block)

        monkeypatch.setattr(download.StreamHasher, "feed", feed)


async def _download(tmp_path: Path, repository: _Repository, todo: list[int]) -> str:
    size = len(repository.data)
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, size)], "part")

    async def nothing(*_args: Any) -> None:
        return None

    ctx = SimpleNamespace(
        job_id="job_1",
        settings=SimpleNamespace(parts_per_job=3, io_block_size=BLOCK),
        remote=repository,
        retrying=_retrying,
        bandwidth=SimpleNamespace(spend=nothing),
        store=SimpleNamespace(checkpoint_many=nothing),
    )
    progress = SimpleNamespace(add=lambda *a: None, chunk_finished=lambda: None, at_file=lambda *a: None)
    try:
        stream = await download._fetch_ranges(ctx, fileset, {"url": "u", "content_id": "c"},  # type: ignore[arg-type]
                                               "ast_1", size, RANGE, todo, progress)  # type: ignore[arg-type]
    finally:
        fileset.close()
    return stream.whole.hexdigest()


def _data(ranges: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (ranges * RANGE // 32) + b"tail"


async def test_parallel_ranges_are_hashed_in_order_from_memory_or_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(4)
    repository = _Repository(data)
    read_back = _ReadBack(monkeypatch)
    assert await _download(tmp_path, repository, list(range(5))) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.bin.part").read_bytes() == data
    assert len({int(e.split()[0]) for e in repository.events[:6]}) > 1  # bodies interleaved
    # Range 0 starts at the frontier and is hashed as it is written; ranges written ahead of
    # the frontier are read back.
    assert 0 < read_back.bytes <= len(data) - BLOCK


async def test_a_range_cut_off_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    data = _data(4)
    repository = _Repository(data, cut_once=1)
    assert await _download(tmp_path, repository, list(range(5))) == hashlib.sha256(data).hexdigest()
    assert "1 cut" in repository.events
    assert (RANGE + RANGE // 2, RANGE // 2) in repository.requests  # the rest of range 1 only
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_ranges_on_disk_from_before_are_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(3)
    (tmp_path / "f.bin.part").write_bytes(data[:RANGE] + bytes(len(data) - RANGE))
    repository = _Repository(data)
    read_back = _ReadBack(monkeypatch)
    assert await _download(tmp_path, repository, [1, 2, 3]) == hashlib.sha256(data).hexdigest()
    assert read_back.bytes >= RANGE  # range 0 at least, which was not fetched again
    assert sorted(start for start, _ in repository.requests) == [RANGE, 2 * RANGE, 3 * RANGE]
