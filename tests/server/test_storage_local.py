"""The local-directory storage: what only it does (hard links, running digests, O_DIRECT, temp files).

The contract both storages keep is tested in ``test_storage_contract.py``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from dataerai_server.storage import ChecksumMismatch, LocalStorage, StorageError, StoredPart
from dataerai_server.storage import local as local_module
from storage_data import chunks, read_all, sample, sha


async def _read(storage: LocalStorage, key: str, offset: int, length: int) -> bytes:
    return await read_all(storage, key, offset, length, max_block=local_module.BATCH_BYTES)


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
    data = sample(3 * part_size + 12_345, seed=1)
    handle = await storage.create_upload("upl_1")
    pieces = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    for number in (4, 2, 1, 3):
        body = pieces[number - 1]
        stored = await storage.put_part(handle, number, chunks(body, 50_000), len(body), sha(body))
        assert stored == StoredPart(number, len(body), sha(body))
    assert [(p.number, p.size) for p in await storage.list_parts(handle)] == [
        (n, len(p)) for n, p in enumerate(pieces, start=1)
    ]
    parts = [StoredPart(n, len(p), sha(p)) for n, p in enumerate(pieces, start=1)]
    content = await storage.complete(handle, parts, "upl_1", sha(data))
    assert (content.size, content.sha256) == (len(data), sha(data))
    # Completing again (a retry after a crash) gives the same object.
    assert await storage.complete(handle, parts, "upl_1", sha(data)) == content
    await storage.release_parts(handle)
    assert await storage.list_parts(handle) == []
    await storage.release_parts(handle)  # idempotent
    assert await _read(storage, "upl_1", 0, len(data)) == data
    for offset, length in ((0, 1), (1, 4095), (4095, 2), (1_048_575, 1_048_578), (len(data) - 3, 3)):
        assert await _read(storage, "upl_1", offset, length) == data[offset : offset + length]
    assert not list((storage.root / "tmp").iterdir())












def test_stale_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    LocalStorage.open(tmp_path)
    stale, fresh = tmp_path / "tmp" / "old.tmp", tmp_path / "tmp" / "new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    LocalStorage.open(tmp_path)
    assert not stale.exists() and fresh.exists()


# --- contents made of their parts --------------------------------------------------------


def _pieces(data: bytes, part_size: int) -> list[bytes]:
    return [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]


def _records(pieces: Sequence[bytes]) -> list[StoredPart]:
    return [StoredPart(n, len(p), sha(p)) for n, p in enumerate(pieces, start=1)]


async def _put_all(storage: LocalStorage, handle: str, pieces: Sequence[bytes], order: Sequence[int]) -> None:
    for number in order:
        body = pieces[number - 1]
        await storage.put_part(handle, number, chunks(body, 50_000), len(body), sha(body))


class _ReadBack:
    """Counts the bytes completion (or a catch-up) reads back from part files to hash them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        original = LocalStorage._hash_files

        async def counting(storage: LocalStorage, hasher: Any, files: Sequence[tuple[Path, int]]) -> None:
            self.bytes += sum(size for _, size in files)
            await original(storage, hasher, files)

        monkeypatch.setattr(LocalStorage, "_hash_files", counting)


async def test_a_content_is_its_parts_linked_not_copied(storage: LocalStorage) -> None:
    data = sample(3 * 100_000 + 7, seed=30)
    pieces = _pieces(data, 100_000)
    handle = await storage.create_upload("upl_links")
    await _put_all(storage, handle, pieces, [1, 2, 3, 4])
    part_files = sorted((storage.root / "uploads" / handle).iterdir(), key=lambda p: int(p.name.split(".")[0]))
    # Each part file is named by the digest it was verified against.
    assert [p.name for p in part_files] == [f"{n}.{sha(b)}.part" for n, b in enumerate(pieces, start=1)]
    await storage.complete(handle, _records(pieces), "upl_links", sha(data))
    content = storage.root / "contents" / "ks" / "upl_links"
    assert sorted(p.name for p in content.iterdir()) == ["00001", "00002", "00003", "00004", "manifest.json"]
    for number, part_file in enumerate(part_files, start=1):
        assert (content / f"{number:05d}").stat().st_ino == part_file.stat().st_ino  # the same file, not a copy
    await storage.release_parts(handle)
    assert await _read(storage, "upl_links", 0, len(data)) == data
    # Deleting the content deletes its parts (their last links).
    await storage.delete_content("upl_links")
    assert not content.exists()
    assert not list((storage.root / "tmp").iterdir())
    with pytest.raises(StorageError):
        await _read(storage, "upl_links", 0, 1)




async def test_zero_byte_content(storage: LocalStorage) -> None:
    handle = await storage.create_upload("upl_zero")
    await storage.put_part(handle, 1, chunks(b""), 0, sha(b""))
    content = await storage.complete(handle, [StoredPart(1, 0, sha(b""))], "upl_zero", sha(b""))
    assert (content.size, content.sha256) == (0, sha(b""))
    await storage.release_parts(handle)
    assert await _read(storage, "upl_zero", 0, 0) == b""
    assert (storage.root / "contents" / "ro" / "upl_zero" / "00001").stat().st_size == 0


async def test_wrong_whole_digest_leaves_the_upload_to_be_completed(storage: LocalStorage) -> None:
    data = sample(4 * 70_000, seed=32)
    pieces = _pieces(data, 70_000)
    handle = await storage.create_upload("upl_wrong")
    await _put_all(storage, handle, pieces, [1, 2, 3, 4])
    with pytest.raises(ChecksumMismatch) as caught:
        await storage.complete(handle, _records(pieces), "upl_wrong", "0" * 64)
    assert caught.value.actual_sha256 == sha(data) and caught.value.expected_size == len(data)
    assert not (storage.root / "contents" / "ng" / "upl_wrong").exists()
    assert not list((storage.root / "tmp").iterdir())
    assert [(p.number, p.sha256) for p in await storage.list_parts(handle)] == [
        (n, sha(p)) for n, p in enumerate(pieces, start=1)
    ]
    # Part 3 is re-sent with other bytes; the next completion hashes what is there now.
    other = sample(70_000, seed=33)
    await storage.put_part(handle, 3, chunks(other), len(other), sha(other))
    fixed = [*pieces[:2], other, *pieces[3:]]
    assert len(list((storage.root / "uploads" / handle).iterdir())) == 4  # the old part 3 is gone
    with pytest.raises(ChecksumMismatch):
        await storage.complete(handle, _records(fixed), "upl_wrong", sha(data))
    content = await storage.complete(handle, _records(fixed), "upl_wrong", sha(b"".join(fixed)))
    assert content.sha256 == sha(b"".join(fixed))
    assert await _read(storage, "upl_wrong", 0, len(data)) == b"".join(fixed)


async def test_parts_in_order_are_hashed_as_they_arrive(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample(5 * 65_536 + 3, seed=34)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_order")
    read_back = _ReadBack(monkeypatch)
    await _put_all(storage, handle, pieces, range(1, len(pieces) + 1))
    content = await storage.complete(handle, _records(pieces), "upl_order", sha(data))
    assert content.sha256 == sha(data)
    assert read_back.bytes == 0  # completion read nothing back


async def test_completion_reads_only_what_came_out_of_order(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(6 * 65_536, seed=35)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_late")
    read_back = _ReadBack(monkeypatch)
    # 1, 2 in order; 4 and 5 early; 3 fills the gap; 6 in order after that. No background
    # work here, so completion reads 4 and 5 back (and only them).
    await _put_all(storage, handle, pieces, [1, 2, 4, 5, 3])
    await storage.complete(handle, _records(pieces[:5]), "upl_late_5", sha(b"".join(pieces[:5])))
    assert read_back.bytes == 2 * 65_536
    await _put_all(storage, handle, pieces, [6])
    await storage.complete(handle, _records(pieces), "upl_late", sha(data))
    assert read_back.bytes == 2 * 65_536  # 6 was next in order when it arrived
    assert await _read(storage, "upl_late", 0, len(data)) == data


async def test_background_catches_up_with_parts_that_came_early(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(5 * 65_536, seed=36)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_bg")
    async with anyio.create_task_group() as nursery:
        storage.start_background(nursery)
        await _put_all(storage, handle, pieces, [2, 4, 5, 1, 3])
        # Parts 4 and 5 are read back in the background once 3 is there; wait for that.
        digest = storage._running_digest(handle)
        with trio.fail_after(SAFETY_NET_SECONDS):
            while digest.count < len(pieces):
                await digest.grown.wait()
        assert digest.covered == [sha(p) for p in pieces]
        read_back = _ReadBack(monkeypatch)
        content = await storage.complete(handle, _records(pieces), "upl_bg", sha(data))
        assert content.sha256 == sha(data) and read_back.bytes == 0
        nursery.cancel_scope.cancel()


async def test_completion_after_a_restart_reads_the_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample(3 * 65_536 + 10, seed=37)
    pieces = _pieces(data, 65_536)
    before = LocalStorage.open(tmp_path / "objects")
    handle = await before.create_upload("upl_restart")
    await _put_all(before, handle, pieces, [1, 2, 3, 4])
    # A new process on the same directory: no running digest, so the parts are read back.
    after = LocalStorage.open(tmp_path / "objects")
    read_back = _ReadBack(monkeypatch)
    with pytest.raises(ChecksumMismatch):
        await after.complete(handle, _records(pieces), "upl_restart", "1" * 64)
    assert read_back.bytes == len(data)
    content = await after.complete(handle, _records(pieces), "upl_restart", sha(data))
    assert content.sha256 == sha(data)
    assert read_back.bytes == len(data)  # the failed attempt's reading was kept
    assert await _read(after, "upl_restart", 0, len(data)) == data


async def test_single_part_after_a_restart_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample(200_000, seed=38)
    before = LocalStorage.open(tmp_path / "objects")
    handle = await before.create_upload("upl_one")
    await before.put_part(handle, 1, chunks(data), len(data), sha(data))
    after = LocalStorage.open(tmp_path / "objects")
    read_back = _ReadBack(monkeypatch)
    content = await after.complete(handle, [StoredPart(1, len(data), sha(data))], "upl_one", sha(data))
    # Its file's name is the digest it was verified against on arrival, and it is the whole file's.
    assert content.sha256 == sha(data) and read_back.bytes == 0
    assert await _read(after, "upl_one", 0, len(data)) == data


async def test_another_process_replacing_a_part_is_noticed(tmp_path: Path) -> None:
    data = sample(3 * 65_536, seed=39)
    pieces = _pieces(data, 65_536)
    one = LocalStorage.open(tmp_path / "objects")
    two = LocalStorage.open(tmp_path / "objects")
    handle = await one.create_upload("upl_two")
    await _put_all(one, handle, pieces, [1, 2, 3])  # one's running digest covers all three
    other = sample(65_536, seed=40)
    await two.put_part(handle, 2, chunks(other), len(other), sha(other))  # which one does not know
    fixed = [pieces[0], other, pieces[2]]
    # The database would now record part 2 with the new digest.
    content = await one.complete(handle, _records(fixed), "upl_two", sha(b"".join(fixed)))
    assert content.sha256 == sha(b"".join(fixed))
    assert await _read(one, "upl_two", 0, len(data)) == b"".join(fixed)


async def test_completing_again_keeps_or_replaces_the_object(storage: LocalStorage) -> None:
    a = sample(100_000, seed=41)
    b = sample(100_000, seed=42)
    handle = await storage.create_upload("upl_again")
    await _put_all(storage, handle, [a, b], [1, 2])
    first = await storage.complete(handle, _records([a, b]), "upl_again", None)
    manifest = storage.root / "contents" / "in" / "upl_again" / "manifest.json"
    inode = manifest.stat().st_ino
    assert await storage.complete(handle, _records([a, b]), "upl_again", None) == first
    assert manifest.stat().st_ino == inode  # the same object, left as it was
    # Under the same key, other parts (a completion that never got recorded, then a re-send).
    await _put_all(storage, handle, [a, a], [2])
    second = await storage.complete(handle, _records([a, a]), "upl_again", None)
    assert second.sha256 == sha(a + a)
    assert await _read(storage, "upl_again", 0, 200_000) == a + a
    assert not list((storage.root / "tmp").iterdir())


async def test_content_stored_whole_by_an_earlier_version_is_read(storage: LocalStorage) -> None:
    data = sample(1_500_000, seed=43)
    legacy = storage.root / "contents" / "cy" / "upl_legacy"
    legacy.parent.mkdir()
    legacy.write_bytes(data)
    assert await _read(storage, "upl_legacy", 0, len(data)) == data
    assert await _read(storage, "upl_legacy", 1_000_000, 300_000) == data[1_000_000:1_300_000]
    await storage.delete_content("upl_legacy")
    assert not legacy.exists()


#: A cap on the waits below, for a test that went wrong: never reached when it passes, however busy the machine.
SAFETY_NET_SECONDS = 60.0


class _WatchedLinks(dict[int, Any]):
    """Stands in for a running digest's ``links`` (the arrivals a next part may chain onto), so
    that a test can wait for a part to arrive or to give up its link: no event announces either."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: set[int] = set()
        self._changed = trio.Event()

    def __setitem__(self, number: int, link: Any) -> None:
        super().__setitem__(number, link)
        self._poke()

    def __delitem__(self, number: int) -> None:
        super().__delitem__(number)
        self.removed.add(number)
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def came(self, number: int) -> bool:
        """Part ``number`` arrived: its link is there, or was given up already."""
        return number in self or number in self.removed

    async def until(self, condition: Callable[[], bool]) -> None:
        with trio.fail_after(SAFETY_NET_SECONDS):
            while not condition():
                await self._changed.wait()


def _watch_links(digest: Any) -> _WatchedLinks:
    assert not digest.links
    digest.links = watched = _WatchedLinks()
    return watched


def _patient_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part waits for the one before it for as long as the test needs: on a busy machine the
    predecessor may take longer than ``CHAIN_WAIT_SECONDS`` to be hashed in, and the part would
    then give up waiting (see ``test_a_part_does_not_wait_long_for_a_slow_predecessor``)."""
    monkeypatch.setattr(local_module, "CHAIN_WAIT_SECONDS", SAFETY_NET_SECONDS)


class _Gated:
    """A part body that stops after its first chunk until ``go`` is set, recording when it
    was first read from (``started`` is set then) and when it was read to its end."""

    def __init__(self, data: bytes, log: list[str], name: str) -> None:
        self.data, self.log, self.name = data, log, name
        self.started = trio.Event()
        self.go = trio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.log.append(f"{self.name} started")
        self.started.set()
        half = len(self.data) // 2
        yield self.data[:half]
        await self.go.wait()
        yield self.data[half:]
        self.log.append(f"{self.name} sent")


async def test_a_part_following_one_being_hashed_in_waits_and_is_chained(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(4 * 65_536 + 7, seed=50)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_chain")
    _patient_chain(monkeypatch)
    read_back = _ReadBack(monkeypatch)
    log: list[str] = []
    bodies = [_Gated(p, log, str(n)) for n, p in enumerate(pieces, start=1)]
    links = _watch_links(storage._running_digest(handle))
    async with trio.open_nursery() as nursery:
        for number, body in enumerate(bodies, start=1):
            piece = pieces[number - 1]
            nursery.start_soon(storage.put_part, handle, number, body, len(piece), sha(piece))
            # The parts arrive in order: each one is there before the next one comes.
            await links.until(partial(links.came, number))
        await bodies[0].started.wait()
        # Only part 1 is being read: every later part waits for the one before it.
        assert sorted(links) == list(range(1, len(pieces) + 1)) and log == ["1 started"]
        for body in bodies:
            body.go.set()
    assert log == [entry for n in range(1, len(pieces) + 1) for entry in (f"{n} started", f"{n} sent")]
    digest = storage._running_digest(handle)
    assert digest.covered == [sha(p) for p in pieces] and not digest.pending and not digest.links
    content = await storage.complete(handle, _records(pieces), "upl_chain", sha(data))
    assert content.sha256 == sha(data) and read_back.bytes == 0


async def test_a_chained_part_done_first_is_committed_right_after_the_one_before(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(3 * 65_536, seed=51)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_pending")
    await _put_all(storage, handle, pieces, [1])
    _patient_chain(monkeypatch)
    read_back = _ReadBack(monkeypatch)
    # Part 2's publication (after its state is final) is held until part 3 is done.
    held = trio.Event()
    original = LocalStorage._publish_part

    async def slow_part_2(number: int, body: Any) -> None:
        await storage.put_part(handle, number, body, len(pieces[number - 1]), sha(pieces[number - 1]))

    def publish(out: Any, directory: Path, number: int, sha256: str) -> None:
        if number == 2:
            trio.from_thread.run(held.wait)
        original(out, directory, number, sha256)

    monkeypatch.setattr(LocalStorage, "_publish_part", staticmethod(publish))
    digest = storage._running_digest(handle)
    links = _watch_links(digest)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_part_2, 2, chunks(pieces[1]))
        await links.until(partial(links.__contains__, 2))  # part 2 is being hashed in
        await slow_part_2(3, chunks(pieces[2]))
        assert digest.count == 1 and 3 in digest.pending  # waiting for part 2's commit
        held.set()
    assert digest.covered == [sha(p) for p in pieces] and not digest.pending
    content = await storage.complete(handle, _records(pieces), "upl_pending", sha(data))
    assert content.sha256 == sha(data) and read_back.bytes == 0


async def test_a_part_whose_predecessor_fails_its_checksum_is_stored_and_read_back(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(3 * 65_536, seed=52)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_fail")
    await _put_all(storage, handle, pieces, [1])
    _patient_chain(monkeypatch)
    read_back = _ReadBack(monkeypatch)
    log: list[str] = []
    wrong = _Gated(sample(65_536, seed=99), log, "2")  # other bytes than part 2's digest says
    third = _Gated(pieces[2], log, "3")
    third.go.set()  # not held: it only records when it is read
    digest = storage._running_digest(handle)
    links = _watch_links(digest)

    async def put_wrong_2() -> None:
        with pytest.raises(ChecksumMismatch):
            await storage.put_part(handle, 2, wrong, 65_536, sha(pieces[1]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put_wrong_2)
        await wrong.started.wait()  # part 2 is being hashed in as it streams
        nursery.start_soon(storage.put_part, handle, 3, third, 65_536, sha(pieces[2]))
        # Part 3 either waits for part 2 (its link stays, its body unread) or gave its link up at once.
        await links.until(partial(links.came, 3))
        assert 3 in links and not third.started.is_set() and digest.count == 1  # part 3 waits for part 2
        wrong.go.set()
    assert digest.count == 1 and not digest.pending  # part 3 was stored, not hashed in
    await _put_all(storage, handle, pieces, [2])
    content = await storage.complete(handle, _records(pieces), "upl_fail", sha(data))
    assert content.sha256 == sha(data) and read_back.bytes == 65_536  # part 3 only


async def test_a_chained_state_on_bytes_not_stored_is_void(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Part 2 is verified and hands its state to part 3, then fails to be stored; another
    # version of part 2 comes: part 3's state, built on the first one, must not be used.
    data = sample(3 * 65_536, seed=53)
    pieces = _pieces(data, 65_536)
    other_2 = sample(65_536, seed=54)
    handle = await storage.create_upload("upl_void")
    await _put_all(storage, handle, pieces, [1])
    _patient_chain(monkeypatch)
    release = trio.Event()
    original = LocalStorage._publish_part
    failed = False

    def publish(out: Any, directory: Path, number: int, sha256: str) -> None:
        nonlocal failed
        if number == 2 and not failed:
            failed = True
            trio.from_thread.run(release.wait)
            raise OSError("disk full")
        original(out, directory, number, sha256)

    monkeypatch.setattr(LocalStorage, "_publish_part", staticmethod(publish))
    digest = storage._running_digest(handle)
    links = _watch_links(digest)

    async def put_2() -> None:
        with pytest.raises(OSError):
            await storage.put_part(handle, 2, chunks(pieces[1]), 65_536, sha(pieces[1]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put_2)
        await links.until(partial(links.__contains__, 2))  # part 2 is being hashed in
        await storage.put_part(handle, 3, chunks(pieces[2]), 65_536, sha(pieces[2]))
        assert 3 in digest.pending
        release.set()
    await storage.put_part(handle, 2, chunks(other_2), 65_536, sha(other_2))
    assert digest.covered == [sha(pieces[0]), sha(other_2)]  # part 3 was not committed onto it
    whole = pieces[0] + other_2 + pieces[2]
    parts = _records([pieces[0], other_2, pieces[2]])
    content = await storage.complete(handle, parts, "upl_void", sha(whole))
    assert content.sha256 == sha(whole)
    assert await _read(storage, "upl_void", 0, len(whole)) == whole


async def test_a_part_does_not_wait_long_for_a_slow_predecessor(
    storage: LocalStorage, autojump_clock: trio.testing.MockClock
) -> None:
    # The clock is faked: it jumps to the end of the chain wait as soon as every task waits.
    data = sample(2 * 65_536, seed=55)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_slow")
    log: list[str] = []
    first = _Gated(pieces[0], log, "1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(storage.put_part, handle, 1, first, 65_536, sha(pieces[0]))
        await first.started.wait()  # part 1 is being hashed in, and stalls
        began = trio.current_time()
        await storage.put_part(handle, 2, chunks(pieces[1]), 65_536, sha(pieces[1]))  # gave up waiting
        assert trio.current_time() - began == pytest.approx(local_module.CHAIN_WAIT_SECONDS)
        assert log == ["1 started"]
        first.go.set()
    content = await storage.complete(handle, _records(pieces), "upl_slow", sha(data))
    assert content.sha256 == sha(data)


# --- prefix digests: a part checked against the content's digest through its end ----------


class _Hashed:
    """Counts the bytes the storage hashes as parts arrive or are read back (every hash stage)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        original = local_module._gather_and_hash

        def counting(hasher: Any, batch: Any) -> None:
            self.bytes += batch.size
            original(hasher, batch)

        monkeypatch.setattr(local_module, "_gather_and_hash", counting)


def _prefix(pieces: Sequence[bytes], number: int) -> str:
    return sha(b"".join(pieces[:number]))


async def _put_prefixed(storage: LocalStorage, handle: str, pieces: Sequence[bytes], number: int) -> StoredPart:
    body = pieces[number - 1]
    return await storage.put_part(handle, number, chunks(body, 50_000), len(body), _prefix(pieces, number), prefix=True)


def _prefix_records(pieces: Sequence[bytes]) -> list[StoredPart]:
    return [
        StoredPart(1, len(pieces[0]), sha(pieces[0])),
        *(StoredPart(n, len(pieces[n - 1]), _prefix(pieces, n), prefix=True) for n in range(2, len(pieces) + 1)),
    ]


async def test_parts_with_prefix_digests_in_order_are_hashed_once(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(5 * 65_536 + 3, seed=60)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_prefix")
    hashed, read_back = _Hashed(monkeypatch), _ReadBack(monkeypatch)
    stored = [await _put_prefixed(storage, handle, pieces, n) for n in range(1, len(pieces) + 1)]
    # Part 1's prefix digest is its own digest: it is stored as such.
    assert stored == _prefix_records(pieces)
    assert hashed.bytes == len(data)  # each byte hashed once, not once for the part and once for the whole
    assert await storage.list_parts(handle) == stored
    names = sorted(p.name for p in (storage.root / "uploads" / handle).iterdir())
    assert names[1] == f"2.prefix-{_prefix(pieces, 2)}.part"
    content = await storage.complete(handle, stored, "upl_prefix", sha(data))
    assert content.sha256 == sha(data) and read_back.bytes == 0
    assert await _read(storage, "upl_prefix", 0, len(data)) == data


async def test_a_wrong_prefix_digest_is_refused_and_nothing_is_stored(storage: LocalStorage) -> None:
    pieces = _pieces(sample(3 * 65_536, seed=61), 65_536)
    handle = await storage.create_upload("upl_prefix_wrong")
    await _put_prefixed(storage, handle, pieces, 1)
    wrong = sample(65_536, seed=62)
    with pytest.raises(ChecksumMismatch) as caught:
        await storage.put_part(handle, 2, chunks(wrong), len(wrong), _prefix(pieces, 2), prefix=True)
    assert caught.value.expected_sha256 == _prefix(pieces, 2)
    assert caught.value.actual_sha256 == sha(pieces[0] + wrong)
    assert [p.number for p in await storage.list_parts(handle)] == [1]
    assert storage._running_digest(handle).count == 1  # the refused bytes were not hashed in


async def test_a_prefix_part_with_no_state_before_it_is_kept_under_its_own_digest(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(3 * 65_536, seed=63)
    pieces = _pieces(data, 65_536)
    handle = await storage.create_upload("upl_prefix_gap")
    await _put_prefixed(storage, handle, pieces, 1)
    # Part 3 before part 2: nothing to check its prefix digest on. It is stored unchecked under
    # its own digest, and the answer says so; even a wrong prefix digest is not held against it.
    third = pieces[2]
    kept = await storage.put_part(handle, 3, chunks(third), len(third), "0" * 64, prefix=True)
    assert kept == StoredPart(3, len(third), sha(third), prefix=False)
    assert await _put_prefixed(storage, handle, pieces, 2) == StoredPart(2, 65_536, _prefix(pieces, 2), prefix=True)
    read_back = _ReadBack(monkeypatch)
    parts = [*_prefix_records(pieces)[:2], kept]
    content = await storage.complete(handle, parts, "upl_prefix_gap", sha(data))
    assert content.sha256 == sha(data) and read_back.bytes == 65_536  # part 3 only


async def test_prefix_parts_after_a_restart_are_read_back_and_checked(tmp_path: Path) -> None:
    data = sample(3 * 65_536 + 5, seed=64)
    pieces = _pieces(data, 65_536)
    before = LocalStorage.open(tmp_path / "objects")
    handle = await before.create_upload("upl_prefix_restart")
    for number in range(1, len(pieces) + 1):
        await _put_prefixed(before, handle, pieces, number)
    # A new process: the running digest is gone. Part 1 is replaced by other bytes, so the
    # prefix digests parts 2.. were checked against no longer fit: a catch-up stops there.
    after = LocalStorage.open(tmp_path / "objects")
    other = sample(65_536, seed=65)
    await after.put_part(handle, 1, chunks(other), len(other), sha(other))
    await after._read_ahead(handle, after._running_digest(handle))
    assert after._running_digest(handle).covered == [sha(other)]
    # Completion reads the rest and checks the whole: the content is what is stored.
    whole = other + b"".join(pieces[1:])
    parts = [StoredPart(1, len(other), sha(other)), *_prefix_records(pieces)[1:]]
    with pytest.raises(ChecksumMismatch):
        await after.complete(handle, parts, "upl_prefix_restart", sha(data))
    content = await after.complete(handle, parts, "upl_prefix_restart", sha(whole))
    assert content.sha256 == sha(whole)
    assert await _read(after, "upl_prefix_restart", 0, len(whole)) == whole
    # Parts 2.. back in a process with the right part 1: each is checked as it is read back.
    again = LocalStorage.open(tmp_path / "objects")
    await again.put_part(handle, 1, chunks(pieces[0]), 65_536, sha(pieces[0]))
    await again._read_ahead(handle, again._running_digest(handle))
    assert again._running_digest(handle).covered == [sha(pieces[0])] + [
        f"prefix-{_prefix(pieces, n)}" for n in range(2, len(pieces) + 1)
    ]


async def test_after_a_restart_a_prefix_part_waits_for_the_parts_before_it_to_be_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = sample(5 * 65_536, seed=66)
    pieces = _pieces(data, 65_536)
    before = LocalStorage.open(tmp_path / "objects")
    handle = await before.create_upload("upl_prefix_wait")
    for number in (1, 2, 3):
        await _put_prefixed(before, handle, pieces, number)
    after = LocalStorage.open(tmp_path / "objects")
    read_back = _ReadBack(monkeypatch)
    async with anyio.create_task_group() as nursery:
        after.start_background(nursery)
        # Part 4 waits (its body unread) while parts 1-3 are read back, then is checked on them;
        # part 5 follows on the chain without anything more read back.
        assert await _put_prefixed(after, handle, pieces, 4) == _prefix_records(pieces)[3]
        assert read_back.bytes == 3 * 65_536
        assert await _put_prefixed(after, handle, pieces, 5) == _prefix_records(pieces)[4]
        content = await after.complete(handle, _prefix_records(pieces), "upl_prefix_wait", sha(data))
        assert content.sha256 == sha(data) and read_back.bytes == 3 * 65_536
        nursery.cancel_scope.cancel()
