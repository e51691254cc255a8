"""Bounded growth (dataeraid/housekeeping.py): finished jobs and events pruned after their retention,
never one a client waits on or has not seen end, nor one a watched file waits on; freed pages
given back; a queue on a network filesystem warned about."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from dataerai.contract import new_job_id

from dataeraid import schema
from dataeraid.config import Settings
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.housekeeping import DAY_S, tidy
from dataeraid.jobs import Jobs
from dataeraid.store import Store, create_queue_engine, migrate, open_queue, warn_if_network_filesystem

SETTINGS = Settings(job_retention_days=30, event_retention_days=30)


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    yield Jobs(bus)
    await store.close()


def _row(job_id: str | None = None) -> dict[str, Any]:
    return {"job_id": job_id or new_job_id(), "kind": "upload", "params": {"x": "y" * 200}, "chunk_size": 1 << 20,
            "local_path": "/data/run.h5", "file_name": "run.h5", "client": "pid:1"}


async def _finish(jobs: Jobs, job_id: str, state: str = "completed") -> None:
    await jobs.transition(job_id, "running")
    if state == "completed":
        await jobs.store.checkpoint(job_id, 0, 1, "ab" * 32)
    await jobs.transition(job_id, state, fields={"error_code": None if state == "completed" else "io_error"})


async def _ids(jobs: Jobs) -> set[str]:
    return {r["job_id"] for r in await jobs.store.list_jobs()}


async def test_a_finished_job_is_pruned_only_after_a_client_saw_its_end_and_the_retention_passed(jobs: Jobs) -> None:
    seen, unseen, running = [(await jobs.create(_row()))["job_id"] for _ in range(3)]
    await _finish(jobs, seen)
    await _finish(jobs, unseen, "failed")
    await jobs.transition(running, "running")
    assert (await jobs.get(seen))["state"] == "completed"  # a client reads its end: acknowledged now
    now = time.time()
    # Within the retention: nothing goes.
    assert (await tidy(jobs, SETTINGS, now + 29 * DAY_S)).jobs_pruned == 0
    done = await tidy(jobs, SETTINGS, now + 31 * DAY_S)
    assert done.jobs_pruned == 1
    # The one nobody saw end, and the one still running, stay whatever the time.
    assert await _ids(jobs) == {unseen, running}
    # The pruned one's checkpoints went with it.
    assert await jobs.store.checkpoints(seen) == {}


async def test_a_pruned_job_is_not_found_and_says_it_was_pruned(jobs: Jobs) -> None:
    job_id = (await jobs.create(_row()))["job_id"]
    await _finish(jobs, job_id)
    await jobs.get(job_id)
    # Before any prune, even the oldest id possible is simply not found.
    with pytest.raises(DataeraiError) as info:
        await jobs.get("job_" + "0" * 24)
    assert info.value.message == f"no job job_{'0' * 24}"
    await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)
    with pytest.raises(DataeraiError) as info:
        await jobs.get(job_id)
    assert info.value.code == "not_found" and "pruned" in info.value.message and info.value.data["pruned"]
    # An id made after the newest pruned job is simply not found.
    later = f"job_{int((time.time() + 60) * 1000):012x}{'0' * 12}"
    with pytest.raises(DataeraiError) as info:
        await jobs.get(later)
    assert info.value.message == f"no job {later}"


async def test_a_job_a_client_follows_or_a_watched_file_waits_on_is_kept(jobs: Jobs) -> None:
    followed, watched, free = [(await jobs.create(_row()))["job_id"] for _ in range(3)]
    for job_id in (followed, watched, free):
        await _finish(jobs, job_id, "failed")
        await jobs.acknowledge(job_id)

    def file_waiting(conn: Any) -> None:
        conn.execute(schema.watches.insert().values(watch_id="wat_1", root="/d", params={}, created_at=0,
                                                    updated_at=0))
        conn.execute(schema.watch_files.insert().values(watch_id="wat_1", rel="a", state="complete", job_id=watched,
                                                        seen_at=0, updated_at=0))

    await jobs.store.transaction(file_waiting)
    subscription = await jobs.bus.subscribe(jobs=[followed])  # a job.wait, or the SDK waiting
    assert (await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)).jobs_pruned == 1
    assert await _ids(jobs) == {followed, watched}
    subscription.close()
    assert (await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)).jobs_pruned == 1
    assert await _ids(jobs) == {watched}


async def test_a_retried_job_must_be_seen_ending_again(jobs: Jobs) -> None:
    job_id = (await jobs.create(_row()))["job_id"]
    await _finish(jobs, job_id, "failed")
    await jobs.get(job_id)
    await jobs.transition(job_id, "queued")  # job.retry: running again, not finished
    assert (await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)).jobs_pruned == 0
    await _finish(jobs, job_id)
    assert (await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)).jobs_pruned == 0  # nobody saw this end
    await jobs.list_all()  # a listing shows it
    assert (await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)).jobs_pruned == 1


async def test_pruning_goes_in_batches_by_a_seek(jobs: Jobs) -> None:
    made = await jobs.create_many([_row() for _ in range(25)])
    for job in made:
        await _finish(jobs, job["job_id"])
    await jobs.list_all()
    assert await jobs.prune_finished(time.time() + 1, limit=10) == 25
    assert await _ids(jobs) == set()

    def plan(conn: Any) -> str:
        query = sa.select(schema.jobs.c.job_id).where(schema.jobs.c.acknowledged_at.is_not(None),
                                                      schema.jobs.c.acknowledged_at < 5.0)
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        return " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))

    assert "ix_jobs_acknowledged" in await jobs.store.transaction(plan)


async def test_old_events_go_in_batches_reading_only_the_oldest(jobs: Jobs) -> None:
    for _ in range(10):
        await jobs.create(_row())
    events = schema.events
    first_ids = [e["id"] for e in await jobs.store.events_since(0, None)][:7]
    await jobs.store.transaction(lambda conn: conn.execute(
        events.update().where(events.c.event_id.in_(first_ids)).values(time=1.0)))
    assert await jobs.store.prune_events(100.0, limit=3) == 7
    assert await jobs.store.count_events() == 3
    assert await jobs.store.prune_events(100.0, limit=3) == 0


async def test_housekeeping_gives_freed_pages_back_and_the_file_shrinks(jobs: Jobs) -> None:
    made = await jobs.create_many([_row() for _ in range(3000)])
    await jobs.store.transaction(lambda conn: conn.execute(
        schema.jobs.update().values(state="completed", acknowledged_at=1.0)))
    before = (await jobs.store.transaction(Store.space))
    assert before["auto_vacuum"] == 2  # a new queue is incremental from the start
    done = await tidy(jobs, SETTINGS, time.time() + 31 * DAY_S)
    assert done.jobs_pruned == len(made) and done.events_pruned == 3000
    after = await jobs.store.transaction(Store.space)
    assert done.pages_freed > 0 and after["freelist_count"] == 0
    assert after["page_count"] < before["page_count"] / 3
    assert done.file_bytes == after["page_count"] * after["page_size"]


def test_an_old_queue_is_converted_to_incremental_vacuum_at_start(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum=NONE")
        conn.exec_driver_sql("CREATE TABLE filler (x TEXT)")
    engine.dispose()
    migrated = create_queue_engine(path)
    with migrated.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 0
    migrate(migrated)
    migrated.dispose()
    with structlog.testing.capture_logs() as logs:
        engine = open_queue(path)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    engine.dispose()
    assert [e["event"] for e in logs if "vacuum" in e["event"]] == [
        "converting the queue database to incremental vacuum, once (a VACUUM)",
        "the queue database uses incremental vacuum"]


def test_a_big_old_queue_is_left_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataeraid.store as store_module

    path = tmp_path / "queue.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum=NONE")
        conn.exec_driver_sql("CREATE TABLE filler (x TEXT)")
    engine.dispose()
    monkeypatch.setattr(store_module, "VACUUM_AT_START_MAX", 0)
    with structlog.testing.capture_logs() as logs:
        open_queue(path).dispose()
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and "converted at a start" in warned[0]["event"] and warned[0]["limit_mib"] == 0


@pytest.mark.parametrize(("fs_type", "warned"), [("nfs4", True), ("cifs", True), ("lustre", True), ("gpfs", True),
                                                 ("fuse.sshfs", True), ("9p", True), ("ext4", False),
                                                 ("tmpfs", False)])
def test_a_queue_on_a_network_filesystem_is_warned_about(tmp_path: Path, fs_type: str, warned: bool) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
                    f"40 22 0:50 / /home/ada rw - {fs_type} server:/export rw\n")
    with structlog.testing.capture_logs() as logs:
        found = warn_if_network_filesystem(Path("/home/ada/.local/state/dataerai/queue.sqlite3"), str(info))
    assert (found == fs_type) is warned
    lines = [e for e in logs if e["log_level"] == "warning"]
    assert len(lines) == int(warned)
    if warned:
        assert "XDG_STATE_HOME" in lines[0]["event"] and lines[0]["filesystem"] == fs_type


def test_an_upgraded_queue_counts_old_ends_as_seen_and_its_watch_files(tmp_path: Path) -> None:
    from alembic import command

    from dataeraid.store import _alembic_config

    engine = create_queue_engine(tmp_path / "queue.sqlite3")
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        for n, state in enumerate(("completed", "failed", "running")):
            conn.exec_driver_sql(
                "INSERT INTO jobs (job_id, kind, state, seq, created_at, updated_at, params, chunk_size) "
                f"VALUES ('job_{n}', 'upload', '{state}', {n}, 1.0, {10.0 + n}, '{{}}', 1)")
        conn.exec_driver_sql("INSERT INTO watches (watch_id, root, params, created_at, updated_at) "
                             "VALUES ('wat_1', '/d', '{}', 0, 0)")
        for n, state in enumerate(("seen", "seen", "cleaned")):
            conn.exec_driver_sql("INSERT INTO watch_files (watch_id, rel, state, seen_at, updated_at) "
                                 f"VALUES ('wat_1', 'f{n}', '{state}', 0, 0)")
    migrate(engine)
    with engine.connect() as conn:
        seen: dict[str, float | None] = dict(conn.exec_driver_sql("SELECT job_id, acknowledged_at FROM jobs").all())
        counts: dict[str, int] = dict(conn.exec_driver_sql("SELECT state, n FROM watch_file_counts").all())
    engine.dispose()
    assert seen == {"job_0": 10.0, "job_1": 11.0, "job_2": None}
    assert counts == {"seen": 2, "cleaned": 1}


def test_trimming_gives_the_free_pages_malloc_keeps_back_to_the_system() -> None:
    """What the soak's RSS steps were: freed buffers glibc kept (docs/reliability.md, "make soak-long")."""
    from dataeraid.housekeeping import glibc, trim_malloc
    from dataeraid.observe.memory import sample

    if glibc() is None:
        assert trim_malloc() is False
        pytest.skip("malloc_trim is glibc's")
    # 64 KiB buffers sit in malloc's heap (under its mmap threshold); freeing every other one leaves
    # holes no later allocation fills and that the top of the heap cannot shrink past.
    buffers = [b"x" * (64 * 1024) for _ in range(1024)]
    del buffers[::2]
    held = sample()
    assert held["malloc_free"] >= 24 * 1024 * 1024
    assert trim_malloc() is True
    trimmed = sample()
    assert trimmed["anon"] < held["anon"] - 16 * 1024 * 1024
    assert trimmed["malloc_used"] >= len(buffers) * 64 * 1024  # what is in use stays
    assert all(b[-1:] == b"x" for b in buffers)


def test_the_memory_trace_counts_what_sqlite_holds_apart(tmp_path: Path) -> None:
    """malloc's memory in use that grows while tracemalloc's does not is C's: SQLite's page
    cache is one such layer, bounded by its cache_size, and the sample names it."""
    import sqlite3

    from dataeraid.observe.memory import sample

    before = sample()["sqlite_used"]
    if before is None:
        pytest.skip("this Python's sqlite3 library cannot be asked")
    conn = sqlite3.connect(tmp_path / "q.sqlite3")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 2000)  # about 2 MB of pages
    conn.commit()
    assert sample()["sqlite_used"] >= before + 1_000_000  # the pages in its cache
    conn.execute("PRAGMA cache_size = 0")
    conn.execute("PRAGMA shrink_memory")
    conn.close()
    assert sample()["sqlite_used"] < before + 1_000_000


def _grow() -> list[str]:
    return [f"kept {n}" * 10 for n in range(2000)]


def test_the_memory_trace_names_what_grew_between_two_snapshots(tmp_path: Path) -> None:
    import tracemalloc

    from dataeraid.observe.memory import compare

    tracemalloc.start(4)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "before"))
        kept = _grow()
        tracemalloc.take_snapshot().dump(str(tmp_path / "after"))
    finally:
        tracemalloc.stop()
    lines = compare(tmp_path / "before", tmp_path / "after", top=1)
    assert lines[0].split()[0].startswith("+") and float(lines[0].split()[0]) > 100  # KiB
    shown = "\n".join(lines)
    assert "test_growth.py" in shown and 'f"kept {n}"' in shown  # the line that allocated it
    assert len(kept) == 2000


_THREADS_ALLOCATE = """
import sys, threading
from pathlib import Path
from dataeraid.housekeeping import one_malloc_arena
from dataeraid.observe.memory import record
if sys.argv[2] == "one":
    assert one_malloc_arena()
kept = []
def work():
    kept.append(b"x" * (64 * 1024))
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
record(Path(sys.argv[1]), 0)
"""


@pytest.mark.parametrize(("arenas", "most"), [("one", 1), ("default", None)])
def test_the_daemon_s_threads_share_one_malloc_arena(tmp_path: Path, arenas: str, most: int | None) -> None:
    """Each arena keeps its own free top that malloc_trim does not give back: one arena, one top."""
    import os
    import subprocess
    import sys

    from dataeraid.housekeeping import glibc

    if glibc() is None:
        pytest.skip("malloc arenas are glibc's")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    subprocess.run([sys.executable, "-c", _THREADS_ALLOCATE, str(tmp_path), arenas], check=True, env=env)
    (info,) = tmp_path.glob("malloc-*.xml")
    heaps = info.read_text().count("<heap nr=")
    if most is not None:
        assert heaps == most
    else:
        assert heaps > 1  # what the daemon had: a thread's allocations in an arena of its own
