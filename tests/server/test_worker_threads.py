"""Blocking work handed to worker threads (``threads.WorkerThreads``) on asyncio, as the
server runs: the value or the exception comes back, the caller's context goes with the
work, and a cancelled caller still waits for the thread it sent work to."""

from __future__ import annotations

import contextvars
import threading

import anyio
import pytest
from dataerai_server.threads import WorkerThreads

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def _on_asyncio(fn: object) -> None:
    anyio.run(fn, backend="asyncio")  # type: ignore[arg-type]


def test_the_value_or_the_exception_comes_back_from_another_thread() -> None:
    threads = WorkerThreads(2, "test-workers")
    seen: list[tuple[int, str]] = []

    async def main() -> None:
        seen.append(await threads.run(lambda a, b: (a + b, threading.current_thread().name), 2, 3))
        with pytest.raises(ZeroDivisionError):
            await threads.run(lambda: 1 / 0)

    try:
        _on_asyncio(main)
    finally:
        threads.close()
    value, thread_name = seen[0]
    assert value == 5 and thread_name.startswith("test-workers") and thread_name != threading.current_thread().name


def test_the_callers_context_goes_with_the_work() -> None:
    threads = WorkerThreads(1, "test-workers")
    seen: list[str] = []

    async def main() -> None:
        REQUEST.set("r-1")
        seen.append(await threads.run(REQUEST.get))
        REQUEST.set("r-2")
        seen.append(await threads.run(REQUEST.get))

    try:
        _on_asyncio(main)
    finally:
        threads.close()
    assert seen == ["r-1", "r-2"]


def test_a_cancelled_caller_waits_for_its_thread_then_sees_the_cancellation() -> None:
    """As ``anyio.to_thread.run_sync``: work sent is not abandoned (a transaction, a store call)."""
    threads = WorkerThreads(1, "test-workers")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    seen_when_answered: list[list[bool]] = []
    cancelled: list[bool] = []

    def work() -> int:
        started.set()
        release.wait(60)
        finished.append(True)
        return 1

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            scope = anyio.CancelScope()

            async def caller() -> None:
                with scope:
                    await threads.run(work)
                    seen_when_answered.append(list(finished))
                    await anyio.lowlevel.checkpoint()  # where the cancellation is seen
                cancelled.append(scope.cancelled_caught)

            tasks.start_soon(caller)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
            # Let the cancelled caller run first (the loop's queue is in order): without the
            # shield it would stop waiting here, before its thread finished.
            await anyio.lowlevel.checkpoint()
            release.set()

    try:
        _on_asyncio(main)
    finally:
        threads.close()
    assert seen_when_answered == [[True]] and cancelled == [True]
