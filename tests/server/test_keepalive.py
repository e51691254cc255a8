"""The keep-alive timer (keepalive.py): idle connections closed after the timeout, busy ones
never, idle ones at once when the server stops; Hypercorn's own timer if its shape differs.

Real sockets against Hypercorn serving a small ASGI app in this process (with a short
``keep_alive_timeout``), and one real ``dataerai-server`` stopped by SIGTERM; the
timer's own arithmetic on Trio's fake clock.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import pytest
import structlog
import trio
import trio.testing
from dataerai_server import keepalive
from dataerai_server.serve import GRACEFUL_SECONDS
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import Framework

KEEP_ALIVE = 0.3  # seconds: the tests wait for closes, so this is how long they take
RESPONSE = b"ok"


@pytest.fixture
def restore_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test installs in Hypercorn is undone after it."""
    # hypercorn.trio.run imports TCPServer without re-exporting it, hence the ignores on the
    # reads of it here and below: it is the very name keepalive.install() replaces, on purpose.
    monkeypatch.setattr(hypercorn.trio.run, "TCPServer", hypercorn.trio.run.TCPServer)  # type: ignore[attr-defined]


@pytest.fixture
def installed(restore_hypercorn: None) -> None:
    assert keepalive.install()
    assert hypercorn.trio.run.TCPServer is keepalive.TCPServer  # type: ignore[attr-defined]


@dataclass
class App:
    """Answers ``ok``; ``/slow`` waits for :attr:`release` first (and says it started)."""

    started: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):  # the request, read whole
            pass
        if scope["path"] == "/slow":
            self.started.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(RESPONSE)).encode())]})
        await send({"type": "http.response.body", "body": RESPONSE})


@dataclass
class Served:
    port: int
    stop: trio.Event
    stopped: trio.Event

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)


async def start(nursery: trio.Nursery, app: App, keep_alive: float, graceful: float = 3600.0) -> Served:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.keep_alive_timeout = keep_alive
    config.graceful_timeout = graceful
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(cast(Framework, app), config, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            stopped.set()

    binds: list[str] = await nursery.start(run)
    return Served(int(binds[0].rsplit(":", 1)[1]), stop, stopped)


async def get(stream: trio.SocketStream, path: str = "/") -> bytes:
    """Send a GET and read its whole answer; the connection stays open."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"\r\n\r\n" + RESPONSE):
        chunk = await stream.receive_some(4096)
        assert chunk, f"closed before the answer was complete: {answer!r}"
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    return answer


async def closed_by_server(stream: trio.SocketStream) -> float:
    """Wait until the server closes the connection (nothing else may arrive); when it did."""
    chunk = await stream.receive_some(4096)
    assert chunk == b"", chunk
    return trio.current_time()


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(installed: None) -> None:
    async with trio.open_nursery() as nursery:
        served = await start(nursery, App(), KEEP_ALIVE)
        used, unused = await served.connect(), await served.connect()
        sent = trio.current_time()
        await get(used)
        await get(used)  # kept alive between requests
        with trio.fail_after(10):
            # Each was idle for the timeout: since its last answer, or since it was accepted.
            assert await closed_by_server(used) - sent >= KEEP_ALIVE
            assert await closed_by_server(unused) - sent >= KEEP_ALIVE
        served.stop.set()


async def slow_request_begun(nursery: trio.Nursery, app: App, conn: trio.SocketStream) -> trio.Event:
    """A ``/slow`` request on ``conn``, in ``nursery``, once the app holds it; set when answered."""
    answered = trio.Event()

    async def slow_request() -> None:
        await get(conn, "/slow")
        answered.set()

    nursery.start_soon(slow_request)
    await app.started.wait()
    return answered


async def test_a_connection_in_the_middle_of_a_request_is_not_closed(installed: None) -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        served = await start(nursery, app, KEEP_ALIVE)
        busy = await served.connect()
        answered = await slow_request_begun(nursery, app, busy)
        # Opened after the slow request began: once the timer has closed this idle one, the
        # busy connection has been open, without an answer, for longer than the timeout.
        idle = await served.connect()
        with trio.fail_after(10):
            await closed_by_server(idle)
        assert not answered.is_set()
        app.release.set()
        with trio.fail_after(10):
            await answered.wait()
        await get(busy)  # still kept alive after its long request
        with trio.fail_after(10):
            await closed_by_server(busy)  # and closed once idle for the timeout
        served.stop.set()


async def test_stopping_closes_idle_connections_at_once_and_busy_ones_after_their_answer(installed: None) -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        # Neither timeout can end the stop: only the idle connections' closing can.
        served = await start(nursery, app, keep_alive=3600.0, graceful=3600.0)
        used, unused, busy = await served.connect(), await served.connect(), await served.connect()
        await get(used)
        answered = await slow_request_begun(nursery, app, busy)
        served.stop.set()
        with trio.fail_after(10):
            await closed_by_server(used)
            await closed_by_server(unused)
        assert not answered.is_set() and not served.stopped.is_set()
        app.release.set()
        with trio.fail_after(10):
            await answered.wait()
            await closed_by_server(busy)
            await served.stopped.wait()


async def test_the_timer_ends_with_the_connection_when_the_client_closes(installed: None) -> None:
    async with trio.open_nursery() as nursery:
        served = await start(nursery, App(), keep_alive=3600.0)
        await trio.testing.wait_all_tasks_blocked()
        before = trio.lowlevel.current_statistics().tasks_living
        stream = await served.connect()
        await get(stream)
        await trio.testing.wait_all_tasks_blocked()  # the server is done with it: idle
        await stream.aclose()
        # The connection's tasks (reading, and the timer's) end without waiting out the timeout.
        with trio.fail_after(10):
            while trio.lowlevel.current_statistics().tasks_living > before:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        served.stop.set()


async def test_a_hypercorn_of_another_shape_keeps_its_own_timer(
    restore_hypercorn: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = hypercorn.trio.tcp_server.TCPServer
    original = base.protocol_send

    async def protocol_send(self: Any, event: Any) -> None:  # no idle_task in sight
        await original(self, event)

    monkeypatch.setattr(base, "protocol_send", protocol_send)
    with structlog.testing.capture_logs() as logged:
        assert not keepalive.install()
    assert [entry["event"] for entry in logged] == ["server.hypercorn_idle_timer_kept"]
    assert "protocol_send" in logged[0]["reason"]
    assert hypercorn.trio.run.TCPServer is base  # type: ignore[attr-defined]
    # Hypercorn's own timer then does the same: idle closed after the timeout, stop closes.
    async with trio.open_nursery() as nursery:
        served = await start(nursery, App(), KEEP_ALIVE)
        stream = await served.connect()
        sent = trio.current_time()
        await get(stream)
        with trio.fail_after(10):
            assert await closed_by_server(stream) - sent >= KEEP_ALIVE
        idle = await served.connect()
        served.stop.set()
        with trio.fail_after(10):
            await closed_by_server(idle)
            await served.stopped.wait()


def test_the_installed_hypercorn_has_the_shape_replaced() -> None:
    # Should an upgrade of Hypercorn change it, the server still works (the test above),
    # but slower: this says so.
    assert keepalive.shape_problem() is None


def test_sigterm_closes_a_real_servers_idle_connections_promptly(start_server: Any) -> None:
    server = start_server()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    used = socket.create_connection((host, int(port)))
    unused = socket.create_connection((host, int(port)))
    with used, unused:
        used.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # the answer's JSON body, whole
            chunk = used.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert server.stop() == 0
        # Had an idle connection stayed open, the stop would have waited out the grace period.
        assert time.monotonic() - started < GRACEFUL_SECONDS
        for sock in (used, unused):
            sock.settimeout(10)
            assert sock.recv(4096) == b""
    assert "hypercorn_idle_timer_kept" not in server.log_file.read_text()


# --- the timer on Trio's fake clock ------------------------------------------------------


class _Connection:
    """What the timer uses of a connection: its config, its worker's context, its close."""

    def __init__(self, keep_alive: float) -> None:
        self.config = Config()
        self.config.keep_alive_timeout = keep_alive
        self.context = WorkerContext(None)
        self.closed_at: list[float] = []

    async def _initiate_server_close(self) -> None:
        self.closed_at.append(trio.current_time())


class _TaskGroup:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.spawn = nursery.start_soon


def _timer(nursery: trio.Nursery, keep_alive: float) -> tuple[keepalive.IdleTimer, _Connection, Any]:
    connection = _Connection(keep_alive)
    timer = keepalive.IdleTimer(cast(keepalive.TCPServer, connection))
    return timer, connection, partial(timer.restart, cast(Any, _TaskGroup(nursery)), connection._initiate_server_close)


async def test_the_deadline_moves_with_each_request(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        timer, connection, restart = _timer(nursery, 10.0)
        await restart()  # accepted at 0
        await trio.sleep(5)
        await timer.stop()  # a request at 5 ...
        await trio.sleep(3)
        await restart()  # ... answered at 8
        await trio.sleep(9.5)
        assert connection.closed_at == []  # the first deadline, 10, passed while busy
        await trio.sleep(1)
    assert connection.closed_at == [18.0]


async def test_a_long_request_is_not_cut_and_the_timeout_runs_from_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        timer, connection, restart = _timer(nursery, 10.0)
        await restart()
        await timer.stop()
        await trio.sleep(95)
        assert connection.closed_at == []
        await restart()
    assert connection.closed_at == [105.0]


async def test_a_stop_closes_an_idle_connection_at_once_and_a_busy_one_once_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        _, idle_connection, restart_idle = _timer(nursery, 10.0)
        busy, busy_connection, restart_busy = _timer(nursery, 10.0)
        await restart_idle()
        await restart_busy()
        await busy.stop()
        await trio.sleep(1)
        await idle_connection.context.terminated.set()
        await busy_connection.context.terminated.set()
        await trio.sleep(25)  # the busy one's timer wakes in between and finds it busy still
        assert idle_connection.closed_at == [1.0] and busy_connection.closed_at == []
        await restart_busy()
    assert busy_connection.closed_at == [26.0]


async def test_a_closed_connections_timer_ends_without_closing(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        timer, connection, restart = _timer(nursery, 10.0)
        await restart()
        await trio.sleep(1)
        timer.close()
    assert connection.closed_at == [] and trio.current_time() == 1.0
