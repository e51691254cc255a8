"""Part bodies sent in order to the repository's own part endpoint (``upload_order``): a part's
body starts once the previous part's body was sent, while that part's acknowledgement overlaps
with it; a failed attempt never holds the next part back. The repository is the shared fake."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from fake_repository import FakeRepository
from stand_ins import begun, job_context

from dataeraid.engine import upload
from dataeraid.fileset import FileSet, StreamFile

PART = 64 * 1024
BLOCK = 16 * 1024
T = TypeVar("T")


async def _run(tmp_path: Path, server: FakeRepository, parts: int, order: str,
               held: dict[int, Any] | None = None) -> upload._Senders:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * (PART * parts // 256))
    source = FileSet(str(tmp_path), [StreamFile("f.bin", 0, PART * parts)], "source")
    session = await server.create_upload({"size": source.size, "part_size": PART})
    ctx = begun(job_context(server, {"parts_per_job": 3, "io_block_size": BLOCK, "upload_order": order},
                            job={"chunk_size": PART}), source, parts)
    senders = upload._Senders(ctx, source, session["upload_id"], parts)  # type: ignore[arg-type]
    try:
        await senders._send_all(held or {})
    finally:
        source.close()
    return senders


def _before(events: list[str], first: str, second: str) -> bool:
    return events.index(first) < events.index(second)


async def test_bodies_go_one_after_the_other_and_acknowledgements_overlap(tmp_path: Path) -> None:
    server = FakeRepository(after={"1 acked": "2 put"})
    await _run(tmp_path, server, 4, "auto")
    events = server.events
    for number in range(2, 5):
        assert _before(events, f"{number - 1} sent", f"{number} put")
    assert _before(events, "2 put", "1 acked")  # part 1's acknowledgement overlaps part 2's body


async def test_held_parts_are_skipped_in_the_order(tmp_path: Path) -> None:
    server = FakeRepository()
    await _run(tmp_path, server, 4, "auto", held={2: {"number": 2}})
    assert "2 put" not in server.events
    assert _before(server.events, "1 sent", "3 put") and _before(server.events, "3 sent", "4 put")


async def test_a_failed_attempt_releases_the_next_part(tmp_path: Path) -> None:
    server = FakeRepository(fail_put_once={1}, after={"1 sent": "2 put"})
    await _run(tmp_path, server, 3, "auto")
    events = server.events
    # Part 2 went as soon as part 1's first attempt failed, not after its retry.
    assert _before(events, "1 failed", "2 put") and _before(events, "2 put", "1 sent")
    assert {f"{n} acked" for n in (1, 2, 3)} <= set(events)


@pytest.mark.parametrize(("own", "order"), [(False, "auto"), (True, "never")])
async def test_object_store_targets_or_never_go_in_parallel(tmp_path: Path, own: bool, order: str) -> None:
    server = FakeRepository(own_part_urls=own, after={"1 sent": "2 put"})
    await _run(tmp_path, server, 3, order)
    assert _before(server.events, "2 put", "1 sent")


def test_own_part_urls_are_recognised() -> None:
    from dataeraid.credentials import Credentials
    from dataeraid.remote import Remote

    auth = SimpleNamespace(current=Credentials("http://127.0.0.1:8080/", "t"))
    remote = Remote(auth, None)  # type: ignore[arg-type]
    assert remote.is_own_part_url("http://127.0.0.1:8080/api/v1/uploads/upl_1/parts/3?sha256=ab&size=1")
    assert not remote.is_own_part_url("http://s3.local:8333/bucket/key?partNumber=3&uploadId=x")
    assert not remote.is_own_part_url("http://127.0.0.1:8080/api/v1/assets/a")
    assert not Remote(SimpleNamespace(current=None), None).is_own_part_url(  # type: ignore[arg-type]
        "http://127.0.0.1:8080/api/v1/uploads/upl_1/parts/3")


async def test_prefix_digests_are_sent_and_an_unchecked_part_is_compared_with_its_own_digest(
    tmp_path: Path,
) -> None:
    parts = 4
    data = bytes(range(256)) * (PART * parts // 256)
    (tmp_path / "f.bin").write_bytes(data)
    stat = (tmp_path / "f.bin").stat()
    source = FileSet(str(tmp_path), [StreamFile("f.bin", 0, len(data), stat.st_mtime_ns, stat.st_ino)], "source")
    prefixes = upload.PartDigests(prefix=True)
    for number in range(1, parts + 1):
        prefixes.record(number, hashlib.sha256(data[: number * PART]).hexdigest())
    checkpoints: list[tuple[int, str]] = []

    async def checkpoint(_job_id: str, number: int, _size: int, sha256: str) -> None:
        checkpoints.append((number, sha256))

    # Part 2 as if the parts before it were not at hand (its own digest comes back instead),
    # part 3 acknowledged wrongly once.
    server = FakeRepository(forget_before={2}, wrong_ack_once={3})
    session = await server.create_upload({"size": len(data), "part_size": PART})
    ctx = begun(job_context(server, {"parts_per_job": 2, "io_block_size": BLOCK, "upload_order": "auto"},
                            job={"chunk_size": PART}, store=SimpleNamespace(checkpoint=checkpoint)), source, parts)
    senders = upload._Senders(ctx, source, session["upload_id"], parts, prefixes)  # type: ignore[arg-type]
    try:
        await senders._send_all({})
    finally:
        source.close()
    # Every target asked for a prefix digest; part 3 went twice (its first answer was wrong).
    assert sorted(server.targets) == [(1, True), (2, True), (3, True), (3, True), (4, True)]
    assert sorted(checkpoints) == [
        (1, hashlib.sha256(data[:PART]).hexdigest()),
        (2, hashlib.sha256(data[PART : 2 * PART]).hexdigest()),  # its own digest, compared with the source's
        (3, hashlib.sha256(data[: 3 * PART]).hexdigest()),
        (4, hashlib.sha256(data).hexdigest()),
    ]


async def test_prefix_digests_are_taken_once_as_they_are_recorded() -> None:
    prefixes = upload.PartDigests(prefix=True)
    taken: list[tuple[str, memoryview | None]] = []
    async with trio.open_nursery() as nursery:
        async def take() -> None:
            taken.append(await prefixes.take(2))

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        prefixes.record(1, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        prefixes.record(2, "b")
    assert taken == [("b", None)]
    assert await prefixes.take(1) == ("a", None)
    assert prefixes._digests == {}


@pytest.mark.parametrize(("own", "held", "told"), [(False, None, True), (False, {2: {"number": 2}}, False),
                                                   (True, None, False)])
async def test_the_etags_a_store_answered_are_kept_for_the_completion_when_it_answered_every_part(
    tmp_path: Path, own: bool, held: dict[int, Any] | None, told: bool
) -> None:
    """Every part's, or none: a part held from before (a restart) has no ETag known here, and
    the repository's own part endpoint answers none."""
    server = FakeRepository(own_part_urls=own)
    senders = await _run(tmp_path, server, 3, "never", held=held)
    data = bytes(range(256)) * (PART * 3 // 256)
    expected = {n: f'"{hashlib.md5(data[(n - 1) * PART:n * PART]).hexdigest()}"' for n in (1, 2, 3)}
    assert senders.etags == (expected if told else None)
