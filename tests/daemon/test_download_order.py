"""Range bodies read in order from the repository's own content endpoint (``download_order``):
a range's body is read once the previous range's body was, so every byte is hashed from memory
as it is written; ranges from an object store go in parallel and are hashed by reading them
back. A range cut off half-way goes on from where it stopped. The server is a stand-in."""

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
    def __init__(self, data: bytes, own: bool, cut_once: int | None = None) -> None:
        self.data = data
        self.own = own
        self.cut_once = cut_once
        self.events: list[str] = []
        self.requests: list[tuple[int, int]] = []

    def is_own_content_url(self, _url: str) -> bool:
        return self.own

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


async def _download(tmp_path: Path, repository: _Repository, order: str, todo: list[int]) -> str:
    size = len(repository.data)
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, size)], "part")

    async def nothing(*_args: Any) -> None:
        return None

    ctx = SimpleNamespace(
        job_id="job_1",
        settings=SimpleNamespace(parts_per_job=3, io_block_size=BLOCK, download_order=order),
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


async def test_own_endpoint_bodies_in_order_are_hashed_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(4)
    repository = _Repository(data, own=True)
    read_back = _ReadBack(monkeypatch)
    digest = await _download(tmp_path, repository, "auto", list(range(5)))
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.bin.part").read_bytes() == data
    # Each range's request goes out at once and its first block comes in, but the rest of its
    # body is read only after the previous range's: past the first blocks, the order is the stream's.
    seen: set[str] = set()
    later = []
    for event in repository.events:
        if event in seen:
            later.append(int(event.split()[0]))
        seen.add(event)
    assert later == sorted(later)
    assert set(later) == {0, 1, 2, 3}  # range 4 is one block (4 bytes)
    assert read_back.bytes == 0


async def test_a_range_cut_off_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    data = _data(4)
    repository = _Repository(data, own=True, cut_once=1)
    assert await _download(tmp_path, repository, "auto", list(range(5))) == hashlib.sha256(data).hexdigest()
    assert "1 cut" in repository.events
    assert (RANGE + RANGE // 2, RANGE // 2) in repository.requests  # the rest of range 1 only
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_object_store_ranges_go_in_parallel_and_are_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(4)
    repository = _Repository(data, own=False)
    read_back = _ReadBack(monkeypatch)
    assert await _download(tmp_path, repository, "auto", list(range(5))) == hashlib.sha256(data).hexdigest()
    first = [int(e.split()[0]) for e in repository.events[:6]]
    assert len(set(first)) > 1  # bodies interleaved
    assert 0 < read_back.bytes < len(data)  # the ranges ahead of the hashing were read back


async def test_ranges_on_disk_from_before_are_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(3)
    (tmp_path / "f.bin.part").write_bytes(data[:RANGE] + bytes(len(data) - RANGE))
    repository = _Repository(data, own=True)
    read_back = _ReadBack(monkeypatch)
    assert await _download(tmp_path, repository, "always", [1, 2, 3]) == hashlib.sha256(data).hexdigest()
    assert read_back.bytes == RANGE  # range 0 only; the rest was hashed as it was written
    assert sorted(start for start, _ in repository.requests) == [RANGE, 2 * RANGE, 3 * RANGE]
