"""Job control end to end: priorities, fairness across clients, pause/resume/cancel/retry,
``wait=False`` handles, timeouts that leave the job running, and a client killed mid-wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError, DaemonTimeoutError, Job
from stack import Stack, make_file, wait_for

MiB = 1024 * 1024


@pytest.fixture
def one_slot(make_stack: Any) -> Stack:
    """One job at a time, 4 MiB/s. A test that steers the queue around a running job holds the
    server meanwhile (``Stack.server_held``), so that the job cannot end before it is steered."""
    stack: Stack = make_stack(daemon_config={"max_active_jobs": 1, "bandwidth_limit_bps": 4 * MiB})
    return stack


def _upload(client: Any, stack: Stack, path: Path, **kw: Any) -> Job:
    job: Job = client.upload(path, title=path.name, owner_type="project", owner_id=stack.project_id,
                             chunk_size_mb=1, wait=False, **kw)
    return job


def _started_order(client: Any, job_ids: set[str]) -> list[str]:
    """The jobs of ``job_ids`` in the order they went ``running`` (first time each)."""
    order: list[str] = []
    for event in client.list_events(0, types=["job.state"], limit=10_000):
        if event.state == "running" and event.job_id in job_ids and event.job_id not in order:
            order.append(event.job_id)
    return order


def _running(stack: Stack, job_id: str) -> bool:
    with stack.client() as client:
        return bool(client.get_job(job_id).state == "running")


def test_priority_then_set_priority_decide_what_starts_next(one_slot: Stack, tmp_path: Path) -> None:
    stack = one_slot
    big = make_file(tmp_path / "big.bin", 16 * MiB)
    small = [make_file(tmp_path / f"s{i}.bin", 1000 + i, seed=i) for i in range(3)]
    with stack.client() as client:
        with stack.server_held():  # the blocker runs until it is cancelled
            blocker = _upload(client, stack, big)
            wait_for(lambda: _running(stack, blocker.job_id), 60, "the first job to run")
            low = _upload(client, stack, small[0])
            high = _upload(client, stack, small[1], priority=5)
            bumped = _upload(client, stack, small[2])
            assert (low.priority, high.priority, bumped.priority) == (0, 5, 0)
            assert client.set_priority(bumped.job_id, 9).priority == 9
            assert client.cancel(blocker.job_id).state == "cancelled"
        for job in (low, high, bumped):
            assert client.wait(job.job_id, timeout_s=60).state == "completed"
        assert _started_order(client, {low.job_id, high.job_id, bumped.job_id}) == [
            bumped.job_id, high.job_id, low.job_id]
        with pytest.raises(DaemonError) as err:
            client.set_priority(low.job_id, 1)
        assert err.value.code == "conflict"


def test_clients_share_the_slots_round_robin(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={"max_active_jobs": 2, "bandwidth_limit_bps": 4 * MiB})
    files = [make_file(tmp_path / f"f{i}.bin", 8 * MiB if i < 2 else 1000, seed=i) for i in range(5)]
    with stack.client(client_name="greedy") as greedy, stack.client(client_name="polite") as polite:
        with stack.server_held():  # greedy's first two jobs run until one is cancelled
            mine = [_upload(greedy, stack, f) for f in files[:4]]
            wait_for(lambda: _running(stack, mine[0].job_id) and _running(stack, mine[1].job_id), 60,
                     "two jobs running")
            theirs = _upload(polite, stack, files[4])
            assert theirs.raw["client"] == "name:polite" and mine[0].raw["client"] == "name:greedy"
            # A slot frees: FIFO would start greedy's third job; fairness starts polite's first.
            greedy.cancel(mine[0].job_id)
            wait_for(lambda: _running(stack, theirs.job_id), 60, "polite's job to run")
        assert polite.wait(theirs.job_id, timeout_s=60).state == "completed"
        for job in mine[1:]:
            try:
                greedy.cancel(job.job_id)
            except DaemonError as exc:  # the small ones may have completed already
                assert exc.code == "conflict"
        order = _started_order(greedy, {j.job_id for j in mine} | {theirs.job_id})
    assert order.index(theirs.job_id) == 2, order


def test_pause_resume_cancel_retry_and_the_handle(one_slot: Stack, tmp_path: Path) -> None:
    stack = one_slot
    source = make_file(tmp_path / "data.bin", 6 * MiB)
    with stack.client() as client:
        with stack.server_held():  # the job cannot end before it is paused and cancelled
            job = _upload(client, stack, source)
            assert isinstance(job, Job) and job.state == "queued" and job.kind == "upload"
            assert client.pause(job.job_id).state == "paused"
            assert client.get_job(job.job_id).state == "paused"
            with pytest.raises(DaemonError) as err:
                client.retry(job.job_id)
            assert err.value.code == "conflict"
            assert client.resume(job.job_id).state == "queued"
            assert client.cancel(job.job_id).state == "cancelled"
            assert client.get_job(job.job_id).error is not None
            assert client.retry(job.job_id).state == "queued"
        done = client.wait(job.job_id, timeout_s=60)
        assert done.state == "completed" and done.asset_id and done.content_id
        assert [j.job_id for j in client.list_jobs(["completed"])] == [job.job_id]
        assert client.list_jobs(["paused"]) == []
    shown = json.loads(stack.cli("jobs", "show", job.job_id, "--json").stdout)
    assert shown["state"] == "completed"
    assert (shown["asset_id"], shown["content_id"]) == (done.asset_id, done.content_id)


def test_a_transfer_timeout_names_the_job_which_goes_on(one_slot: Stack, tmp_path: Path) -> None:
    stack = one_slot
    source = make_file(tmp_path / "slow.bin", 12 * MiB)
    with stack.client() as client, stack.server_held():  # the job goes on, but cannot end
        with pytest.raises(DaemonTimeoutError) as err:
            client.upload(source, title="slow", owner_type="project", owner_id=stack.project_id,
                          chunk_size_mb=1, transfer_timeout_s=0.3)
        job_id = err.value.transfer_id
        assert job_id and err.value.job_id == job_id and err.value.code == "timeout"
        assert client.get_job(job_id).state in ("queued", "running")
        with pytest.raises(DaemonTimeoutError) as again:
            client.wait(job_id, timeout_s=0.2)
        assert again.value.job_id == job_id
        assert client.cancel(job_id).state == "cancelled"


def test_a_client_killed_mid_wait_changes_nothing_for_its_job(one_slot: Stack, tmp_path: Path) -> None:
    stack = one_slot
    source = make_file(tmp_path / "k.bin", 8 * MiB)
    ready = tmp_path / "job_id"
    script = textwrap.dedent(f"""
        import sys
        from dataerai import DataeraiClient
        with DataeraiClient(socket_path={str(stack.socket_path)!r}, auto_start=False) as client:
            job = client.upload({str(source)!r}, title="k", owner_type="project", owner_id={stack.project_id!r},
                                chunk_size_mb=1, wait=False)
            open({str(ready)!r} + ".tmp", "w").write(job.job_id)
            import os; os.rename({str(ready)!r} + ".tmp", {str(ready)!r})
            client.wait(job.job_id)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], env=stack.env)
    try:
        job_id = wait_for(lambda: ready.exists() and ready.read_text(), 30, "the child's job")
        wait_for(lambda: _running(stack, job_id), 30, "the child's job to run")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with stack.client() as client:
        done = client.wait(job_id, timeout_s=60)
    assert done.state == "completed" and done.bytes_done == 8 * MiB and done.asset_id


def test_a_start_that_timed_out_names_its_job_and_starting_it_again_is_the_same_job(
        stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "r.bin", 1000)
    with stack.client(request_timeout_s=1e-9) as hasty, pytest.raises(DaemonTimeoutError) as err:
        hasty.upload(source, title="r", owner_type="project", owner_id=stack.project_id)
    job_id = err.value.job_id
    assert job_id and job_id.startswith("job_") and job_id in err.value.message
    params = {"local_path": str(source), "title": "r", "owner_type": "project", "owner_id": stack.project_id,
              "job_id": job_id}
    with stack.client() as client:
        # Whether or not the first start arrived, sending it again under its id is one job.
        first = client.call("upload.start", params)
        second = client.call("upload.start", params)
        assert first["job_id"] == second["job_id"] == job_id
        assert client.wait(job_id, timeout_s=60).state == "completed"
        assert [j.job_id for j in client.list_jobs()] == [job_id]
        with pytest.raises(DaemonError) as clash:
            client.call("download.start", {"asset_id": "ast_0000000x", "dest_dir": str(tmp_path), "job_id": job_id})
        assert clash.value.code == "conflict"
