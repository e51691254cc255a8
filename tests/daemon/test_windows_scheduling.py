"""The scheduler and transfer windows, on Trio's MockClock with the wall clock tied to it:
a job outside its window is ``scheduled`` and says when it starts; the scheduler wakes at
the opening by itself, stops a running job when its window closes, and the user's
pause, resume, cancel and retry keep their meaning."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dataeraid.config import Settings
from dataeraid.engine.context import JobContext
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.scheduler import WINDOW_RECHECK_S, Scheduler
from dataeraid.store import Store

UTC = dt.timezone.utc
#: Thursday 2026-12-03 12:00 UTC: the wall clock when a test starts.
NOON = dt.datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0


def job_row(job_id: str, window: str | None) -> dict[str, Any]:
    return {"job_id": job_id, "kind": "upload", "priority": 0, "params": {}, "local_path": "/data/run42.h5",
            "file_name": "run42.h5", "chunk_size": 1 << 20, "chunk_count": 4, "bytes_total": 4 << 20,
            "client": "pid:1", "window": window}


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    jobs = Jobs(bus)
    origin = trio.current_time()
    jobs.wall = lambda: NOON + trio.current_time() - origin
    jobs.zone = UTC
    yield jobs
    await store.close()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Trio's clock, jumping ahead only once every task (the store's thread too) was idle a while:
    a jump during a store transaction would let time race past the moments under test."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def until_state(jobs: Jobs, job_id: str, state: str) -> dict[str, Any]:
    for _ in range(600):
        job = await jobs.get(job_id)
        if job["state"] == state:
            return job
        await trio.sleep(1)
    raise AssertionError(f"{job_id} never became {state}")


class Engine:
    """Records when each run started and whether it was stopped; a run lasts ``hold_s`` (forever if None)."""

    def __init__(self, hold_s: float | None = None) -> None:
        self.hold_s = hold_s
        self.starts: list[float] = []
        self.stopped = 0
        self.started = trio.Event()
        self.stopped_event = trio.Event()

    async def __call__(self, ctx: JobContext) -> dict[str, Any]:
        self.starts.append(trio.current_time())
        self.started.set()
        self.started = trio.Event()
        try:
            if self.hold_s is None:
                await trio.sleep_forever()
            await trio.sleep(self.hold_s)
        except trio.Cancelled:
            self.stopped += 1
            self.stopped_event.set()
            self.stopped_event = trio.Event()
            raise
        return {"asset_id": "ast_1", "content_id": "cnt_1"}


def scheduler(jobs: Jobs, engine: Engine) -> Scheduler:
    return Scheduler(jobs, remote=None, auth=None, settings=Settings(),  # type: ignore[arg-type]
                     engines={"upload": engine, "download": engine})


async def state_of(jobs: Jobs, job_id: str) -> dict[str, Any]:
    return await jobs.get(job_id)


async def test_a_job_outside_its_window_is_scheduled_and_says_when_it_starts(jobs: Jobs) -> None:
    job = await jobs.create(job_row("job_1", "20:00-06:00"))
    assert job["state"] == "scheduled"
    assert job["window"] == "20:00-06:00"
    assert job["waiting"] == {"code": "outside_window", "reason": "outside its transfer window (20:00-06:00)",
                              "retry_at": "2026-12-03T20:00:00.000000Z"}
    inside = await jobs.create(job_row("job_2", "10:00-14:00"))
    assert inside["state"] == "queued" and inside["waiting"] is None
    anytime = await jobs.create(job_row("job_3", None))
    assert anytime["state"] == "queued" and anytime["window"] is None


async def test_the_scheduler_starts_it_when_the_window_opens_and_stops_it_when_it_closes(
        jobs: Jobs, clock: trio.testing.MockClock) -> None:
    engine = Engine(hold_s=None)  # longer than any window
    await jobs.create(job_row("job_1", "20:00-06:00"))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler(jobs, engine).serve)
        await engine.started.wait()
        # Not a moment early: 20:00 is eight hours after noon.
        assert engine.starts == [8 * HOUR]
        assert (await state_of(jobs, "job_1"))["state"] == "running"
        # The window closes at 06:00: the job stops at once and waits for 20:00 again.
        await engine.stopped_event.wait()
        assert trio.current_time() == 18 * HOUR
        job = await state_of(jobs, "job_1")
        assert job["state"] == "scheduled"
        assert job["waiting"]["retry_at"] == "2026-12-04T20:00:00.000000Z"
        await engine.started.wait()
        assert engine.starts == [8 * HOUR, 32 * HOUR]
        nursery.cancel_scope.cancel()


async def test_a_job_that_ends_inside_its_window_completes(
        jobs: Jobs, clock: trio.testing.MockClock) -> None:
    engine = Engine(hold_s=HOUR)
    await jobs.create(job_row("job_1", "Thu 13:00-15:00"))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler(jobs, engine).serve)
        await engine.started.wait()
        await trio.sleep(HOUR)
        await until_state(jobs, "job_1", "completed")
        assert engine.starts == [HOUR] and engine.stopped == 0
        nursery.cancel_scope.cancel()


async def test_a_queued_job_whose_window_closed_before_a_slot_freed_is_scheduled_not_run(
        jobs: Jobs, clock: trio.testing.MockClock) -> None:
    engine = Engine(hold_s=2 * HOUR)
    await jobs.create(job_row("job_1", None))
    await jobs.create(job_row("job_2", "12:00-13:00"))  # open now, closed once job_1 is done
    sched = Scheduler(jobs, remote=None, auth=None, settings=Settings(max_active_jobs=1),  # type: ignore[arg-type]
                      engines={"upload": engine})
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.serve)
        # Waited for, not slept: on a busy machine the clock may jump ahead while the store's
        # thread works, so job_1 can start a little after 12:00; it still ends after 13:00.
        if not engine.starts:
            await engine.started.wait()
        assert len(engine.starts) == 1 and engine.starts[0] < HOUR
        await trio.sleep(2 * HOUR)
        job = await until_state(jobs, "job_2", "scheduled")
        assert len(engine.starts) == 1  # job_2 never ran
        assert job["waiting"]["retry_at"] == "2026-12-04T12:00:00.000000Z"
        nursery.cancel_scope.cancel()


async def test_pause_resume_cancel_and_retry_of_a_scheduled_job(jobs: Jobs) -> None:
    await jobs.create(job_row("job_1", "20:00-06:00"))
    assert (await jobs.transition("job_1", "paused"))["state"] == "paused"
    # Resumed outside its window: back to scheduled, not queued, with its start time.
    resumed = await jobs.transition("job_1", "queued", only_from=("paused",))
    assert resumed["state"] == "scheduled" and resumed["waiting"]["retry_at"] == "2026-12-03T20:00:00.000000Z"
    with pytest.raises(DataeraiError) as refused:
        await jobs.transition("job_1", "queued", only_from=("failed", "cancelled"))  # retry: it has not ended
    assert refused.value.code == "conflict"
    cancelled = await jobs.transition("job_1", "cancelled")
    assert cancelled["state"] == "cancelled" and cancelled["waiting"] is None
    assert (await jobs.transition("job_1", "queued", only_from=("failed", "cancelled")))["state"] == "scheduled"


async def test_open_windows_requeues_only_the_jobs_whose_window_opened(jobs: Jobs) -> None:
    await jobs.create(job_row("job_1", "20:00-06:00"))
    await jobs.create(job_row("job_2", "22:00-23:00"))
    assert await jobs.open_windows() == NOON + 8 * HOUR
    jobs.wall = lambda: NOON + 8 * HOUR + 1
    assert await jobs.open_windows() == NOON + 10 * HOUR
    assert (await jobs.get("job_1"))["state"] == "queued"
    assert (await jobs.get("job_2"))["state"] == "scheduled"


async def test_a_wall_clock_that_jumps_ahead_is_noticed_within_the_recheck(
        jobs: Jobs, clock: trio.testing.MockClock) -> None:
    engine = Engine(hold_s=None)
    skew = [0.0]
    jobs.wall = lambda: NOON + trio.current_time() + skew[0]
    await jobs.create(job_row("job_1", "20:00-06:00"))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler(jobs, engine).serve)
        await trio.sleep(60)
        skew[0] = 8 * HOUR  # the machine slept, or its clock was set: it is 20:01 now
        await engine.started.wait()
        assert 60 < engine.starts[0] <= WINDOW_RECHECK_S
        nursery.cancel_scope.cancel()


async def test_a_jobs_params_are_decoded_only_for_its_engine_when_it_starts(jobs: Jobs) -> None:
    # An upload's params hold its manifest (620 KB for 10,000 files): the queue's reads leave them out.
    manifest = {"source_files": [[f"d/f{i}", i, i, i] for i in range(100)]}
    await jobs.create({**job_row("job_1", None), "params": manifest})
    store = jobs.store
    assert "params" not in (await store.runnable_jobs((), per_client=4))[0]
    assert "params" not in (await store.list_jobs())[0]
    assert (await store.get_job("job_1") or {})["params"] == manifest  # the whole row, when asked for
    assert await store.job_params("job_1") == manifest and await store.job_params("job_2") is None
    seen: list[dict[str, Any]] = []

    async def engine(ctx: JobContext) -> dict[str, Any]:
        seen.append(ctx.job["params"])
        return {"asset_id": "ast_1", "content_id": "cnt_1"}

    async with trio.open_nursery() as nursery:
        await nursery.start(Scheduler(jobs, remote=None, auth=None, settings=Settings(),  # type: ignore[arg-type]
                                      engines={"upload": engine, "download": engine}).serve)
        await until_state(jobs, "job_1", "completed")
        nursery.cancel_scope.cancel()
    assert seen == [manifest]
