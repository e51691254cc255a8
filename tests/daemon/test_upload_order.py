"""Part bodies sent in order to the repository's own part endpoint (``upload_order``): a part's
body starts once the previous part's body was sent, while that part's acknowledgement overlaps
with it; a failed attempt never holds the next part back. The server is a stand-in."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from stand_ins import job_context

from dataeraid import upload
from dataeraid.errors import TransientError
from dataeraid.fileset import FileSet, StreamFile

PART = 64 * 1024
BLOCK = 16 * 1024
T = TypeVar("T")


#: A cap on a stand-in's wait for another event: reached only when the order under test is broken.
SAFETY_NET_SECONDS = 30.0


class _Server:
    """The repository's part endpoint. ``after`` holds an event back until another one happened
    (``{"1 acked": "2 put"}``: part 1 is acknowledged only once part 2's body began), so that an
    order the sender must allow is tested as such, not as a race against the clock."""

    def __init__(self, own: bool, fail_once: set[int] | None = None, after: dict[str, str] | None = None) -> None:
        self.events: list[str] = []
        self.own = own
        self.fail_once = set(fail_once or ())
        self.after = dict(after or {})
        self._recorded = trio.Event()

    async def _record(self, event: str) -> None:
        awaited = self.after.get(event)
        if awaited is not None:
            with trio.move_on_after(SAFETY_NET_SECONDS):
                while awaited not in self.events:
                    await self._recorded.wait()
        self.events.append(event)
        self._recorded.set()
        self._recorded = trio.Event()

    async def part_target(self, _upload_id: str, number: int, sha256: str, size: int, *,
                          prefix: bool = False) -> dict[str, Any]:
        return {"url": f"http://repo/api/v1/uploads/u/parts/{number}", "sha256": sha256, "size": size}

    def is_own_part_url(self, url: str) -> bool:
        return self.own

    async def put_part(self, target: dict[str, Any], body: AsyncIterator[bytes], _what: str) -> dict[str, Any]:
        number = int(target["url"].rsplit("/", 1)[1])
        await self._record(f"{number} put")
        async for _ in body:
            if number in self.fail_once:
                self.fail_once.discard(number)
                await self._record(f"{number} failed")
                raise TransientError("connection reset")
            await trio.lowlevel.checkpoint()
        await self._record(f"{number} sent")
        await self._record(f"{number} acked")  # after the server's fsync and publication
        return {"sha256": target["sha256"], "size": target["size"]}


async def _run(tmp_path: Path, server: _Server, parts: int, order: str, held: dict[int, Any] | None = None) -> None:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * (PART * parts // 256))
    source = FileSet(str(tmp_path), [StreamFile("f.bin", 0, PART * parts)], "source")

    ctx = job_context(server, {"parts_per_job": 3, "io_block_size": BLOCK, "upload_order": order},
                      job={"chunk_size": PART})
    progress = SimpleNamespace(chunks_done=0, add=lambda *a: None, chunk_finished=lambda: None)
    senders = upload._Senders(ctx, source, "upl_1", progress, parts)  # type: ignore[arg-type]
    try:
        await senders._send_all(held or {})
    finally:
        source.close()


def _before(events: list[str], first: str, second: str) -> bool:
    return events.index(first) < events.index(second)


async def test_bodies_go_one_after_the_other_and_acknowledgements_overlap(tmp_path: Path) -> None:
    server = _Server(own=True, after={"1 acked": "2 put"})
    await _run(tmp_path, server, 4, "auto")
    events = server.events
    for number in range(2, 5):
        assert _before(events, f"{number - 1} sent", f"{number} put")
    assert _before(events, "2 put", "1 acked")  # part 1's acknowledgement overlaps part 2's body


async def test_held_parts_are_skipped_in_the_order(tmp_path: Path) -> None:
    server = _Server(own=True)
    await _run(tmp_path, server, 4, "auto", held={2: {"number": 2}})
    assert "2 put" not in server.events
    assert _before(server.events, "1 sent", "3 put") and _before(server.events, "3 sent", "4 put")


async def test_a_failed_attempt_releases_the_next_part(tmp_path: Path) -> None:
    server = _Server(own=True, fail_once={1}, after={"1 sent": "2 put"})
    await _run(tmp_path, server, 3, "auto")
    events = server.events
    # Part 2 went as soon as part 1's first attempt failed, not after its retry.
    assert _before(events, "1 failed", "2 put") and _before(events, "2 put", "1 sent")
    assert {f"{n} acked" for n in (1, 2, 3)} <= set(events)


@pytest.mark.parametrize(("own", "order"), [(False, "auto"), (True, "never")])
async def test_object_store_targets_or_never_go_in_parallel(tmp_path: Path, own: bool, order: str) -> None:
    server = _Server(own=own, after={"1 sent": "2 put"})
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


class _PrefixServer(_Server):
    """Checks prefix digests like the repository's directory storage: part 2 as if the parts
    before it were not at hand (its own digest comes back instead), part 3 wrongly once."""

    def __init__(self, data: bytes) -> None:
        super().__init__(own=True)
        self.data = data
        self.targets: list[tuple[int, bool]] = []
        self.wrong_once = {3}

    async def part_target(self, _upload_id: str, number: int, sha256: str, size: int, *,
                          prefix: bool = False) -> dict[str, Any]:
        self.targets.append((number, prefix))
        return await super().part_target(_upload_id, number, sha256, size)

    async def put_part(self, target: dict[str, Any], body: AsyncIterator[bytes], _what: str) -> dict[str, Any]:
        ack = await super().put_part(target, body, _what)
        number = int(target["url"].rsplit("/", 1)[1])
        own = hashlib.sha256(self.data[(number - 1) * PART : number * PART]).hexdigest()
        if number == 2:
            return {"size": PART, "sha256": own, "prefix_sha256": None}
        if number in self.wrong_once:
            self.wrong_once.discard(number)
            return {"size": PART, "sha256": None, "prefix_sha256": "0" * 64}
        return {"size": PART, "sha256": own if number == 1 else None, "prefix_sha256": ack["sha256"]}


async def test_prefix_digests_are_sent_and_an_unchecked_part_is_compared_with_its_own_digest(
    tmp_path: Path,
) -> None:
    parts = 4
    data = bytes(range(256)) * (PART * parts // 256)
    (tmp_path / "f.bin").write_bytes(data)
    stat = (tmp_path / "f.bin").stat()
    source = FileSet(str(tmp_path), [StreamFile("f.bin", 0, len(data), stat.st_mtime_ns, stat.st_ino)], "source")
    prefixes = upload.PrefixDigests()
    for number in range(1, parts + 1):
        prefixes.record(number, hashlib.sha256(data[: number * PART]).hexdigest())
    checkpoints: list[tuple[int, str]] = []

    async def checkpoint(_job_id: str, number: int, _size: int, sha256: str) -> None:
        checkpoints.append((number, sha256))

    server = _PrefixServer(data)
    ctx = job_context(server, {"parts_per_job": 2, "io_block_size": BLOCK, "upload_order": "auto"},
                      job={"chunk_size": PART}, store=SimpleNamespace(checkpoint=checkpoint))
    progress = SimpleNamespace(chunks_done=0, add=lambda *a: None, chunk_finished=lambda: None)
    senders = upload._Senders(ctx, source, "upl_1", progress, parts, prefixes)  # type: ignore[arg-type]
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
    prefixes = upload.PrefixDigests()
    taken: list[str] = []
    async with trio.open_nursery() as nursery:
        async def take() -> None:
            taken.append(await prefixes.take(2))

        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        prefixes.record(1, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        prefixes.record(2, "b")
    assert taken == ["b"]
    assert await prefixes.take(1) == "a"
    assert prefixes._digests == {}
