"""The persisted counters: job ends counted in their own transaction, bytes and retries flushed,
all of it read back by a new tally on the same queue (a restart)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.observe import catalogue
from dataeraid.observe.tally import Tally
from dataeraid.store import Store


async def test_counts_survive_a_new_tally_on_the_same_queue(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "q.sqlite3")
    bus = EventBus(store)
    await bus.start()
    jobs = Jobs(bus)
    tally = await Tally.loaded(store)
    jobs.add_end_listener(tally.record_job_end, tally.job_ended)
    row: dict[str, Any] = {"job_id": "job_000000000000000000000001", "kind": "download", "params": {},
                           "chunk_size": 1 << 20, "client": "t"}
    await jobs.create(row)
    await jobs.transition(row["job_id"], "running")
    await jobs.transition(row["job_id"], "completed", fields={"files": [{"local_path": "/a", "size": 1},
                                                                        {"local_path": "/b", "size": 2}]})
    spent: list[int] = []

    async def spend(n: int) -> None:
        spent.append(n)

    counted = tally.counting(SimpleNamespace(spend=spend), "download")
    await counted.spend(1000)
    await counted.spend(24)
    tally.retried("download", "unavailable")
    assert spent == [1000, 24]
    # Job ends are in the table already; bytes and retries only once flushed.
    assert await store.transaction(Tally.read) == {
        ("dataerai_jobs_finished", ("download", "completed")): 1.0,
        ("dataerai_transfer_files", ("download",)): 2.0,
    }
    await tally.flush(store)
    await tally.flush(store)  # nothing new: nothing doubled

    again = await Tally.loaded(store)
    for metric in catalogue.COUNTERS:
        assert list(again.values(metric)) == list(tally.values(metric)), metric.name
    assert dict(again.values(catalogue.TRANSFER_BYTES)) == {("download",): 1024.0}
    assert dict(again.values(catalogue.RETRIES)) == {("download", "unavailable"): 1.0}
    await store.close()


async def test_serve_writes_the_last_counts_when_cancelled(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "q.sqlite3")
    tally = Tally()
    async with trio.open_nursery() as nursery:
        await nursery.start(tally.serve, store)
        tally.retried("upload", "rate_limited")
        nursery.cancel_scope.cancel()
    assert await store.transaction(Tally.read) == {("dataerai_retries", ("upload", "rate_limited")): 1.0}
    await store.close()
