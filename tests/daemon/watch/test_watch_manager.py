"""A watched file and its upload job move together (docs/watch.md, "Exactly once").

A file becomes ``queued`` in the transaction that creates its job (``Jobs.create_many(...,
also=...)``), and the job's end moves the file in the job's own transaction (the
``WatchManager``'s end listener on ``Jobs``): a failure anywhere in between leaves both or
neither. Real store, event bus and jobs; no watcher runs (the manager is not served).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dataeraid import schema
from dataeraid.config import LiveSettings, Settings
from dataeraid.errors import DataeraiError
from dataeraid.events import Emit, EventBus
from dataeraid.jobs import Jobs
from dataeraid.store import Store
from dataeraid.watch import ledger, watcher
from dataeraid.watch.ledger import Observation
from dataeraid.watch.manager import WatchManager

STABLE_S = 45.0


@dataclass
class Parts:
    store: Store
    jobs: Jobs
    manager: WatchManager
    watch_id: str

    async def rows(self) -> dict[str, dict[str, Any]]:
        query = sa.select(ledger.W).where(ledger.W.c.watch_id == self.watch_id)
        return await self.store.transaction(lambda c: {r["rel"]: dict(r) for r in c.execute(query).mappings()})

    async def complete(self, rel: str) -> None:
        """A file seen and judged complete, as the watcher records it."""

        def write(conn: Connection) -> None:
            ledger.observe(conn, self.watch_id, [Observation(rel, 10, 20, 30)], STABLE_S, 0.0)
            assert ledger.judge(conn, self.watch_id, rel, 0.0, version=(10, 20, 30), complete=True,
                                recheck_at=0.0) == "complete"

        await self.store.transaction(write)

    async def queue(self, rel: str, job_id: str) -> None:
        await self.jobs.create_many([job_row(job_id, rel, self.watch_id)], also=partial(
            watcher._mark_queued, watch_id=self.watch_id, queued=[(rel, job_id)]))

    async def file_events(self) -> list[dict[str, Any]]:
        query = sa.select(schema.events.c.payload).where(schema.events.c.type == "watch.file")
        stored = await self.store.transaction(lambda c: [r[0] for r in c.execute(query)])
        return [p if isinstance(p, dict) else json.loads(p) for p in stored]


def job_row(job_id: str, rel: str, watch_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "kind": "upload", "priority": 0, "params": {"watch_id": watch_id},
            "local_path": f"/data/{rel}", "file_name": rel, "source_size": 10, "source_mtime_ns": 20,
            "source_inode": 30, "chunk_size": 1 << 20, "chunk_count": 1, "bytes_total": 10,
            "client": f"watch:{watch_id}"}


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    jobs = Jobs(bus)
    manager = WatchManager(jobs, None, Settings())  # type: ignore[arg-type]  # no watcher runs: no remote
    root = tmp_path / "watched"
    root.mkdir()
    watch = await manager.add(str(root), {"project_id": "prj_1", "complete_when": f"stable:{STABLE_S:g}s"}, None)
    yield Parts(store, jobs, manager, watch["watch_id"])
    await store.close()


async def test_a_reload_of_watch_max_attempts_applies_to_the_next_failure(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    jobs = Jobs(bus)
    live = LiveSettings(Settings(watch_max_attempts=5))
    manager = WatchManager(jobs, None, live)  # type: ignore[arg-type]  # no watcher runs: no remote
    (tmp_path / "watched").mkdir()
    watch = await manager.add(str(tmp_path / "watched"), {"project_id": "prj_1"}, None)
    parts = Parts(store, jobs, manager, watch["watch_id"])
    try:
        live.replace(Settings(watch_max_attempts=1))
        await parts.complete("a.tif")
        await parts.queue("a.tif", "job_1")
        await jobs.transition("job_1", "running")
        await jobs.transition("job_1", "failed", fields={"error_code": "io_error", "error_message": "EIO"})
        row = (await parts.rows())["a.tif"]
        assert (row["state"], row["attempts"]) == ("quarantined", 1)  # with the 5 of the start: "complete"
    finally:
        await store.close()


async def test_a_file_is_queued_in_the_transaction_that_creates_its_job(parts: Parts) -> None:
    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_1")
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["job_id"]) == ("queued", "job_1")
    assert (await parts.jobs.row("job_1"))["state"] == "queued"


async def test_a_failure_while_queueing_leaves_neither_job_nor_queued_file(parts: Parts) -> None:
    await parts.complete("a.tif")

    def also(conn: Connection, emit: Emit) -> None:
        watcher._mark_queued(conn, emit, watch_id=parts.watch_id, queued=[("a.tif", "job_1")])
        raise RuntimeError("the daemon died here")

    with pytest.raises(RuntimeError):
        await parts.jobs.create_many([job_row("job_1", "a.tif", parts.watch_id)], also=also)
    assert (await parts.rows())["a.tif"]["state"] == "complete"
    with pytest.raises(DataeraiError):
        await parts.jobs.row("job_1")


async def test_a_job_end_moves_its_file_with_the_job(parts: Parts) -> None:
    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_1")
    await parts.jobs.transition("job_1", "running")
    assert (await parts.rows())["a.tif"]["state"] == "queued"  # not an end
    await parts.jobs.transition("job_1", "failed", fields={"error_code": "io_error", "error_message": "EIO"})
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["attempts"], row["error_code"]) == ("complete", 1, "io_error")

    await parts.queue("a.tif", "job_2")
    await parts.jobs.transition("job_2", "running")
    await parts.jobs.transition("job_2", "failed", fields={"error_code": "source_changed", "error_message": "moved"})
    row = (await parts.rows())["a.tif"]
    # Seen again, looked at once the watch's own window passed; no attempt counted.
    assert (row["state"], row["attempts"], row["job_id"]) == ("seen", 1, None)
    assert row["retry_at"] == pytest.approx(row["stable_since"] + STABLE_S)

    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_3")
    await parts.jobs.transition("job_3", "running")
    await parts.jobs.transition("job_3", "completed", fields={
        "asset_id": "ast_1", "content_id": "cnt_1", "sha256": "ab" * 32})
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["asset_id"], row["content_id"], row["sha256"]) == (
        "uploaded", "ast_1", "cnt_1", "ab" * 32)


async def test_a_cancelled_watch_job_quarantines_its_file_with_a_stored_event(parts: Parts) -> None:
    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_1")
    assert await parts.file_events() == []
    await parts.jobs.transition("job_1", "cancelled", fields={"error_code": "cancelled", "error_message": "asked"})
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["error_code"]) == ("quarantined", "cancelled")
    [event] = await parts.file_events()
    assert (event["watch_id"], event["path"], event["state"], event["previous_state"]) == (
        parts.watch_id, "a.tif", "quarantined", "queued")
    watch = await parts.manager.get(parts.watch_id)
    assert watch["files"]["quarantined"] == 1


async def test_a_ledger_that_cannot_record_the_end_keeps_the_job_from_ending(
        parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_1")
    await parts.jobs.transition("job_1", "running")

    def broken(*_: Any) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(ledger, "record_job_end", broken)
    with pytest.raises(RuntimeError):
        await parts.jobs.transition("job_1", "completed", fields={
            "asset_id": "ast_1", "content_id": "cnt_1", "sha256": "ab" * 32})
    assert (await parts.jobs.row("job_1"))["state"] == "running"
    assert (await parts.rows())["a.tif"]["state"] == "queued"


async def test_the_end_of_a_job_that_is_no_watchs_leaves_the_ledger_alone(parts: Parts) -> None:
    await parts.complete("a.tif")
    before = await parts.rows()
    await parts.jobs.create(job_row("job_plain", "other.tif", "none") | {"params": {}, "client": "pid:1"})
    await parts.jobs.transition("job_plain", "running")
    await parts.jobs.transition("job_plain", "completed", fields={
        "asset_id": "ast_9", "content_id": "cnt_9", "sha256": "cd" * 32})
    assert await parts.rows() == before


async def failed_once(parts: Parts) -> dict[str, Any]:
    """a.tif's upload job_1 failed; the file is ``complete`` again, waiting out its backoff."""
    await parts.complete("a.tif")
    await parts.queue("a.tif", "job_1")
    await parts.jobs.transition("job_1", "running")
    await parts.jobs.transition("job_1", "failed", fields={"error_code": "io_error", "error_message": "EIO"})
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["job_id"]) == ("complete", "job_1")
    return row


async def test_a_file_whose_backoff_is_over_goes_again_in_the_job_that_failed(parts: Parts) -> None:
    """One job per version, however often it fails: a second job could make a second asset."""
    row = await failed_once(parts)
    assert await watcher.retry_failed_job(parts.jobs, parts.watch_id, row) is True
    assert (await parts.jobs.row("job_1"))["state"] == "queued"
    assert [j["job_id"] for j in await parts.jobs.list_all()] == ["job_1"]
    again = (await parts.rows())["a.tif"]
    assert (again["state"], again["job_id"], again["attempts"]) == ("queued", "job_1", 1)
    await parts.jobs.transition("job_1", "running")
    await parts.jobs.transition("job_1", "completed", fields={
        "asset_id": "ast_1", "content_id": "cnt_1", "sha256": "ab" * 32})
    assert (await parts.rows())["a.tif"]["state"] == "uploaded"


async def test_a_job_retried_by_hand_during_the_backoff_is_the_one_the_file_waits_for(parts: Parts) -> None:
    row = await failed_once(parts)
    await parts.jobs.transition("job_1", "queued", only_from=("failed",))  # `dataerai job retry job_1`
    assert await watcher.retry_failed_job(parts.jobs, parts.watch_id, row) is True
    assert (await parts.rows())["a.tif"]["state"] == "queued"
    assert [j["job_id"] for j in await parts.jobs.list_all()] == ["job_1"]


async def test_a_retried_job_that_completes_before_the_backoff_is_over_is_recorded(parts: Parts) -> None:
    await failed_once(parts)
    await parts.jobs.transition("job_1", "queued", only_from=("failed",))
    await parts.jobs.transition("job_1", "running")
    await parts.jobs.transition("job_1", "completed", fields={
        "asset_id": "ast_1", "content_id": "cnt_1", "sha256": "ab" * 32})
    row = (await parts.rows())["a.tif"]
    assert (row["state"], row["asset_id"], row["job_id"]) == ("uploaded", "ast_1", "job_1")


async def test_a_file_whose_failed_job_is_gone_gets_a_new_one(parts: Parts) -> None:
    row = await failed_once(parts)
    assert await watcher.retry_failed_job(parts.jobs, parts.watch_id, {**row, "job_id": "job_pruned"}) is False
