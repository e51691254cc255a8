"""Ranges fetched in parallel, with the whole-stream hash beside them. A range cut off half-way
goes on from where it stopped; ranges on disk from before are not fetched again. The server is
the shared fake."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fake_repository import FakeRepository
from stand_ins import begun, job_context

from dataeraid.engine import download
from dataeraid.fileset import FileSet, StreamFile

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
