"""How the upload engine reads its source: once for the stream's and the parts' digests
(``upload.hash_stream``), once more for the bodies, and a small stream only once; a file that
changes meanwhile still fails the job; and when the speculative deduplication is worth asking."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from fake_repository import FakeRepository
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stand_ins import Reporter, Unlimited, job_context, nothing

from dataeraid.engine import upload
from dataeraid.engine.accounting import Accounting, LinkRates, MemoryBudget
from dataeraid.errors import DataeraiError
from dataeraid.fileset import BufferPool, FileSet, StreamFile, StreamHasher, lay_out
from dataeraid.observe.tally import Tally

KiB = 1024
MiB = 1024 * KiB


def _write(root: Path, contents: dict[str, bytes]) -> list[StreamFile]:
    """The files written below ``root``, as an upload's manifest records them (with their identity)."""
    files, offset = [], 0
    for path, data in contents.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        st_ = (root / path).stat()
        files.append(StreamFile(path, offset, len(data), st_.st_mtime_ns, st_.st_ino))
        offset += len(data)
    return files


class _Counted(FileSet):
    """A source that counts the bytes read from it, whichever way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        return super().read(offset, length)

    def readinto(self, offset: int, buffer: memoryview) -> None:
        self.bytes_read += len(buffer)
        super().readinto(offset, buffer)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 700), min_size=1, max_size=6), chunk=st.integers(1, 900),
       block=st.integers(1, 300), hash_slice=st.integers(1, 1000), prefix=st.booleans(), in_memory=st.booleans(),
       data=st.data())
def test_one_read_gives_the_stream_the_files_and_the_parts_their_digests(
        tmp_path_factory: pytest.TempPathFactory, sizes: list[int], chunk: int, block: int, hash_slice: int,
        prefix: bool, in_memory: bool, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("source")
    stream_bytes = data.draw(st.binary(min_size=sum(sizes), max_size=sum(sizes)))
    contents, at = {}, 0
    for i, n in enumerate(sizes):
        contents[f"d/f{i}"] = stream_bytes[at:at + n]
        at += n
    files = _write(root, contents)
    count = upload.part_count(len(stream_bytes), chunk)
    held = set(data.draw(st.lists(st.integers(1, count), max_size=3)))
    source = _Counted(str(root), files, "source", max_open=2)
    stream = StreamHasher(files)
    digests = upload.PartDigests(prefix)
    taken: dict[int, tuple[str, memoryview | None]] = {}

    async def run() -> None:
        await upload.hash_stream(source, stream, chunk, digests, held, BufferPool(block))
        for number in range(1, count + 1):
            if number not in held:
                taken[number] = await digests.take(number)

    with mock.patch.object(upload, "SMALL_STREAM_BYTES", len(stream_bytes) if in_memory else -1), \
            mock.patch.object(upload, "HASH_SLICE", hash_slice):
        trio.run(run)
    source.close()

    assert source.bytes_read == len(stream_bytes), "every byte read once, for every digest"
    assert stream.whole.hexdigest() == hashlib.sha256(stream_bytes).hexdigest()
    assert stream.file_sha256 == [hashlib.sha256(body).hexdigest() for body in contents.values()]
    assert sorted(taken) == [n for n in range(1, count + 1) if n not in held]
    for number, (sha256, kept) in taken.items():
        offset, size = upload.part_span(number, len(stream_bytes), chunk)
        covered = stream_bytes[:offset + size] if prefix else stream_bytes[offset:offset + size]
        assert sha256 == hashlib.sha256(covered).hexdigest(), number
        assert (bytes(kept) if kept is not None else None) == (stream_bytes[offset:offset + size] if in_memory
                                                                else None)
    assert digests._digests == {}


def test_a_short_file_is_source_changed_when_read_into_a_buffer(tmp_path: Path) -> None:
    files = _write(tmp_path, {"a": b"x" * 100, "b": b"y" * 100})
    os.truncate(tmp_path / "b", 50)
    source = FileSet(str(tmp_path), lay_out([(f.path, f.size) for f in files]), "source")
    buffer = memoryview(bytearray(200))
    with pytest.raises(DataeraiError) as info:
        source.readinto(0, buffer)
    source.close()
    assert info.value.code == "source_changed"
    assert bytes(buffer[:150]) == b"x" * 100 + b"y" * 50


# --- the engine, end to end against the in-memory repository ------------------------------------------


def _job(root: Path, files: list[StreamFile], chunk: int) -> dict[str, Any]:
    total = sum(f.size for f in files)
    return {"job_id": "job_1", "kind": "upload", "chunk_size": chunk, "file_name": "d", "bytes_total": total,
            "source_size": total, "local_path": str(root / "d"),
            "params": {"source_root": str(root), "source_files": [f.to_json() for f in files]}}


def _context(repo: FakeRepository, job: dict[str, Any], **settings_: Any) -> SimpleNamespace:
    async def save(**fields: Any) -> None:
        job.update(fields)

    store = SimpleNamespace(checkpoint=nothing, cached_digest=nothing, remember_digest=nothing,
                            clear_checkpoints=nothing)
    return job_context(repo, {"parts_per_job": 2, "io_block_size": 16 * KiB, "upload_order": "never",
                              **settings_}, job=job, store=store, save=save)


def _tree(size: int, files: int = 5) -> dict[str, bytes]:
    each = size // files
    return {f"d/f{i}.bin": bytes((i * 7 + j) % 251 for j in range(each + (size - each * files if i == 0 else 0)))
            for i in range(files)}


def _small_or_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  in_memory: bool) -> tuple[dict[str, bytes], list[StreamFile], int]:
    """A 300 KiB tree written to ``tmp_path``, with the in-memory limit just at or just under its size."""
    contents = _tree(300 * KiB)
    files = _write(tmp_path, contents)
    total = sum(len(b) for b in contents.values())
    monkeypatch.setattr(upload, "SMALL_STREAM_BYTES", total if in_memory else total - 1)
    return contents, files, total


@pytest.mark.parametrize("bulk", [False, True])  # bodies through put_part, or from the files (put_part_from)
@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("order", ["never", "always"])  # own digests (as for an object store), prefix digests
async def test_the_source_is_read_once_when_small_and_twice_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool, order: str, bulk: bool) -> None:
    contents, files, total = _small_or_not(tmp_path, monkeypatch, in_memory)
    read: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> _Counted:
        source = _Counted(*args, **kwargs)
        read.append(0)

        def close() -> None:
            read[-1] = source.bytes_read
            FileSet.close(source)

        monkeypatch.setattr(source, "close", close)
        return source

    monkeypatch.setattr(upload, "FileSet", counted)
    # No speculative deduplication, whose ranges would be read too.
    monkeypatch.setattr(upload, "worth_speculating", lambda *_: False)
    repo = FakeRepository(bulk_puts=bulk, read_block=20 * KiB)
    ctx = _context(repo, _job(tmp_path, files, 64 * KiB), upload_order=order)
    result = await upload.run_upload(ctx)  # type: ignore[arg-type]

    stream = b"".join(contents.values())
    assert result["sha256"] == hashlib.sha256(stream).hexdigest()
    (session,) = repo.sessions.values()
    assert b"".join(data for _, data in sorted(session.parts.items())) == stream
    assert {prefix for _, prefix in repo.targets} == {order == "always"}
    # Bodies sent from the files' descriptors (sendfile) are not read into the process at all.
    assert read == [total if in_memory or bulk else 2 * total]
    assert ctx.accounting.progress.bytes_done == total
    if bulk:  # slices sized by the job's own bandwidth limit
        assert repo.burst == ctx.accounting.burst_bytes


async def test_a_small_stream_is_read_from_its_files_while_other_jobs_hold_the_memory_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents, files, total = _small_or_not(tmp_path, monkeypatch, in_memory=True)
    read: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> _Counted:
        source = _Counted(*args, **kwargs)

        def close() -> None:
            read.append(source.bytes_read)
            FileSet.close(source)

        monkeypatch.setattr(source, "close", close)
        return source

    monkeypatch.setattr(upload, "FileSet", counted)
    monkeypatch.setattr(upload, "worth_speculating", lambda *_: False)
    budget = MemoryBudget(total)  # room for this stream alone
    for other_job_holds, reads in ((1, 2 * total), (0, total)):
        repo = FakeRepository()
        ctx = _context(repo, _job(tmp_path, files, 64 * KiB))
        ctx.memory = budget
        with budget.hold(other_job_holds) as granted:
            assert granted
            result = await upload.run_upload(ctx)  # type: ignore[arg-type]
            assert budget.held == other_job_holds  # the job gave back what it held
        assert result["sha256"] == hashlib.sha256(b"".join(contents.values())).hexdigest()
        assert read[-1] == reads  # held: read once; not: read for the digests, then for the bodies


def test_the_memory_budget_grants_what_fits_and_takes_it_back_whatever_happens() -> None:
    budget = MemoryBudget(10)
    with budget.hold(6) as first:
        with budget.hold(5) as second, budget.hold(4) as third:
            assert (first, second, third) == (True, False, True)
            assert budget.held == 10
        with pytest.raises(ValueError), budget.hold(4):
            raise ValueError("the job failed")
        assert budget.held == 6
    assert budget.held == 0


@pytest.mark.parametrize("bulk", [False, True])
@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("order", ["never", "always"])
async def test_a_file_changed_after_it_was_hashed_fails_the_job_and_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool, order: str, bulk: bool) -> None:
    contents, files, _ = _small_or_not(tmp_path, monkeypatch, in_memory)
    repo = FakeRepository(bulk_puts=bulk)
    part_target = repo.part_target
    victim = tmp_path / files[-1].path

    async def change_then_target(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # The digests were taken (a part's target needs one); now the file changes under the upload.
        if victim.read_bytes() == contents[files[-1].path]:
            victim.write_bytes(b"changed!" + contents[files[-1].path][8:])
            # Its mtime moves on even where the clock's tick is coarser than the test.
            os.utime(victim, ns=(files[-1].mtime_ns or 0, (files[-1].mtime_ns or 0) + 1_000_000))
        return await part_target(*args, **kwargs)

    monkeypatch.setattr(repo, "part_target", change_then_target)
    ctx = _context(repo, _job(tmp_path, files, 64 * KiB), upload_order=order)
    with pytest.raises(DataeraiError) as info:
        await upload.run_upload(ctx)  # type: ignore[arg-type]
    assert info.value.code == "source_changed"
    (session,) = repo.sessions.values()
    assert session.state == "aborted" and session.result is None and not repo.contents


# --- when the speculative deduplication is worth asking -------------------------------------------------


def test_speculation_is_asked_only_when_the_rest_takes_a_while_to_send() -> None:
    rate = 100e6
    assert not upload.worth_speculating(int(rate * upload.SPECULATE_ABOVE_SECONDS) - 1, rate)
    assert upload.worth_speculating(int(rate * upload.SPECULATE_ABOVE_SECONDS), rate)
    assert upload.worth_speculating(1, 0.0), "nothing measured yet: ask"


@pytest.mark.parametrize(("rate", "asked"), [(1e12, False), (1.0, True), (0.0, True)])
async def test_the_engine_asks_to_deduplicate_only_when_the_rest_is_slow_to_send(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: float, asked: bool) -> None:
    contents = _tree(300 * KiB)
    files = _write(tmp_path, contents)
    monkeypatch.setattr(Accounting, "sending_rate", lambda _self, _window: rate)
    repo = FakeRepository()
    challenges: list[str] = []
    challenge = repo.dedup_challenge

    async def counted(upload_id: str, sha256: str) -> dict[str, Any]:
        challenges.append(sha256)
        return await challenge(upload_id, sha256)

    monkeypatch.setattr(repo, "dedup_challenge", counted)
    # This fake takes parts at once: held back until the stream is hashed, every part is
    # still unsent when the engine decides, as on a link slower than the disk.
    hashed = trio.Event()
    hash_stream, part_target = upload.hash_stream, repo.part_target

    async def hash_then_tell(*args: Any, **kwargs: Any) -> None:
        await hash_stream(*args, **kwargs)
        hashed.set()

    async def after_the_hash(*args: Any, **kwargs: Any) -> dict[str, Any]:
        await hashed.wait()
        return await part_target(*args, **kwargs)

    monkeypatch.setattr(upload, "hash_stream", hash_then_tell)
    monkeypatch.setattr(repo, "part_target", after_the_hash)
    ctx = _context(repo, _job(tmp_path, files, 64 * KiB))
    result = await upload.run_upload(ctx)  # type: ignore[arg-type]
    stream = b"".join(contents.values())
    assert result["sha256"] == hashlib.sha256(stream).hexdigest() and "deduplicated" not in result
    assert challenges == ([hashlib.sha256(stream).hexdigest()] if asked else [])


async def test_the_rate_speculation_goes_by_is_measured_over_a_long_enough_time(
        mock_clock: trio.testing.MockClock) -> None:
    accounting = Accounting(Reporter(), 10.0, Unlimited(), Tally(), "upload")
    source = FileSet("/nonexistent", [StreamFile("f", 0, 100_000)], "source")
    accounting.begin(100_000, 1, source, "f")
    mock_clock.jump(5.0)  # waiting for a first digest: not sending
    await accounting.moved(4000, 0, 0)  # a first burst
    mock_clock.jump(0.1)
    await accounting.moved(1000, 0, 4000)
    assert accounting.sending_rate(0.25) == 0.0, "0.1 s of sending says little"
    mock_clock.jump(0.15)
    await accounting.moved(1000, 0, 5000)
    assert accounting.sending_rate(0.25) == pytest.approx(6000 / 0.25), "over the time bytes moved"
    mock_clock.jump(10.0)
    await accounting.moved(4000, 0, 6000)  # a whole progress interval later: the moving average
    assert accounting.sending_rate(0.25) == pytest.approx(10_000 / 15.25)


async def test_until_a_job_has_a_rate_of_its_own_it_goes_by_the_last_jobs(
        mock_clock: trio.testing.MockClock) -> None:
    rates = LinkRates()
    source = FileSet("/nonexistent", [StreamFile("f", 0, 8 * MiB)], "source")
    tiny = Accounting(Reporter(), 10.0, Unlimited(), Tally(), "upload", rates)
    tiny.begin(1000, 1, source, "f")
    await tiny.moved(500, 0, 0)
    mock_clock.jump(0.5)
    await tiny.moved(500, 0, 500)
    tiny.finish()
    assert rates.last("upload") == 0.0, "1,000 bytes say nothing of the link"

    first = Accounting(Reporter(), 10.0, Unlimited(), Tally(), "upload", rates)
    first.begin(8 * MiB, 1, source, "f")
    await first.moved(4 * MiB, 0, 0)
    mock_clock.jump(2.0)
    await first.moved(4 * MiB, 0, 4 * MiB)
    first.finish()
    assert (rates.last("upload"), rates.last("download")) == (8 * MiB / 2.0, 0.0)

    second = Accounting(Reporter(), 10.0, Unlimited(), Tally(), "upload", rates)
    second.begin(8 * MiB, 1, source, "f")
    assert second.sending_rate(0.25) == 8 * MiB / 2.0, "nothing moved yet: the last job's rate"
    assert not upload.worth_speculating(MiB // 2, second.sending_rate(0.25)), "0.5 MiB at 4 MiB/s: 0.125 s"
    assert upload.worth_speculating(2 * MiB, second.sending_rate(0.25))
    await second.moved(MiB, 0, 0)
    mock_clock.jump(0.5)
    await second.moved(MiB, 0, MiB)
    assert second.sending_rate(0.25) == pytest.approx(2 * MiB / 0.5), "then its own"


def test_a_directorys_cache_key_is_its_recorded_manifest(tmp_path: Path) -> None:
    # The key is hashed from the manifest enqueue recorded, as each file's ``to_json``
    # gives it: digests cached before keep being found, and a changed identity misses.
    files = _write(tmp_path, {"d/a.bin": b"a" * 10, "d/b/c.bin": b"c" * 20})
    recorded: list[list[Any]] = [list(f.to_json()) for f in files]
    job: dict[str, Any] = {"params": {"source_files": recorded, "source_root": str(tmp_path)},
                           "file_name": "d", "local_path": str(tmp_path / "d")}
    identity = upload.source_identity(job, str(tmp_path), files)
    assert identity is not None
    assert identity.manifest == hashlib.sha256(json.dumps([f.to_json() for f in files]).encode()).hexdigest()
    assert identity.size == 30
    moved = [*recorded[:1], [*recorded[1][:3], recorded[1][3] + 1]]
    other = upload.source_identity({**job, "params": {**job["params"], "source_files": moved}}, str(tmp_path), files)
    assert other is not None and other.manifest != identity.manifest


def test_whole_files_are_read_past_the_descriptor_cache_and_checked_as_they_are_opened(tmp_path: Path) -> None:
    contents = {f"d/f{i}": bytes([i]) * (i + 1) for i in range(10)}
    files = _write(tmp_path, contents)
    source = FileSet(str(tmp_path), files, "source", max_open=4)
    buffer = memoryview(bytearray(source.size))
    source.readinto(0, buffer)
    assert bytes(buffer) == b"".join(contents.values())
    assert not source._open  # each opened, read and closed: none kept, none evicted
    # A range that starts or ends inside a file goes through the cache, as before.
    source.readinto(files[3].offset + 1, buffer[:files[3].size])
    assert list(source._open) == [3, 4]
    (tmp_path / "d/f7").write_bytes(b"changed!")
    with pytest.raises(DataeraiError) as info:
        source.readinto(0, memoryview(bytearray(source.size)))
    source.close()
    assert info.value.code == "source_changed"


@pytest.mark.parametrize("in_memory", [True, False])
async def test_a_file_changed_before_the_job_started_fails_it_and_commits_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: bool) -> None:
    # A stream read into memory is not stat'ed up front: each file is checked as it is read.
    contents, files, _ = _small_or_not(tmp_path, monkeypatch, in_memory)
    checked: list[int] = []

    def check_sources(self: FileSet) -> None:
        checked.append(1)

    monkeypatch.setattr(FileSet, "check_sources", check_sources)
    victim = tmp_path / files[-1].path
    victim.write_bytes(b"changed!" + contents[files[-1].path][8:])
    os.utime(victim, ns=(files[-1].mtime_ns or 0, (files[-1].mtime_ns or 0) + 1_000_000))
    repo = FakeRepository()
    with pytest.raises(DataeraiError) as info:
        await upload.run_upload(_context(repo, _job(tmp_path, files, 64 * KiB)))  # type: ignore[arg-type]
    assert info.value.code == "source_changed"
    (session,) = repo.sessions.values()
    assert session.state == "aborted" and session.result is None and not repo.contents
    assert checked == ([] if in_memory else [1])


@pytest.mark.parametrize("order", ["never", "always"])
async def test_a_new_session_of_a_small_stream_is_hashed_while_its_request_is_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str) -> None:
    contents, files, _ = _small_or_not(tmp_path, monkeypatch, True)
    repo = FakeRepository()
    read = trio.Event()
    read_and_hash = upload._read_and_hash

    def reading(*args: Any) -> None:
        read_and_hash(*args)
        trio.from_thread.run_sync(read.set)

    monkeypatch.setattr(upload, "_read_and_hash", reading)
    create_upload = repo.create_upload

    async def create_once_read(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with trio.fail_after(10):
            await read.wait()  # the first part was read and hashed before the session was known
        return await create_upload(*args, **kwargs)

    monkeypatch.setattr(repo, "create_upload", create_once_read)
    result = await upload.run_upload(_context(repo, _job(tmp_path, files, 64 * KiB), upload_order=order))  # type: ignore[arg-type]
    stream = b"".join(contents.values())
    assert result["sha256"] == hashlib.sha256(stream).hexdigest()
    (session,) = repo.sessions.values()
    assert b"".join(data for _, data in sorted(session.parts.items())) == stream
    # The session said which digests its targets take; the parts went with those.
    assert {prefix for _, prefix in repo.targets} == {order == "always"}


@pytest.mark.parametrize("takes_them", [True, False])
async def test_the_parts_etags_are_told_at_completion_or_left_out_where_the_repository_refuses_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, takes_them: bool) -> None:
    """Every part went straight to a store that answered its ETag: the completion tells them
    all, sparing the repository a question to the store; a repository from before told
    parts refuses the field, and the completion goes again without it."""
    monkeypatch.setattr(upload, "worth_speculating", lambda *_: False)
    contents = _tree(300 * KiB)
    files = _write(tmp_path, contents)
    repo = FakeRepository(own_part_urls=False)
    repo.takes_told_parts = takes_them
    ctx = _context(repo, _job(tmp_path, files, 64 * KiB), upload_order="never")
    result = await upload.run_upload(ctx)  # type: ignore[arg-type]
    stream = b"".join(contents.values())
    assert result["sha256"] == hashlib.sha256(stream).hexdigest()
    parts = {n: stream[(n - 1) * 64 * KiB:n * 64 * KiB] for n in range(1, 6)}
    told = {n: f'"{hashlib.md5(data).hexdigest()}"' for n, data in parts.items()}
    assert repo.told_etags == ([told] if takes_them else [told, None])
