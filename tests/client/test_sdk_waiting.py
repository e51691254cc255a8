"""What a caller learns while a transfer waits: ``on_state`` with the job and why it
waits, a timeout that names the state and reason, and the last progress event's rate."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
from dataerai import DaemonTimeoutError, DataeraiClient, Job, JobWaiting, ProgressEvent
from dataerai.aio import AsyncDataeraiClient
from sdk_fake_daemon import FakeDaemon, Plan

REFUSED = "cannot reach http://127.0.0.1:8080: connection refused"


def waiting(retry_at: str | None, reason: str = REFUSED, code: str = "unavailable") -> dict[str, Any]:
    return {"code": code, "reason": reason, "retry_at": retry_at}


def wait_then_go_on(daemon: FakeDaemon) -> None:
    """Drive the one job the way the daemon does when the repository is down a while:
    waiting (a state event), a failed retry (a progress event), running again, completed."""
    daemon.wait_for(lambda: bool(daemon.jobs) and daemon.jobs[sorted(daemon.jobs)[-1]]["state"] == "running")
    # Only once the client follows the job's events and has read the job itself (it subscribes, then
    # reads): states changed before that are not replayed to it, and a change between the two would
    # reach it twice, as the job it reads and as the event after.
    daemon.wait_for(lambda: daemon.answered_after("events.subscribe", "job.get"))
    job_id = sorted(daemon.jobs)[-1]
    first = waiting("2026-11-25T14:00:08.000000Z")
    daemon.set_state(job_id, "waiting_for_network", waiting=first,
                     error={"code": "unavailable", "message": REFUSED})
    daemon.broadcast({"type": "job.progress", "job_id": job_id, "bytes_done": 1000, "bytes_total": 3000,
                      "chunk_index": 0, "chunk_count": 3, "rate_bps": 0.0, "file_index": 0,
                      "file_name": "run42.h5", "state": "waiting_for_network",
                      "waiting": waiting("2026-11-25T14:00:24.000000Z")})
    daemon.set_state(job_id, "running", waiting=None, error=None)
    daemon.finish(job_id)


def test_on_state_tells_the_wait_with_its_reason_then_the_run_then_the_end(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    (tmp_path / "f").write_bytes(b"x")
    seen: list[Job] = []
    progress: list[ProgressEvent] = []
    driver = threading.Thread(target=wait_then_go_on, args=(daemon,))
    driver.start()
    result = client.upload(tmp_path / "f", title="t", owner_type="project", owner_id="p",
                           on_state=seen.append, on_progress=progress.append)
    driver.join()

    seen = [job for job in seen if job.state != "queued"]  # the wait may find it queued, or running already
    told = [(job.state, job.waiting) for job in seen]
    at = datetime(2026, 11, 25, 14, 0, 0, tzinfo=timezone.utc)
    assert told == [
        ("running", None),
        ("waiting_for_network", JobWaiting("unavailable", REFUSED, at.replace(second=8))),
        ("waiting_for_network", JobWaiting("unavailable", REFUSED, at.replace(second=24))),
        ("running", None),
        ("completed", None),
    ]
    assert seen[-1].asset_id == result.asset_id
    assert seen[2].bytes_done == 1000 and seen[2].raw["waiting"]["retry_at"] == "2026-11-25T14:00:24.000000Z"
    assert seen[1].raw["waiting"]["retry_at"] == "2026-11-25T14:00:08.000000Z"
    waits = [p for p in progress if p.state == "waiting_for_network"]
    assert len(waits) == 1 and waits[0].rate_bps == 0.0 and waits[0].waiting is not None


def test_on_state_is_told_of_a_job_that_waits_before_the_wait_begins_and_of_its_end(
        client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    job = client.download("ast_1", "/tmp/x", wait=False)
    daemon.set_state(job.job_id, "waiting_for_auth", error={"code": "auth_required", "message": "not logged in"},
                     waiting=waiting(None, "not logged in: run `dataerai auth login`", "auth_required"))
    seen: list[Job] = []
    threading.Thread(target=lambda: (daemon.wait_for(lambda: len(seen) == 1), daemon.finish(job.job_id))).start()
    done = client.wait(job.job_id, on_state=seen.append, timeout_s=10)
    assert done.state == "completed"
    assert [j.state for j in seen] == ["waiting_for_auth", "completed"]
    assert seen[0].waiting == JobWaiting("auth_required", "not logged in: run `dataerai auth login`", None)


def test_a_timeout_names_the_state_and_why_the_job_waits(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    job = client.download("ast_1", "/tmp/x", wait=False)
    daemon.set_state(job.job_id, "waiting_for_network", error={"code": "unavailable", "message": REFUSED},
                     waiting=waiting("2026-11-25T14:00:08.000000Z"))
    with pytest.raises(DaemonTimeoutError) as info:
        client.wait(job.job_id, timeout_s=0.2)
    error = info.value
    assert error.transfer_id == job.job_id
    assert f"it is waiting_for_network: {REFUSED} (next retry at 2026-11-25T14:00:08Z)" in error.message
    assert error.data["state"] == "waiting_for_network"
    assert error.data["waiting"] == waiting("2026-11-25T14:00:08Z")
    assert error.data["error"] == {"code": "unavailable", "message": REFUSED}


def test_a_timeout_names_the_last_error_of_a_job_that_does_not_wait(
        client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    job = client.download("ast_1", "/tmp/x", wait=False)
    daemon.set_state(job.job_id, "paused", error={"code": "unavailable", "message": "sending part 2: HTTP 503"})
    with pytest.raises(DaemonTimeoutError) as info:
        client.wait(job.job_id, timeout_s=0.2)
    assert "it is paused, last error: [unavailable] sending part 2: HTTP 503" in info.value.message


def test_the_last_progress_event_carries_the_daemons_average_rate(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    seen: list[ProgressEvent] = []
    client.upload(tmp_path / "f", title="t", owner_type="project", owner_id="p", on_progress=seen.append)
    assert seen[-1].completed and seen[-1].bytes_done == 3000
    assert seen[-1].rate_bps == 2_500_000.0  # the daemon's last event for the run, at 100 %


def test_a_job_that_ended_before_the_wait_reckons_its_rate_over_its_life(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.plan = Plan(before_subscribe=True, progress=0)
    (tmp_path / "f").write_bytes(b"x")
    seen: list[ProgressEvent] = []
    client.upload(tmp_path / "f", title="t", owner_type="project", owner_id="p", on_progress=seen.append)
    (last,) = seen
    assert last.completed and last.rate_bps == 3000 / 1.0  # created 14:00:00, updated 14:00:01


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_the_async_twin_calls_on_state_in_the_loop_thread(
        daemon: FakeDaemon, tmp_path: Path, library: str) -> None:
    daemon.plan = Plan(outcome="hang", progress=0)
    (tmp_path / "f").write_bytes(b"x")
    seen: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    async def scenario() -> None:
        async with AsyncDataeraiClient(socket_path=daemon.socket_path, auto_start=False) as client:
            await client.upload(tmp_path / "f", title="t", owner_type="project", owner_id="p",
                                on_state=lambda job: seen.append((job.state, threading.get_ident() == loop_thread)))

    driver = threading.Thread(target=wait_then_go_on, args=(daemon,))
    driver.start()
    if library == "asyncio":
        asyncio.run(scenario())
    else:
        trio.run(scenario)
    driver.join()
    assert [state for state, _ in seen if state != "queued"] == [
        "running", "waiting_for_network", "waiting_for_network", "running", "completed"]
    assert all(in_loop for _, in_loop in seen)
