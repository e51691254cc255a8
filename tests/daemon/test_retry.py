"""A job's retries on a fake clock (``JobContext.retrying`` by its ``RetryPolicy``): the waits
are the policy's backoff, a server's Retry-After is a floor, the deadline ends the retrying,
and only transient failures are retried. Trio's clock is the MockClock; the policy's wall
clock follows it, so the job's retry times and its deadline are read on the same fake time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from dataeraid.config import Settings
from dataeraid.engine.context import JobContext
from dataeraid.engine.retry import RetryPolicy, backoff_delay
from dataeraid.errors import DataeraiError, TransientError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.observe import catalogue
from dataeraid.store import Store

#: The wall clock when a test starts (Unix time); the fake clock's 0.
START = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc).timestamp()
SEED = 1234
SETTINGS = Settings(retry_base_s=1.0, retry_cap_s=8.0)


def wall() -> float:
    return START + trio.current_time()


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    yield Jobs(bus)
    await store.close()


async def running_job(jobs: Jobs, deadline: float | None = None) -> JobContext:
    row: dict[str, Any] = {
        "job_id": "job_1", "kind": "upload", "priority": 0, "params": {}, "local_path": "/data/run42.h5",
        "file_name": "run42.h5", "chunk_size": 1 << 20, "chunk_count": 1, "bytes_total": 1 << 20,
        "client": "pid:1", "deadline": deadline,
    }
    await jobs.create(row)
    await jobs.transition("job_1", "running")
    auth = SimpleNamespace(version=0, current=None)
    return JobContext(await jobs.row("job_1"), jobs, remote=None, auth=auth, settings=SETTINGS,  # type: ignore[arg-type]
                      bandwidth=SimpleNamespace(), retry=RetryPolicy(SETTINGS, random.Random(SEED), wall))


class Failing:
    """An attempt that fails ``failures`` times (with ``error()``), then answers; it notes the
    fake time of every attempt."""

    def __init__(self, failures: float, error: Any = lambda: TransientError("HTTP 503")) -> None:
        self.failures = failures
        self.error = error
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        if len(self.times) <= self.failures:
            raise self.error()
        return "done"

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def retries_counted(ctx: JobContext) -> float:
    return sum(n for _, n in ctx.tally.values(catalogue.RETRIES))


async def test_the_waits_are_the_policys_backoff_and_the_job_runs_again_after(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs)
    attempt = Failing(6)
    assert await ctx.retrying("sending part 1", attempt) == "done"
    same_dice = random.Random(SEED)
    expected = [backoff_delay(n, SETTINGS, None, same_dice) for n in range(6)]
    assert attempt.gaps() == pytest.approx(expected, abs=1e-6)
    # Full jitter: each wait between half the base and the ceiling, which doubles up to the cap.
    for n, wait in enumerate(attempt.gaps()):
        assert 0.5 <= wait <= min(8.0, 2.0**n)
    assert retries_counted(ctx) == 6
    assert ctx.state == "running" and (await jobs.get("job_1"))["state"] == "running"


async def test_retry_after_is_a_floor_and_the_job_says_when_it_tries_again(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs)
    seen: list[dict[str, Any]] = []

    async def attempt() -> str:
        if not seen:
            seen.append(await jobs.get("job_1"))
            raise TransientError("HTTP 429", retry_after=120.0, code="rate_limited")
        seen.append(await jobs.get("job_1"))
        return "done"

    assert await ctx.retrying("asking where to send part 1", attempt) == "done"
    assert trio.current_time() == pytest.approx(120.0, abs=1e-6)  # not the backoff's second or so
    # A Retry-After shows the job waiting from the first failure, with the server's time.
    waiting = seen[1]
    assert waiting["state"] == "waiting_for_network"
    assert waiting["waiting"]["code"] == "rate_limited"
    retry_at = datetime.fromisoformat(waiting["waiting"]["retry_at"].replace("Z", "+00:00")).timestamp()
    assert retry_at == pytest.approx(START + 120.0, abs=1e-3)
    assert ctx.state == "running"


async def test_a_retry_after_beyond_an_hour_waits_an_hour(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs)
    attempt = Failing(1, lambda: TransientError("HTTP 503", retry_after=86400.0))
    await ctx.retrying("completing the upload", attempt)
    assert attempt.gaps() == [pytest.approx(3600.0, abs=1e-6)]


async def test_the_deadline_ends_the_retrying_at_the_first_failure_after_it(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs, deadline=START + 30.0)
    # More failures than 30 s of backoff holds, so a deadline ignored ends in an answer, never a hang.
    # (No trio.fail_after here: with the store's thread working, autojump would jump to it.)
    attempt = Failing(50)
    with pytest.raises(DataeraiError) as failed:
        await ctx.retrying("sending part 1", attempt)
    assert failed.value.code == "timeout"
    assert "deadline passed while retrying: HTTP 503" in failed.value.message
    # Every attempt before the deadline was made; the one after it was the last.
    assert attempt.times[-2] <= 30.0 < attempt.times[-1] <= 30.0 + SETTINGS.retry_cap_s
    assert len(attempt.times) > 3


async def test_a_fatal_error_is_not_retried(jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs)
    attempt = Failing(1, lambda: DataeraiError("not_found", "reading the upload session: HTTP 404"))
    with pytest.raises(DataeraiError) as failed:
        await ctx.retrying("reading the upload session", attempt)
    assert failed.value.code == "not_found"
    assert attempt.times == [0.0] and trio.current_time() == 0.0
    assert retries_counted(ctx) == 0 and ctx.state == "running"


async def test_a_transient_failure_shows_as_waiting_only_from_the_second_on(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs)
    states: list[str] = []

    async def attempt() -> str:
        states.append((await jobs.get("job_1"))["state"])
        if len(states) <= 2:
            raise TransientError("HTTP 503")
        return "done"

    await ctx.retrying("sending part 1", attempt)
    # One blip is not worth telling anyone; the second failure is.
    assert states == ["running", "running", "waiting_for_network"]
