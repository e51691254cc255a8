"""Ranges fetched in parallel, with the whole-stream hash beside them. A range cut off half-way
goes on from where it stopped; ranges on disk from before are not fetched again. The server is
the shared fake."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from fake_repository import SAFETY_NET_SECONDS, FakeRepository
from stand_ins import begun, job_context

from dataeraid.engine import download
from dataeraid.fileset import BufferPool, FileSet, StreamFile, StreamHasher

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import download_timeline

RANGE = 64 * 1024
BLOCK = 16 * 1024


async def _download(tmp_path: Path, repository: FakeRepository, todo: list[int]) -> tuple[str, int]:
    """The stream's digest, and the bytes the job's progress counted (those written to disk)."""
    target = await repository.download_target("ast_1", None)
    size = target["size"]
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, size)], "part")
    ctx = begun(job_context(repository, {"parts_per_job": 3, "io_block_size": BLOCK}, job={"kind": "download"}),
                fileset, -(-size // RANGE))
    try:
        stream = await download._fetch_ranges(ctx, fileset, target, "ast_1", size, RANGE, todo)  # type: ignore[arg-type]
    finally:
        fileset.close()
    return stream.whole.hexdigest(), ctx.accounting.progress.bytes_done


def _data(ranges: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (ranges * RANGE // 32) + b"tail"


async def test_a_range_cut_off_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    data = _data(4)
    # Cut a quarter block after range 1's half-way flush: 32 KiB of it on disk, 4 KiB not.
    cut = RANGE + RANGE // 2 + BLOCK // 4
    repository = FakeRepository(cut_at={cut}, read_block=BLOCK // 2)
    repository.add_content(data)
    # The bytes of the cut read that never reached the disk were taken back from the progress.
    assert await _download(tmp_path, repository, list(range(5))) == (hashlib.sha256(data).hexdigest(), len(data))
    assert repository.cuts == [cut]
    assert (RANGE + RANGE // 2, RANGE // 2) in repository.ranges  # the rest of range 1 only
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_ranges_on_disk_from_before_are_not_fetched_again(tmp_path: Path) -> None:
    data = _data(3)
    (tmp_path / "f.bin.part").write_bytes(data[:RANGE] + bytes(len(data) - RANGE))
    repository = FakeRepository()
    repository.add_content(data)
    assert await _download(tmp_path, repository, [1, 2, 3]) == (hashlib.sha256(data).hexdigest(), len(data) - RANGE)
    assert (tmp_path / "f.bin.part").read_bytes() == data
    assert sorted(start for start, _ in repository.ranges) == [RANGE, 2 * RANGE, 3 * RANGE]


async def test_a_slice_written_at_the_digest_is_hashed_from_its_buffer_and_the_rest_read_back(
        tmp_path: Path) -> None:
    data = _data(2)
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, len(data))], "part")
    plan = [(0, 0, RANGE, True), (1, RANGE, 2 * RANGE, True), (2, 2 * RANGE, len(data), True)]
    try:
        digest = download.InOrderHash(StreamHasher(fileset.files), fileset, BufferPool(BLOCK))

        def write(index: int, offset: int, length: int) -> None:
            fileset.write(offset, (data[offset:offset + length],))
            digest.wrote(index, offset, memoryview(data[offset:offset + length]))

        write(1, RANGE, RANGE)  # ahead of the digest: not hashed
        assert digest.position == 0
        write(0, 0, BLOCK)
        digest.wrote(0, 0, memoryview(data[:BLOCK]))  # the same slice again (a retry): hashed once
        assert (digest.position, digest.read_back) == (BLOCK, 0)
        hashed: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, digest.follow, plan, hashed.append)
            # The rest of range 0, then range 2, while the follower reads back what it can.
            for offset in range(BLOCK, RANGE, BLOCK):
                await trio.to_thread.run_sync(write, 0, offset, BLOCK)
            await trio.to_thread.run_sync(write, 2, 2 * RANGE, len(data) - 2 * RANGE)
    finally:
        fileset.close()
    assert hashed == [0, 1, 2]
    assert digest.stream.whole.hexdigest() == hashlib.sha256(data).hexdigest()
    assert RANGE <= digest.read_back <= len(data) - BLOCK  # range 1 at least was read back


class _FirstRangeHeld(FakeRepository):
    """Range 0 is not even begun until ``release`` is set; the others go at once."""

    def __init__(self) -> None:
        super().__init__(bulk_reads=True, read_block=BLOCK)
        self.release = trio.Event()

    async def read_range(self, target: Any, start: int, length: int, what: str) -> AsyncIterator[bytes]:
        if start == 0:
            await self.release.wait()
        async for block in super().read_range(target, start, length, what):
            yield block


class _SecondRangeAhead(FakeRepository):
    """Range 1 is written ahead of the digest, and ranges 0 and 1 land before any later range
    sends a byte, whatever order the threads' writes would have come in: range 0's last block
    waits for range 1's first, and ranges 2 on wait for all of ranges 0 and 1."""

    def __init__(self) -> None:
        super().__init__(bulk_reads=True, read_block=BLOCK)
        self.second_begun = trio.Event()
        self.landed = {0: trio.Event(), RANGE: trio.Event()}

    async def read_range(self, target: Any, start: int, length: int, what: str) -> AsyncIterator[bytes]:
        if start >= 2 * RANGE:
            for first_two in self.landed.values():
                await first_two.wait()
        sent = 0
        async for block in super().read_range(target, start, length, what):
            sent += len(block)
            if start == 0 and sent == length:
                await self.second_begun.wait()
            yield block
            # Here the consumer has written (and landed) the block: it asks for the next.
            if start == RANGE:
                self.second_begun.set()
            if start in self.landed and sent == length:
                self.landed[start].set()


async def _download_while(tmp_path: Path, repository: FakeRepository, ranges: int,
                          meanwhile: Callable[[SimpleNamespace], Awaitable[None]]) -> str:
    """Download ``ranges`` ranges, three at once, with ``meanwhile(ctx)`` beside; the digest."""
    target = await repository.download_target("ast_1", None)
    size = target["size"]
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, size)], "part")
    ctx = begun(job_context(repository, {"parts_per_job": 3, "io_block_size": BLOCK}, job={"kind": "download"}),
                fileset, ranges)
    digests: list[str] = []

    async def download_all() -> None:
        stream = await download._fetch_ranges(ctx, fileset, target, "ast_1", size, RANGE,  # type: ignore[arg-type]
                                              list(range(ranges)))
        digests.append(stream.whole.hexdigest())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(download_all)
            await meanwhile(ctx)
    finally:
        fileset.close()
    return digests[0]


async def _until_landed(ctx: SimpleNamespace, size: int) -> None:
    """Until ``size`` bytes were written, and every task waits again."""
    with trio.fail_after(SAFETY_NET_SECONDS):  # reached only when the order under test is broken
        while ctx.accounting.progress.bytes_done < size:
            await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()


async def test_while_the_hasher_is_behind_no_range_starts_more_than_a_few_ahead_of_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(12)
    repository = _SecondRangeAhead()
    repository.add_content(data)
    # A hasher that cannot read back until let go: range 0 is hashed as it is written, range 1
    # (begun before range 0 ended, so written ahead of the digest) must be read back.
    hasher_free = threading.Event()
    catch_up = download.InOrderHash.catch_up
    monkeypatch.setattr(download.InOrderHash, "catch_up",
                        lambda self, end: (hasher_free.wait(SAFETY_NET_SECONDS), catch_up(self, end))[1])

    async def meanwhile(ctx: SimpleNamespace) -> None:
        try:
            # Ranges 0 to 5 land, range 1 with the hasher in it; a range may start at most
            # parts_per_job + 1 = 4 ranges past the hasher's, so the workers wait for it
            # instead of fetching ranges 6 and 7.
            await _until_landed(ctx, 6 * RANGE)
            assert sorted(start // RANGE for start, _ in repository.ranges) == [0, 1, 2, 3, 4, 5]
        finally:
            hasher_free.set()

    assert await _download_while(tmp_path, repository, 13, meanwhile) == hashlib.sha256(data).hexdigest()
    assert sorted(start // RANGE for start, _ in repository.ranges) == list(range(13))
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_a_range_slow_to_arrive_holds_no_other_range_back(tmp_path: Path) -> None:
    data = _data(12)
    repository = _FirstRangeHeld()
    repository.add_content(data)

    async def meanwhile(ctx: SimpleNamespace) -> None:
        # The hasher waits for range 0's bytes: every other range is fetched meanwhile.
        await _until_landed(ctx, len(data) - RANGE)
        assert sorted(start // RANGE for start, _ in repository.ranges) == list(range(1, 13))
        repository.release.set()

    assert await _download_while(tmp_path, repository, 13, meanwhile) == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.bin.part").read_bytes() == data


async def test_the_phases_are_logged_for_each_range_and_the_timeline_tool_reads_them(tmp_path: Path) -> None:
    data = _data(5)
    repository = FakeRepository(bulk_reads=True, read_block=BLOCK)
    repository.add_content(data)
    target = await repository.download_target("ast_1", None)
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, len(data))], "part")
    count = -(-len(data) // RANGE)
    ctx = begun(job_context(repository, {"parts_per_job": 3, "io_block_size": BLOCK}, job={"kind": "download"}),
                fileset, count)
    lines: list[dict[str, Any]] = []

    def debug(event: str, **fields: Any) -> None:
        # As the daemon's log renders them: the job's id and a UTC timestamp on each line.
        lines.append({"event": event, "job_id": "job_1", "timestamp": datetime.now(timezone.utc).isoformat(),
                      **fields})

    ctx.log = SimpleNamespace(debug=debug)
    timeline = download.Timeline(ctx.log)
    timeline.mark("begin")
    try:
        await download._fetch_ranges(ctx, fileset, target, "ast_1", len(data), RANGE,  # type: ignore[arg-type]
                                     list(range(count)), timeline)
    finally:
        fileset.close()
    drawn = download_timeline.timeline(json.loads(json.dumps(lines)))
    assert sorted(drawn["ranges"]) == list(range(count))
    for index, r in drawn["ranges"].items():
        assert r["request"] <= r["head"] <= r["first_write"] <= r["last_write"] <= r["landed"], index
        assert r["hash_began"] <= r["hashed"], index
    assert sorted(i for c in drawn["checkpoints"] for i in c["ranges"]) == list(range(count))
    assert {"landed", "hashed", "checkpointed"} <= set(drawn["phase"])
    hashed = next(line for line in lines if line.get("phase") == "hashed")
    assert hashed["read_back"] < len(data)  # the first slice at least came from the receive buffer
    waits = dict(download_timeline.summary(drawn))
    assert waits["first request to the last range landed"] >= 0
    assert waits["request to the answer's head (the store's time to first byte), median of ranges"] >= 0


def test_a_ranges_bar_shows_the_wait_for_the_head_apart_from_the_first_slice() -> None:
    r = {"request": 0.0, "head": 0.010, "first_write": 0.020, "last_write": 0.050, "hash_began": 0.060,
         "hashed": 0.070}
    assert download_timeline.bar(r, 1000.0)[:70] == "." * 10 + "-" * 10 + "=" * 30 + " " * 10 + "#" * 10
    del r["head"]  # a log from before the head was logged: the wait runs to the first write
    assert download_timeline.bar(r, 1000.0)[:20] == "." * 20
