"""The upload engine's senders as the speculative deduplication drives them (``dataeraid.upload._Senders``):
paused, their errors dropped while a proof is out, stopped with parts in flight. The parts are
"sent" by a stand-in for ``_send_part``, so the timing is the test's, not a server's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from fake_repository import FakeRepository
from stand_ins import begun, job_context

from dataeraid.engine import upload
from dataeraid.errors import DataeraiError, first_error
from dataeraid.fileset import FileSet, StreamFile

PART = 64 * 1024


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **_fields: Any) -> None:
        self.lines.append(event)


def _senders(tmp_path: Path, parts: int) -> tuple[upload._Senders, Any]:
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * (PART * parts // 256))
    source = FileSet(str(tmp_path), [StreamFile("f.bin", 0, PART * parts)], "source")
    ctx = begun(job_context(FakeRepository(), {"parts_per_job": 2, "io_block_size": PART},
                            job={"chunk_size": PART}, log=_Log()), source, parts)
    return upload._Senders(ctx, source, "upl_1", parts), ctx  # type: ignore[arg-type]


class _Parts:
    """Stands in for ``_send_part``: a part is in flight until the test ends it (:meth:`end`),
    well or with a ``conflict`` (as when the proof completed the session meanwhile)."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.done: list[int] = []
        self._endings: dict[int, tuple[trio.Event, list[bool]]] = {}
        self._changed = trio.Event()
        self.auto = False

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Any) -> None:
        while not predicate():
            await self._changed.wait()

    def _ending(self, number: int) -> tuple[trio.Event, list[bool]]:
        return self._endings.setdefault(number, (trio.Event(), []))

    def end(self, number: int, *, fail: bool = False) -> None:
        event, failed = self._ending(number)
        failed.append(fail)
        event.set()

    async def send(self, ctx: Any, _source: Any, _upload_id: str, plan: upload.PartPlan, _turn: Any = None) -> None:
        self.started.append(plan.number)
        self._poke()
        event, failed = self._ending(plan.number)
        if not self.auto:
            await event.wait()
        if failed and failed[0]:
            raise DataeraiError("conflict", f"part {plan.number}: the session is completed")
        self.done.append(plan.number)
        ctx.accounting.chunk_done()
        self._poke()


async def _settled() -> None:
    """Every task blocked for a while: the part hasher's threads are done, so a sender that
    could start a part has started it."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


async def test_a_part_refused_while_a_proof_is_out_does_not_fail_the_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _Parts()
    monkeypatch.setattr(upload, "_send_part", parts.send)
    senders, ctx = _senders(tmp_path, 6)
    async with trio.open_nursery() as nursery:
        senders.start(nursery, held={})
        await parts.until(lambda: parts.started == [1, 2])
        senders.pause()
        senders.tolerating = True  # as while a proof is out
        parts.end(1)
        await parts.until(lambda: parts.done == [1])
        await _settled()
        assert parts.started == [1, 2], "paused: no new part starts"
        parts.end(2, fail=True)  # the proof completed the session: the part is refused
        await senders.stopped.wait()
        assert not senders.finished
    # The nursery ended without an error: the refused part was dropped, and said so.
    assert parts.done == [1]
    assert any("ignored" in line for line in ctx.log.lines)


async def test_a_refused_proof_lets_the_paused_senders_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _Parts()
    monkeypatch.setattr(upload, "_send_part", parts.send)
    senders, _ = _senders(tmp_path, 5)
    async with trio.open_nursery() as nursery:
        senders.start(nursery, held={2: {"number": 2}})
        await parts.until(lambda: parts.started == [1, 3])
        senders.pause()
        senders.tolerating = True
        parts.end(1)
        parts.end(3)
        await parts.until(lambda: sorted(parts.done) == [1, 3])
        await _settled()
        assert sorted(parts.started) == [1, 3] and not senders.stopped.is_set()
        senders.tolerating = False  # no_match: go on
        parts.auto = True
        senders.resume()
    # Every part not held was sent exactly once: the parts in flight were never cut off.
    assert sorted(parts.done) == [1, 3, 4, 5] and sorted(parts.started) == [1, 3, 4, 5]
    assert senders.finished


async def test_stopping_cuts_the_parts_in_flight_without_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _Parts()
    monkeypatch.setattr(upload, "_send_part", parts.send)
    senders, _ = _senders(tmp_path, 6)
    async with trio.open_nursery() as nursery:
        senders.start(nursery, held={})
        await parts.until(lambda: parts.started == [1, 2])
        parts.end(1)
        await parts.until(lambda: parts.started == [1, 2, 3])
        await senders.stop()  # parts 2 and 3 in flight
        assert senders.stopped.is_set() and not senders.finished
    assert parts.done == [1]


async def test_an_error_with_no_proof_out_fails_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = _Parts()
    monkeypatch.setattr(upload, "_send_part", parts.send)
    senders, _ = _senders(tmp_path, 3)
    with pytest.raises(DataeraiError) as caught, first_error():  # as the engine wraps its nursery
        async with trio.open_nursery() as nursery:
            senders.start(nursery, held={})
            await parts.until(lambda: parts.started == [1, 2])
            parts.end(1, fail=True)
    assert caught.value.code == "conflict"
