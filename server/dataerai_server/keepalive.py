"""Hypercorn's keep-alive timeout, kept by one task per connection that moves a deadline.

Hypercorn's Trio worker (0.17, 0.18) restarts a connection's idle timer around every
request: when a request arrives its ``TrioSingleTask`` cancels the timer's task, and when
the answer is sent it starts a new one with ``nursery.start`` (a task created, scheduled
and waited for): 82-105 µs of CPU per request with 200 connections, against about 1 µs
here (docs/server.md, "Fourth pass").

Here each connection has one watcher task for its whole life. A request's start and end
only note whether the connection is idle and when its idle time runs out (two attribute
stores and a clock read); the watcher sleeps until that deadline, or until the server
stops, and then closes the connection if it is still idle by then, or goes back to sleep
until the new deadline. So, as with Hypercorn's own timer:

- a kept-alive connection idle for ``keep_alive_timeout`` seconds is closed (at its
  deadline: a watcher that wakes early finds the later deadline and sleeps until it);
- a connection in the middle of a request is never closed by the timer (while busy, the
  watcher only wakes once per timeout to look again);
- when the server stops (SIGTERM), idle connections are closed at once, busy ones once
  their request is answered (Hypercorn's protocol closes those itself then);
- once the connection's reading ends (the client closed it, or the server did), the
  watcher ends with it. Hypercorn's timer task outlived a client's close until the
  timeout, keeping the connection's task, and its socket, for up to 75 s more.

:func:`install` puts this in place for the process, once the installed Hypercorn is
checked to have the shape it replaces; otherwise Hypercorn's own timer stays, with one
warning.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from types import FunctionType

import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext
from hypercorn.typing import AppWrapper, LifespanState, TaskGroup

log = structlog.get_logger(__name__)

_HypercornTCPServer = hypercorn.trio.tcp_server.TCPServer


class IdleTimer(TrioSingleTask):
    """A connection's idle timer: in place of Hypercorn's ``TrioSingleTask`` as ``TCPServer.idle_task``.

    Hypercorn calls ``restart(task_group, action)`` when the connection becomes idle and
    ``stop()`` when a request starts; ``action`` (the connection's own ``_idle_timeout``)
    is not used, its work (wait out the timeout or the server's stop, then close) being
    the watcher's. Neither call waits on anything.
    """

    def __init__(self, connection: TCPServer) -> None:
        super().__init__()
        self._connection = connection
        self._timeout = float(connection.config.keep_alive_timeout)
        self._idle = False
        self._deadline = math.inf
        self._watching = False
        #: Cancelled when the connection's reading ends: the watcher then has nothing to do.
        self._scope = trio.CancelScope()
        #: Set when the connection becomes idle, while the watcher waits for that to close it.
        self._became_idle: trio.Event | None = None

    async def restart(self, task_group: TaskGroup, action: Callable[..., Awaitable[None]]) -> None:
        self._idle = True
        self._deadline = trio.current_time() + self._timeout
        if not self._watching:
            self._watching = True
            task_group.spawn(self._watch)
        if self._became_idle is not None:
            self._became_idle.set()

    async def stop(self) -> None:
        self._idle = False

    def close(self) -> None:
        """The connection's reading ended: end the watcher (now or as soon as it starts)."""
        self._scope.cancel()

    async def _watch(self) -> None:
        terminated = self._connection.context.terminated
        with self._scope:
            while True:
                # Idle: until its deadline. Busy: look again a timeout from now.
                deadline = self._deadline if self._idle else trio.current_time() + self._timeout
                with trio.move_on_at(deadline):
                    await terminated.wait()
                    # The server is stopping: close once idle (at once if it is now).
                    while not self._idle:
                        self._became_idle = trio.Event()
                        await self._became_idle.wait()
                    break
                if self._idle and trio.current_time() >= self._deadline:
                    break
            with trio.CancelScope(shield=True):
                await self._connection._initiate_server_close()


class TCPServer(_HypercornTCPServer):
    """Hypercorn's Trio connection with :class:`IdleTimer` as its idle timer."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: trio.SSLStream[trio.SocketStream],
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.idle_timer = IdleTimer(self)
        self.idle_task = self.idle_timer

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            # Reading ends when the client closed the connection or the server did.
            self.idle_timer.close()


def _names(function: object) -> frozenset[str]:
    """The global and attribute names a function's code uses (empty if it is not plain Python)."""
    return frozenset(function.__code__.co_names) if isinstance(function, FunctionType) else frozenset()


def shape_problem() -> str | None:
    """What the installed Hypercorn lacks of the shape :class:`TCPServer` relies on, or None."""
    base = _HypercornTCPServer
    if getattr(hypercorn.trio.run, "TCPServer", None) not in (base, TCPServer):
        return "hypercorn.trio.run does not make its connections with hypercorn.trio.tcp_server.TCPServer"
    needs: list[tuple[str, object, set[str]]] = [
        ("TCPServer.__init__", base.__init__, {"idle_task", "TrioSingleTask"}),
        ("TCPServer.run", base.run, {"idle_task", "restart", "_idle_timeout", "_read_data"}),
        ("TCPServer.protocol_send", base.protocol_send, {"idle_task", "restart", "stop"}),
        ("TCPServer._idle_timeout", getattr(base, "_idle_timeout", None), {"terminated", "_initiate_server_close"}),
        ("WorkerContext.__init__", WorkerContext.__init__, {"terminated"}),
    ]
    for where, function, names in needs:
        missing = names - _names(function)
        if missing:
            return f"{where} does not use {', '.join(sorted(missing))}"
    for owner, attribute in [
        (base, "_read_data"),
        (base, "_initiate_server_close"),
        (TrioSingleTask, "restart"),
        (TrioSingleTask, "stop"),
        (hypercorn.trio.task_group.TaskGroup, "spawn"),
    ]:
        if not callable(getattr(owner, attribute, None)):
            return f"{owner.__name__}.{attribute} is missing"
    return None


def install() -> bool:
    """Make this process's Hypercorn (Trio worker) connections use :class:`IdleTimer`.

    True if done; False, with one warning, if the installed Hypercorn does not have the
    shape this replaces (connections then keep Hypercorn's own timer: correct, slower).
    """
    problem = shape_problem()
    if problem is not None:
        log.warning("server.hypercorn_idle_timer_kept", reason=problem)
        return False
    # Hypercorn's worker looks the connection class up in its module when it serves.
    hypercorn.trio.run.TCPServer = TCPServer  # type: ignore[attr-defined]
    return True
