"""The event bus: ids, durable replay, transient progress, gap markers."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dataeraid.events import EventBus
from dataeraid.store import Store


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EventBus]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    yield bus
    await store.close()


async def _emit(bus: EventBus, job_id: str, state: str) -> None:
    await bus.commit(lambda conn, emit: emit("job.state", job_id, {"state": state}))


async def test_ids_increase_across_durable_and_transient_events(bus: EventBus) -> None:
    sub = await bus.subscribe()
    await _emit(bus, "a", "queued")
    assert bus.publish_transient("job.progress", "a", {"bytes_done": 1})
    await _emit(bus, "a", "running")
    ids = []
    for _ in range(3):
        ids.append((await sub.__anext__())["id"])
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_replay_since_then_live_without_duplicates(bus: EventBus) -> None:
    for state in ("queued", "running", "completed"):
        await _emit(bus, "a", state)
    await _emit(bus, "b", "queued")
    sub = await bus.subscribe(since=1, jobs=["a"])
    await _emit(bus, "a", "queued")  # live, after the subscription
    got = [await sub.__anext__() for _ in range(3)]
    assert [e["state"] for e in got] == ["running", "completed", "queued"]
    assert all(e["job_id"] == "a" for e in got)
    assert [e["id"] for e in got] == sorted(e["id"] for e in got)


async def test_ids_keep_increasing_after_a_restart(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "q.sqlite3")
    first = EventBus(store)
    await first.start()
    for _ in range(3):
        first.publish_transient("job.progress", "a", {})
    last_before = first.last_id
    await store.close()
    store = await Store.open(tmp_path / "q.sqlite3")
    second = EventBus(store)
    await second.start()
    await _emit(second, "a", "queued")
    assert second.last_id > last_before
    await store.close()


async def test_a_slow_subscriber_gets_a_gap_and_never_blocks(bus: EventBus) -> None:
    slow = await bus.subscribe(buffer_size=4)
    for i in range(10):
        bus.publish_transient("job.progress", "a", {"n": i})
    got = [await slow.__anext__() for _ in range(5)]
    assert [e["type"] for e in got] == ["job.progress"] * 4 + ["gap"]
    gap = got[-1]
    assert gap["missed_from"] == got[3]["id"] + 1
    assert gap["missed_to"] == bus.last_id
    # After the gap, it follows live events again.
    bus.publish_transient("job.progress", "a", {"n": 99})
    assert (await slow.__anext__())["n"] == 99


async def test_progress_is_skipped_while_a_commit_is_in_flight(bus: EventBus) -> None:
    sub = await bus.subscribe()
    gate = threading.Event()

    def write(conn: Any, emit: Any) -> None:
        gate.wait(10)
        emit("job.state", "a", {"state": "queued"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bus.commit, write)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.publish_transient("job.progress", "a", {}) is False
        gate.set()
    assert bus.publish_transient("job.progress", "a", {}) is True
    first, second = await sub.__anext__(), await sub.__anext__()
    assert (first["type"], second["type"]) == ("job.state", "job.progress")
    assert second["id"] == first["id"] + 1


async def test_old_events_are_pruned_and_replay_starts_after_them(bus: EventBus) -> None:
    import time

    await _emit(bus, "a", "queued")
    cutoff = time.time() + 1
    assert await bus.store.prune_events(cutoff) == 1
    await _emit(bus, "a", "running")
    sub = await bus.subscribe(since=0, jobs=["a"])
    assert (await sub.__anext__())["state"] == "running"
