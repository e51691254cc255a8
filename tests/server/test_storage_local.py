"""The local-directory storage against its contract (``storage/base.py``), in-process under Trio."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dataerai_server.storage import ChecksumMismatch, LocalStorage, StorageError, StoredPart
from dataerai_server.storage import local as local_module


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _data(size: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read(storage: LocalStorage, key: str, offset: int, length: int) -> bytes:
    out = bytearray()
    async for block in storage.read_range(key, offset, length):
        assert len(block) <= local_module.BATCH_BYTES
        out += block
    return bytes(out)


@pytest.fixture(params=["direct", "buffered"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStorage:
    """The storage with O_DIRECT where the filesystem allows it, and with plain buffered I/O
    (as on filesystems that refuse O_DIRECT)."""
    if request.param == "buffered":
        monkeypatch.setattr(local_module, "_O_DIRECT", 0)
    return LocalStorage.open(tmp_path / "objects")


async def test_parts_complete_and_ranges(storage: LocalStorage) -> None:
    # An odd part size: batches straddle parts and the content is not block-aligned.
    part_size = 700_001
    data = _data(3 * part_size + 12_345, seed=1)
    handle = await storage.create_upload("upl_1")
    pieces = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    for number in (4, 2, 1, 3):
        body = pieces[number - 1]
        stored = await storage.put_part(handle, number, _chunks(body, 50_000), len(body), _sha(body))
        assert stored == StoredPart(number, len(body), _sha(body))
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [
        (n, len(p)) for n, p in enumerate(pieces, start=1)
    ]
    parts = [StoredPart(n, len(p), _sha(p)) for n, p in enumerate(pieces, start=1)]
    content = await storage.complete(handle, parts, "upl_1", _sha(data))
    assert (content.size, content.sha256) == (len(data), _sha(data))
    # Completing again (a retry after a crash) gives the same object.
    assert await storage.complete(handle, parts, "upl_1", _sha(data)) == content
    await storage.release_parts(handle)
    assert await storage.list_parts(handle) == []
    await storage.release_parts(handle)  # idempotent
    assert await _read(storage, "upl_1", 0, len(data)) == data
    for offset, length in ((0, 1), (1, 4095), (4095, 2), (1_048_575, 1_048_578), (len(data) - 3, 3)):
        assert await _read(storage, "upl_1", offset, length) == data[offset : offset + length]
    assert not list((storage.root / "tmp").iterdir())


async def test_bad_part_is_not_stored_and_the_earlier_one_stays(storage: LocalStorage) -> None:
    handle = await storage.create_upload("upl_2")
    good = _data(100_000, seed=2)
    await storage.put_part(handle, 1, _chunks(good), len(good), _sha(good))
    bad = _data(100_000, seed=3)
    with pytest.raises(ChecksumMismatch) as caught:
        await storage.put_part(handle, 1, _chunks(bad), len(good), _sha(good))
    assert caught.value.actual_sha256 == _sha(bad) and caught.value.expected_sha256 == _sha(good)
    with pytest.raises(ChecksumMismatch):  # too long: refused without reading it all
        await storage.put_part(handle, 1, _chunks(good + b"x"), len(good), _sha(good))
    with pytest.raises(ChecksumMismatch):  # too short
        await storage.put_part(handle, 1, _chunks(good[:-1]), len(good), _sha(good))
    content = await storage.complete(handle, [StoredPart(1, len(good), _sha(good))], "upl_2", None)
    assert content.sha256 == _sha(good)
    assert await _read(storage, "upl_2", 0, len(good)) == good
    assert not list((storage.root / "tmp").iterdir())


async def test_whole_file_mismatch_publishes_nothing(storage: LocalStorage) -> None:
    handle = await storage.create_upload("upl_3")
    a, b = _data(65536, seed=4), _data(10, seed=5)
    await storage.put_part(handle, 1, _chunks(a), len(a), _sha(a))
    await storage.put_part(handle, 2, _chunks(b), len(b), _sha(b))
    parts = [StoredPart(1, len(a), _sha(a)), StoredPart(2, len(b), _sha(b))]
    with pytest.raises(ChecksumMismatch):
        await storage.complete(handle, parts, "upl_3", "0" * 64)
    with pytest.raises(StorageError):
        await _read(storage, "upl_3", 0, 1)
    assert len(await storage.list_parts(handle)) == 2  # the parts stay for another try
    assert not list((storage.root / "tmp").iterdir())


async def test_missing_or_wrong_sized_part_is_a_storage_error(storage: LocalStorage) -> None:
    handle = await storage.create_upload("upl_4")
    a = _data(1000, seed=6)
    await storage.put_part(handle, 1, _chunks(a), len(a), _sha(a))
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 1000, _sha(a)), StoredPart(2, 5, None)], "upl_4", None)
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 999, None), StoredPart(2, 0, None)], "upl_4", None)
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 999, _sha(a))], "upl_4", None)  # one part, wrong size
    await storage.abort(handle)
    await storage.abort(handle)
    with pytest.raises(StorageError):
        await storage.put_part(handle, 1, _chunks(a), len(a), _sha(a))


async def test_empty_part_and_empty_content(storage: LocalStorage) -> None:
    handle = await storage.create_upload("upl_5")
    await storage.put_part(handle, 1, _chunks(b""), 0, _sha(b""))
    content = await storage.complete(handle, [StoredPart(1, 0, _sha(b""))], "upl_5", _sha(b""))
    assert content.size == 0
    assert await _read(storage, "upl_5", 0, 0) == b""
    await storage.delete_content("upl_5")
    await storage.delete_content("upl_5")


async def test_names_cannot_escape_the_root(storage: LocalStorage) -> None:
    for name in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(StorageError):
            await storage.create_upload(name)


def test_stale_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    LocalStorage.open(tmp_path)
    stale, fresh = tmp_path / "tmp" / "old.tmp", tmp_path / "tmp" / "new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    LocalStorage.open(tmp_path)
    assert not stale.exists() and fresh.exists()
