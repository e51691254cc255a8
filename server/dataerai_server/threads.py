"""Blocking work in worker threads, awaited from the event loop for as little as it can cost.

Every query, store call and file operation hops to a worker thread and back. Through
``anyio.to_thread.run_sync`` a hop cost about 57 µs of CPU on uvloop with twenty callers
at once (a capacity limiter taken and given back, a cancel scope, AnyIO's own worker
bookkeeping, each asking ``current_task()`` several times); a
:class:`~concurrent.futures.ThreadPoolExecutor` awaited through its future costs about 18
(docs/server.md, "Ninth pass"). A small request makes two to six hops.

What does not change: the pool's size bounds how many run at once (as the limiter did);
the caller's context variables go with the work (the request's log fields); and a hop is
not cancelled once sent: the caller waits for the thread to finish and sees the
cancellation at its next checkpoint, as with ``run_sync``'s default. Outside asyncio (the
tests that drive storage and the database from Trio) the work goes through AnyIO as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class WorkerThreads:
    """At most ``most`` worker threads, started as they are first needed, named ``name``."""

    def __init__(self, most: int, name: str) -> None:
        self.most = most
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the threads; its value, or what it raised."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio: AnyIO knows the loop it runs on
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.most)
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        future = self._executor().submit(contextvars.copy_context().run, fn, *args)
        with anyio.CancelScope(shield=True):
            value = await asyncio.wrap_future(future, loop=loop)
        return value

    def _executor(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.most, thread_name_prefix=self._name)
                pool = self._pool
        return pool

    def close(self) -> None:
        """Let the threads end once their work is done (without waiting for it)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
