"""The storage contract (``storage/base.py``), one suite for every backend (rclone's fstests idea).

Each test runs against the directory storage (with ``O_DIRECT`` and with buffered I/O)
and against the S3 storage on a real SeaweedFS. Where a backend may differ within the
contract (S3 consumes parts on completion), the test accepts what the contract allows
and checks it through the contract's own methods. Local-only behaviour (hard links,
running digests, temp files) is tested in ``test_storage_local.py``, S3-only behaviour
(presigned URLs checked by the store) in ``test_storage_s3.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from dataerai_server.storage import ChecksumMismatch, LocalStorage, S3Storage, Storage, StorageError, StoredPart
from dataerai_server.storage import local as local_module
from storage_data import chunks, read_all, sample, sha

BLOCK = 1 << 20
#: S3 takes parts of at least 5 MiB, except the last one.
S3_MIN_PART = 5 << 20


async def _read(storage: Storage, key: str, offset: int, length: int) -> bytes:
    return await read_all(storage, key, offset, length, max_block=BLOCK)


def _psize(storage: Storage, size: int) -> int:
    """A part size for ``storage``: ``size`` for the directory, ``size`` past S3's minimum for S3."""
    return size if isinstance(storage, LocalStorage) else S3_MIN_PART + size




def _pieces(data: bytes, part_size: int) -> list[bytes]:
    return [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]


def _records(pieces: Sequence[bytes]) -> list[StoredPart]:
    return [StoredPart(n, len(p), sha(p)) for n, p in enumerate(pieces, start=1)]


async def _send(storage: Storage, handle: str, number: int, body: bytes) -> None:
    """Send a part the way a client would: to the storage's own URL if it gives one, else through put_part."""
    target = storage.part_url(handle, number, len(body), sha(body), 60)
    # A storage that says it takes no parts straight (completion then never asks it) gives no URL.
    assert target is None or storage.direct_parts
    if target is None:
        stored = await storage.put_part(handle, number, chunks(body, 50_000), len(body), sha(body))
        assert (stored.number, stored.size) == (number, len(body))
        return
    async with httpx.AsyncClient() as http:
        response = await http.request(target.method, target.url, content=body, headers=dict(target.headers))
    assert response.status_code == 200, response.text


async def _send_all(storage: Storage, handle: str, pieces: Sequence[bytes], order: Sequence[int]) -> None:
    for number in order:
        await _send(storage, handle, number, pieces[number - 1])


@pytest.fixture(params=["local-direct", "local-buffered", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    if request.param == "local-buffered":
        monkeypatch.setattr(local_module, "_O_DIRECT", 0)
    if request.param.startswith("local"):
        return LocalStorage.open(tmp_path / "objects")
    seaweed = request.getfixturevalue("seaweed")
    bucket = request.getfixturevalue("s3_bucket")
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    # A prefix of its own per test: tests never see each other's objects.
    return S3Storage.open(f"s3://{bucket}/t-{secrets.token_hex(4)}", tmp_path / "spool")


async def test_parts_complete_and_ranges(storage: Storage) -> None:
    # An odd part size: blocks straddle parts and the content is not block-aligned.
    part_size = _psize(storage, 700_001)
    data = sample(3 * part_size + 12_345, seed=1)
    handle = await storage.create_upload("upl_1")
    pieces = _pieces(data, part_size)
    for number in (4, 2, 1, 3):
        body = pieces[number - 1]
        stored = await storage.put_part(handle, number, chunks(body, 50_000), len(body), sha(body))
        assert (stored.number, stored.size) == (number, len(body)) and stored.sha256 in (None, sha(body))
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [
        (n, len(p)) for n, p in enumerate(pieces, start=1)
    ]
    content = await storage.complete(handle, _records(pieces), "upl_1", sha(data))
    assert (content.size, content.sha256) == (len(data), sha(data))
    # Completing again (a retry after a crash) gives the same object.
    assert await storage.complete(handle, _records(pieces), "upl_1", sha(data)) == content
    await storage.release_parts(handle)
    assert await storage.list_parts(handle) == []
    await storage.release_parts(handle)  # idempotent
    assert await _read(storage, "upl_1", 0, len(data)) == data
    for offset, length in ((0, 1), (1, 4095), (4095, 2), (1_048_575, 1_048_578), (len(data) - 3, 3)):
        assert await _read(storage, "upl_1", offset, length) == data[offset : offset + length]


async def test_parts_sent_where_the_storage_says(storage: Storage) -> None:
    size = _psize(storage, 80_000)
    data = sample(2 * size + 5, seed=2)
    pieces = _pieces(data, size)
    handle = await storage.create_upload("upl_sent")
    await _send_all(storage, handle, pieces, [3, 1, 2])
    await _send(storage, handle, 2, pieces[1])  # a re-send replaces the part
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [(1, size), (2, size), (3, 5)]
    content = await storage.complete(handle, _records(pieces), "upl_sent", sha(data))
    assert content.sha256 == sha(data)
    assert await _read(storage, "upl_sent", size - 10, 20) == data[size - 10 : size + 10]


async def test_bad_part_is_not_stored_and_the_earlier_one_stays(storage: Storage) -> None:
    handle = await storage.create_upload("upl_2")
    good = sample(100_000, seed=2)
    await storage.put_part(handle, 1, chunks(good), len(good), sha(good))
    bad = sample(100_000, seed=3)
    with pytest.raises(ChecksumMismatch) as caught:
        await storage.put_part(handle, 1, chunks(bad), len(good), sha(good))
    assert caught.value.actual_sha256 == sha(bad) and caught.value.expected_sha256 == sha(good)
    with pytest.raises(ChecksumMismatch):  # too long: refused without reading it all
        await storage.put_part(handle, 1, chunks(good + b"x"), len(good), sha(good))
    with pytest.raises(ChecksumMismatch):  # too short
        await storage.put_part(handle, 1, chunks(good[:-1]), len(good), sha(good))
    content = await storage.complete(handle, [StoredPart(1, len(good), sha(good))], "upl_2", None)
    assert content.sha256 == sha(good)
    assert await _read(storage, "upl_2", 0, len(good)) == good


async def test_whole_file_mismatch_publishes_nothing(storage: Storage) -> None:
    handle = await storage.create_upload("upl_3")
    a, b = sample(_psize(storage, 65536), seed=4), sample(10, seed=5)
    await storage.put_part(handle, 1, chunks(a), len(a), sha(a))
    await storage.put_part(handle, 2, chunks(b), len(b), sha(b))
    parts = [StoredPart(1, len(a), sha(a)), StoredPart(2, len(b), sha(b))]
    with pytest.raises(ChecksumMismatch) as caught:
        await storage.complete(handle, parts, "upl_3", "0" * 64)
    assert caught.value.actual_sha256 == sha(a + b) and caught.value.expected_size == len(a + b)
    with pytest.raises(StorageError):
        await _read(storage, "upl_3", 0, 1)
    # The parts stay for another try, or (S3) were consumed: list_parts says which.
    left = await storage.list_parts(handle)
    assert [p.number for p in left] in ([1, 2], [])
    if not left:
        with pytest.raises(StorageError):
            await storage.complete(handle, parts, "upl_3", sha(a + b))
    else:
        content = await storage.complete(handle, parts, "upl_3", sha(a + b))
        assert content.sha256 == sha(a + b)


async def test_missing_or_wrong_sized_part_is_a_storage_error(storage: Storage) -> None:
    handle = await storage.create_upload("upl_4")
    a = sample(1000, seed=6)
    await storage.put_part(handle, 1, chunks(a), len(a), sha(a))
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 1000, sha(a)), StoredPart(2, 5, None)], "upl_4", None)
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 999, None), StoredPart(2, 0, None)], "upl_4", None)
    with pytest.raises(StorageError):
        await storage.complete(handle, [StoredPart(1, 999, sha(a))], "upl_4", None)  # one part, wrong size
    assert [p.number for p in await storage.list_parts(handle)] == [1]  # a refused completion consumed nothing
    await storage.abort(handle)
    await storage.abort(handle)
    assert await storage.list_parts(handle) == []
    with pytest.raises(StorageError):
        await storage.put_part(handle, 1, chunks(a), len(a), sha(a))


async def test_empty_part_and_empty_content(storage: Storage) -> None:
    handle = await storage.create_upload("upl_5")
    await storage.put_part(handle, 1, chunks(b""), 0, sha(b""))
    content = await storage.complete(handle, [StoredPart(1, 0, sha(b""))], "upl_5", sha(b""))
    assert (content.size, content.sha256) == (0, sha(b""))
    await storage.release_parts(handle)
    assert await _read(storage, "upl_5", 0, 0) == b""
    await storage.delete_content("upl_5")
    await storage.delete_content("upl_5")
    with pytest.raises(StorageError):
        await _read(storage, "upl_5", 0, 0)


async def test_names_cannot_escape(storage: Storage) -> None:
    for name in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(StorageError):
            await storage.create_upload(name)


async def test_ranges_across_part_boundaries(storage: Storage) -> None:
    # Parts smaller than a read block and not block-aligned, so ranges cross several parts.
    part_size = _psize(storage, 300_001)
    data = sample((5 if isinstance(storage, LocalStorage) else 2) * part_size + 99, seed=31)
    pieces = _pieces(data, part_size)
    handle = await storage.create_upload("upl_ranges")
    await _send_all(storage, handle, pieces, range(1, len(pieces) + 1))
    await storage.complete(handle, _records(pieces), "upl_ranges", sha(data))
    await storage.release_parts(handle)
    cases = [
        (0, len(data)),  # everything
        (part_size - 1, 2),  # the last byte of part 1 and the first of part 2
        (part_size - 10, part_size + 20),  # three parts: the end of 1, all of 2, the start of 3
        (part_size + 5, part_size),  # from inside part 2 to inside part 3
        (len(data) - 99, 99),  # exactly the last, short part
        (4095, 1_048_577),  # unaligned, longer than a read block, across four parts
    ]
    for offset, length in cases:
        assert await _read(storage, "upl_ranges", offset, length) == data[offset : offset + length], (offset, length)
    with pytest.raises(StorageError):  # past the end
        await _read(storage, "upl_ranges", len(data) - 1, 2)


async def test_a_part_re_sent_with_other_bytes_is_the_one_completed(storage: Storage) -> None:
    size = _psize(storage, 70_000)
    data = sample(3 * size, seed=32)
    pieces = _pieces(data, size)
    handle = await storage.create_upload("upl_resent")
    await _send_all(storage, handle, pieces, [1, 2, 3])
    other = sample(size, seed=33)
    await _send(storage, handle, 2, other)
    fixed = [pieces[0], other, pieces[2]]
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [(n, size) for n in (1, 2, 3)]
    content = await storage.complete(handle, _records(fixed), "upl_resent", sha(b"".join(fixed)))
    assert content.sha256 == sha(b"".join(fixed))
    assert await _read(storage, "upl_resent", 0, len(data)) == b"".join(fixed)


async def test_a_part_re_sent_after_the_listing_is_the_one_completed(storage: Storage) -> None:
    """The listing a completion may reuse (S3 keeps it a moment) is older than the part re-sent
    since: the completion still takes the part as it is now."""
    size = _psize(storage, 70_000)
    pieces = _pieces(sample(2 * size, seed=34), size)
    handle = await storage.create_upload("upl_relisted")
    await _send_all(storage, handle, pieces, [1, 2])
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [(1, size), (2, size)]
    other = sample(size, seed=35)
    await _send(storage, handle, 2, other)
    fixed = [pieces[0], other]
    content = await storage.complete(handle, _records(fixed), "upl_relisted", sha(b"".join(fixed)))
    assert content.sha256 == sha(b"".join(fixed))
    assert await _read(storage, "upl_relisted", 0, 2 * size) == b"".join(fixed)


async def test_delete_content(storage: Storage) -> None:
    data = sample(123_456, seed=44)
    handle = await storage.create_upload("upl_del")
    await _send(storage, handle, 1, data)
    await storage.complete(handle, _records([data]), "upl_del", sha(data))
    await storage.release_parts(handle)
    assert await _read(storage, "upl_del", 100, 10) == data[100:110]
    await storage.delete_content("upl_del")
    with pytest.raises(StorageError):
        await _read(storage, "upl_del", 0, 1)
    await storage.delete_content("upl_del")


def test_backends_listed(storage: Any) -> None:
    # Every backend implements every method of the contract (a Protocol is not checked at runtime).
    for name in ("create_upload", "part_url", "put_part", "list_parts", "complete", "start_background",
                 "release_parts", "abort", "content_url", "read_range", "delete_content"):
        assert callable(getattr(storage, name)), name
