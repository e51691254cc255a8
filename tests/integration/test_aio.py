"""The async twin against a real daemon, under asyncio and under Trio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from dataerai import DaemonError, DataeraiClient, Job, ProgressEvent, UploadResult
from dataerai.aio import AsyncDataEraiClient, AsyncDataeraiClient, current_async_library
from stack import Stack, make_file

MiB = 1024 * 1024
Scenario = Callable[[], Awaitable[Any]]


def run_asyncio(scenario: Scenario) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


def run_trio(scenario: Scenario) -> Any:
    return trio.run(scenario)


RUNNERS = pytest.mark.parametrize("run", [run_asyncio, run_trio], ids=["asyncio", "trio"])


def test_it_mirrors_the_blocking_client_method_for_method() -> None:
    assert AsyncDataEraiClient is AsyncDataeraiClient
    public = {n for n in dir(DataeraiClient) if not n.startswith("_")} - {"__enter__", "__exit__"}
    mirrored = {n for n in dir(AsyncDataeraiClient) if not n.startswith("_")}
    assert public <= mirrored, public - mirrored


@RUNNERS
def test_transfers_jobs_and_events(stack: Stack, tmp_path: Path, run: Callable[[Scenario], Any]) -> None:
    source = make_file(tmp_path / "a.bin", 3 * MiB + 7)
    expected = "asyncio" if run is run_asyncio else "trio"

    async def scenario() -> None:
        assert current_async_library() == expected
        seen: list[ProgressEvent] = []
        async with AsyncDataeraiClient(socket_path=str(stack.socket_path), auto_start=False) as client:
            status = await client.auth_status()
            assert status.user_email == "ada@example.org"
            stream = await client.events(types=["job.state"])
            result = await client.upload(source, title="a", owner_type="project", owner_id=stack.project_id,
                                         chunk_size_mb=1, on_progress=seen.append)
            assert isinstance(result, UploadResult) and result.asset_id and result.content_id
            async with stream:
                states = []
                async for event in stream:
                    if event.job_id == result.transfer_id:
                        states.append(event.state)
                    if event.state == "completed":
                        break
            assert states[0] == "queued" and states[-1] == "completed"
            # Several waits at once run side by side, each on a connection of its own.
            jobs = [await client.download(result.asset_id, tmp_path / f"out{i}", wait=False) for i in range(3)]
            assert all(isinstance(j, Job) for j in jobs)
            if expected == "trio":
                async with trio.open_nursery() as nursery:
                    for job in jobs:
                        nursery.start_soon(client.wait, job.job_id)
            else:
                await asyncio.gather(*(client.wait(j.job_id) for j in jobs))
            done = [await client.get_job(j.job_id) for j in jobs]
            assert {j.state for j in done} == {"completed"}
            assert {j.job_id for j in await client.list_jobs(["completed"])} >= {j.job_id for j in done}
            with pytest.raises(DaemonError) as err:
                await client.get_job("job_" + "0" * 24)
            assert err.value.code == "not_found"
        assert seen and seen[-1].completed and seen[-1].percent == 100.0

    run(scenario)
    assert (tmp_path / "out2" / "a.bin").read_bytes() == source.read_bytes()


@RUNNERS
def test_cancelling_a_wait_leaves_the_job_running(make_stack: Any, tmp_path: Path,
                                                 run: Callable[[Scenario], Any]) -> None:
    stack = make_stack()
    source = make_file(tmp_path / "slow.bin", 12 * MiB)

    async def scenario() -> str:
        async with AsyncDataeraiClient(socket_path=str(stack.socket_path), auto_start=False) as client:
            job = await client.upload(source, title="s", owner_type="project", owner_id=stack.project_id,
                                      chunk_size_mb=1, wait=False)
            if run is run_trio:
                with trio.move_on_after(0.3) as scope:
                    await client.wait(job.job_id)
                assert scope.cancelled_caught
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.wait(job.job_id), 0.3)
            # The client goes on working after the cancelled call.
            assert (await client.get_job(job.job_id)).state in ("queued", "running")
            return job.job_id

    with stack.server_held(), stack.client() as client:  # the job goes on, but cannot end
        job_id = run(scenario)
        assert client.get_job(job_id).state in ("queued", "running")
        assert client.cancel(job_id).state == "cancelled"
