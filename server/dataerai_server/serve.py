"""Running the server: the listening socket, Uvicorn on uvloop, the ready file, signals.

We create and bind the socket ourselves, so ``--bind 127.0.0.1:0`` works and we
know the port before serving, then hand it to Uvicorn. Once Uvicorn listens, the base
URL is written atomically to the ready file, which is what tests and scripts wait for.
SIGTERM and SIGINT stop accepting, close idle connections, let running requests end
(up to :data:`GRACEFUL_SECONDS`), and exit 0.

The application is written for AnyIO (task groups, cancel scopes, worker threads), which
runs it on asyncio here and on Trio in the tests that drive it in-process. Why Uvicorn
(with httptools and uvloop) rather than Hypercorn on Trio: docs/server.md, "Why AnyIO,
Uvicorn and Starlette".
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio
import structlog
import uvicorn

from . import deletions
from .app import create_app
from .bodies import CloseOnLargeUnreadBody
from .config import Settings
from .heads import BoundedHeadProtocol
from .services import open_services

log = structlog.get_logger(__name__)

GRACEFUL_SECONDS: Final = 5.0
#: An idle kept-alive connection is closed after this long: above common client pools' idle times.
KEEP_ALIVE_SECONDS: Final = 75
#: Connections waiting to be accepted, per listening socket.
BACKLOG: Final = 2048
#: How often open upload sessions past their expiry are looked for, at most: an instrument
#: that vanished for good leaves its parts on disk for about this long after its session expired.
EXPIRY_SWEEP_SECONDS: Final = 3600.0


class _Server(uvicorn.Server):
    """Uvicorn's server, telling when it listens, and leaving the signals to :func:`run_server`
    (Uvicorn's own handling raises a caught SIGTERM again once stopped: an exit by the
    signal rather than status 0)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


def uvicorn_config(app: Any) -> uvicorn.Config:
    """How Uvicorn serves ``app``: httptools with each request's head bounded, no lifespan (the
    services are opened before), our own logs (one ``request`` line each, from the app), no
    proxy headers trusted."""
    config = uvicorn.Config(
        app,
        http=BoundedHeadProtocol,  # httptools, with a bound on a request's head (heads.py)
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(GRACEFUL_SECONDS),
        backlog=BACKLOG,
    )
    config.load()
    return config


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port). Raises ValueError."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--bind must be HOST:PORT, not {bind!r}")
    host = host.removeprefix("[").removesuffix("]")
    port_no = int(port)
    if port_no > 65535:
        raise ValueError(f"port {port_no} is out of range")
    return host, port_no


def open_listening_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def base_url(sock: socket.socket) -> str:
    """The URL a local client reaches the socket at; a wildcard address reads as loopback."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_ready_file(path: Path, url: str) -> None:
    """Write ``url`` + newline to ``path`` atomically: readers see nothing or the whole line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(url + "\n")
    os.replace(tmp, path)


def remove_ready_file(path: Path, url: str) -> None:
    """Remove the ready file if it still names this server (a newer one may have replaced it)."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == url:
            path.unlink()


async def run_server(
    settings: Settings,
    bind: str,
    ready_file: Path | None = None,
    *,
    listening: socket.socket | None = None,
    ready_fd: int | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. Migrates the database first.

    A worker of :func:`run_workers` is given the shared ``listening`` socket instead of
    binding one, and says it listens by writing a byte to ``ready_fd`` (its parent writes
    the ready file once every worker has).
    """
    host, port = parse_bind(bind)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Bind first: a taken port fails the start before the database is touched.
        sock = listening if listening is not None else open_listening_socket(host, port)
        url = base_url(sock)
        try:
            services = await open_services(settings)
        except BaseException:
            sock.close()
            raise
        # CloseOnLargeUnreadBody: an answer given before the request body was read ends the
        # connection rather than reading a large body for nothing (bodies.py).
        app = CloseOnLargeUnreadBody(create_app(services))
        server = _Server(uvicorn_config(app))
        # What exists now (modules, the ORM's mappings, the storage client, about 160,000
        # objects) lives as long as the process. Frozen, the cyclic collector no longer walks
        # it at each full collection, which requests trigger as they allocate; a full walk
        # took tens of milliseconds (docs/server.md, "Third pass").
        gc.collect()
        gc.freeze()

        async def sweep() -> None:
            # A quarter of the session lifetime, so that short lifetimes (tests, small disks)
            # are honoured about as closely as the default two weeks are.
            interval = max(1.0, min(EXPIRY_SWEEP_SECONDS, settings.session_ttl_seconds / 4))
            while True:
                try:
                    await services.uploads.abort_expired()
                except Exception as exc:  # the next sweep tries again; serving goes on
                    log.warning("upload.expiry_sweep_failed", error=repr(exc))
                try:
                    await deletions.retry_queued(services.db, services.storage)
                except Exception as exc:  # likewise
                    log.warning("storage.deletion_sweep_failed", error=repr(exc))
                await anyio.sleep(interval)

        async def stop_at_signal() -> None:
            async for signum in signals:
                log.info("server.stopping", signal=signal.Signals(signum).name)
                # Uvicorn's main loop looks at this a few times a second, then stops accepting,
                # closes idle connections and lets running requests end (GRACEFUL_SECONDS).
                server.should_exit = True
                return

        try:
            async with anyio.create_task_group() as background:
                services.storage.start_background(background)
                background.start_soon(sweep)
                background.start_soon(stop_at_signal)
                async with anyio.create_task_group() as serving:
                    serving.start_soon(server.serve, [sock])
                    await server.listening.wait()
                    # Logged before readiness is told: whoever waits on the ready file (or, for a
                    # worker, its parent) then finds every listening line already written.
                    log.info("server.listening", url=url, data_dir=str(settings.data_dir), pid=os.getpid())
                    if ready_fd is not None:
                        os.write(ready_fd, b"r")
                    elif ready_file is not None:
                        await anyio.to_thread.run_sync(write_ready_file, ready_file, url)
                # Requests are over; background work only ever gets ahead of them, so it can stop.
                background.cancel_scope.cancel()
        finally:
            services.close()
            if ready_file is not None:
                remove_ready_file(ready_file, url)
    log.info("server.stopped")


def serve(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` (:func:`run_server`, bound) on asyncio with uvloop's event loop."""
    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


def run_workers(settings: Settings, bind: str, ready_file: Path | None, workers: int) -> int:
    """Serve with ``workers`` processes sharing one listening socket (``run --workers``); the exit status.

    Python runs one thread of Python at a time, so one server process uses about one core;
    a site with more cores runs several. This process binds the socket and migrates the
    database (once, before any worker opens it), then forks the workers, each a whole
    server (its own database connections, storage client and expiry sweep, as separate
    servers on one database always could) accepting from the same socket: the kernel
    hands each connection to one of them. Once every worker listens the ready file is
    written. SIGTERM or SIGINT is passed on to the workers, which stop as one server does;
    if a worker dies otherwise, the others are stopped and the status is 1 (a supervisor
    such as systemd then starts the whole server again).
    """
    from . import migrate
    from .db import Database

    host, port = parse_bind(bind)
    sock = open_listening_socket(host, port)
    sock.listen(BACKLOG)
    url = base_url(sock)
    db = Database(settings.database_url)
    try:
        migrate.upgrade(db.write_engine)
    finally:
        db.dispose()
    stops = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    # Blocked until each process is ready for them: a worker unblocks them before its event loop starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    ready_r, ready_w = os.pipe()
    children: set[int] = set()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker
            os.close(ready_r)
            status = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                serve(partial(run_server, settings, bind, listening=sock, ready_fd=ready_w))
                status = 0
            except BaseException as exc:
                log.error("server.worker_failed", error=repr(exc), pid=os.getpid())
            finally:
                os._exit(status)
        children.add(pid)
    os.close(ready_w)
    sock.close()
    status, stopping, ready = 0, False, 0

    def stop_all(signum: int) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def reap() -> None:
        nonlocal status, stopping
        while children:
            pid, code = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            if os.waitstatus_to_exitcode(code) != 0 or not stopping:
                status = 1
                if not stopping:
                    log.error("server.worker_exited", pid=pid, status=os.waitstatus_to_exitcode(code))
                    stopping = True
                    stop_all(signal.SIGTERM)

    try:
        while children:
            if ready < workers:
                # Readiness arrives on the pipe; signals are looked at between reads.
                readable, _, _ = select.select([ready_r], [], [], 0.1)
                if readable:
                    got = os.read(ready_r, workers)
                    ready += len(got)
                    if ready >= workers and not stopping:
                        if ready_file is not None:
                            write_ready_file(ready_file, url)
                        log.info("server.listening", url=url, data_dir=str(settings.data_dir), workers=workers)
                pending = signal.sigtimedwait(stops, 0)
            else:
                pending = signal.sigtimedwait(stops, 1.0)
            if pending is None:
                continue
            if pending.si_signo == signal.SIGCHLD:
                reap()
            elif not stopping:
                log.info("server.stopping", signal=signal.Signals(pending.si_signo).name, workers=workers)
                stopping = True
                stop_all(pending.si_signo)
    finally:
        os.close(ready_r)
        if ready_file is not None:
            remove_ready_file(ready_file, url)
    log.info("server.stopped")
    return status
