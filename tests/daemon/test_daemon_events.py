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


async def test_types_filter_live_and_replayed_events_but_never_gaps(bus: EventBus) -> None:
    await _emit(bus, "a", "queued")
    await bus.commit(lambda conn, emit: emit("job.priority", "a", {"priority": 3}))
    sub = await bus.subscribe(since=0, types=["job.priority"], buffer_size=2)
    bus.publish_transient("job.progress", "a", {})
    await bus.commit(lambda conn, emit: emit("job.priority", "a", {"priority": 4}))
    first, second = await sub.__anext__(), await sub.__anext__()
    assert [(e["type"], e["priority"]) for e in (first, second)] == [("job.priority", 3), ("job.priority", 4)]
    assert sub.wants({"type": "gap", "id": 1}) and not sub.wants({"type": "job.state", "id": 1})


async def test_an_unfiltered_subscriber_sees_every_id_without_a_hole(bus: EventBus) -> None:
    sub = await bus.subscribe()
    start = bus.last_id
    for i in range(50):
        if i % 3:
            bus.publish_transient("job.progress", "a", {"n": i})
        else:
            await _emit(bus, "a", "queued")
    ids = [(await sub.__anext__())["id"] for _ in range(50)]
    assert ids == list(range(start + 1, start + 51))


async def test_a_slow_subscriber_never_slows_commits_or_other_subscribers(bus: EventBus) -> None:
    slow = await bus.subscribe(buffer_size=8)  # never read while events flow
    fast = await bus.subscribe()
    got: list[int] = []
    durable: list[int] = []

    async def read_fast() -> None:
        async for event in fast:
            got.append(event["id"])
            if event["type"] == "job.state":
                durable.append(event["id"])
            if len(got) == 200:
                return

    with trio.fail_after(30):  # a slow subscriber that blocked the bus would hang here
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            for i in range(200):
                if i % 2:
                    await _emit(bus, "a", "running")
                else:
                    bus.publish_transient("job.progress", "a", {"n": i})
    assert got == list(range(got[0], got[0] + 200))
    # The slow one got its first 8, then one gap marker naming everything after them.
    events = [await slow.__anext__() for _ in range(9)]
    assert [e["type"] for e in events[8:]] == ["gap"]
    gap = events[8]
    assert (gap["missed_from"], gap["missed_to"]) == (events[7]["id"] + 1, got[-1])
    # The durable ones it missed are replayed from the store with since.
    missed = [i for i in durable if i >= gap["missed_from"]]
    replay = await bus.subscribe(since=gap["missed_from"] - 1)
    with trio.fail_after(10):
        stored = [(await replay.__anext__())["id"] for _ in missed]
    assert stored == missed
