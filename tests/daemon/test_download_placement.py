"""A download whose daemon stopped while moving its files into place goes on from its
checkpoints: files already in place are taken back, nothing is fetched again. The
repository is the shared fake and the checkpoint store a stand-in; the files are real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_repository import FakeRepository
from stand_ins import job_context, nothing

from dataeraid.engine import download
from dataeraid.errors import DataeraiError

RANGE = 64 * 1024
FILES = {"run/a.bin": b"a" * (RANGE + 100), "run/b.bin": b"b" * 300, "run/c/d.bin": b"d" * (2 * RANGE)}


def _repository() -> tuple[FakeRepository, int]:
    """The repository holding the content of FILES, and how many ranges it has."""
    repository = FakeRepository()
    data = b"".join(FILES.values())
    repository.add_content(data, asset_id="ast_1", file_name="run", files=FILES)
    return repository, -(-len(data) // RANGE)


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


def _half_placed(dest: Path, placed: dict[str, bytes]) -> None:
    """``placed`` files at their destinations, the others still ``.part`` files."""
    for path, data in FILES.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in placed:
            target.write_bytes(placed[path])
        else:
            (dest / (path + ".part")).write_bytes(data)


async def _resume(dest: Path, repository: FakeRepository, store: _Checkpoints, overwrite: bool) -> dict[str, Any]:
    content_id = repository.contents["ast_1"].content_id
    job = {"kind": "download", "params": {"asset_id": "ast_1", "overwrite": overwrite}, "dest_dir": str(dest),
           "chunk_size": RANGE, "content_id": content_id}
    ctx = job_context(repository, {"parts_per_job": 2, "io_block_size": 16 * 1024}, job=job, store=store)
    return await download.run_download(ctx)  # type: ignore[arg-type]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
async def test_files_placed_before_a_restart_are_taken_back_not_fetched_again(tmp_path: Path,
                                                                              overwrite: bool) -> None:
    repository, ranges = _repository()
    store = _Checkpoints(count=ranges)
    _half_placed(tmp_path, {"run/a.bin": FILES["run/a.bin"]})

    result = await _resume(tmp_path, repository, store, overwrite)

    assert repository.ranges == [] and not store.cleared
    assert _tree(tmp_path) == FILES  # every file in place, no .part left
    assert [f["local_path"] for f in result["files"]] == [str(tmp_path / p) for p in FILES]


async def test_a_placed_file_changed_since_voids_the_checkpoints(tmp_path: Path) -> None:
    repository, ranges = _repository()
    store = _Checkpoints(count=ranges)
    _half_placed(tmp_path, {"run/a.bin": b"edited by hand" + FILES["run/a.bin"][14:]})

    await _resume(tmp_path, repository, store, overwrite=True)

    assert store.cleared
    assert sum(length for _, length in repository.ranges) == sum(len(data) for data in FILES.values())
    assert _tree(tmp_path) == FILES


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("planted", ["run/c", "run/c/d.bin.part"])
async def test_a_symlink_below_a_directory_already_looked_at_is_still_refused(
    tmp_path: Path, overwrite: bool, planted: str
) -> None:
    # "run" is looked at for the first file and remembered; "run/c" (or the third file's
    # .part) is only met at the third, and must not be taken for clean with "run".
    repository, ranges = _repository()
    store = _Checkpoints(count=ranges)
    store.done = {}
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / planted).parent.mkdir(parents=True, exist_ok=True)
    (dest / planted).symlink_to(outside if planted == "run/c" else outside / "d.bin")

    with pytest.raises(DataeraiError) as refused:
        await _resume(dest, repository, store, overwrite)

    assert refused.value.code == "unsafe_path" and planted in str(refused.value)
    assert repository.ranges == [] and list(outside.iterdir()) == []
