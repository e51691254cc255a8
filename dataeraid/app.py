"""The daemon's root: the nursery tree and the order things start and stop in.

    run_daemon()
     └─ serve()                     root nursery, owns everything below
         ├─ store + migrations      before anything else (Store.open)
         ├─ event bus               ids continue after the last run
         ├─ control.serve           the bandwidth limits, by the bwlimit timetable (dataeraid.control)
         ├─ scheduler.serve         requeues interrupted jobs, then runs jobs
         ├─ watches.serve           one task per watch folder (dataeraid.watch)
         ├─ observer.serve          counters, token expiry, alerts, the metrics port (dataeraid.observe);
         │                          follows reloads too, its port moved by one
         ├─ rpc.serve               the socket listens
         ├─ READY=1                 only now: migrated and listening
         ├─ watchdog, status        systemd pings and a STATUS= summary
         ├─ housekeeping            prunes old events and finished jobs, vacuums
         └─ signals                 SIGHUP: reload config.toml; SIGTERM/SIGINT (or daemon.stop):
                                    STOPPING=1, cancel the tree

Stopping cancels the tree: running jobs are interrupted between checkpoints and
stay resumable (the next start requeues them).

One daemon per queue and per socket (``dataeraid.instance``): a second daemon
for the same socket and queue (the SDK's auto-start race) exits with status 0;
one that would share the queue or the socket with another daemon refuses.
Whatever stops a start (a taken queue, a bad ``config.toml``, a broken queue
database, an open socket directory) is one line, ``error[CODE]: message`` on
stderr or a ``cannot start`` line in ``daemon.log``, and exit status 78.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.config import LiveSettings, Settings
from dataeraid.control import DaemonControl
from dataeraid.engine.bulk_http import BulkHTTP
from dataeraid.engine.download import run_download
from dataeraid.engine.upload import run_upload
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.housekeeping import one_malloc_arena, serve_housekeeping
from dataeraid.instance import AlreadyServed, Holder, lock_queue, lock_socket
from dataeraid.jobs import Jobs
from dataeraid.methods import REGISTRY, Call, Services
from dataeraid.notify import Notifier
from dataeraid.observe import memory
from dataeraid.observe.service import Observer
from dataeraid.observe.tally import Tally
from dataeraid.paths import Paths
from dataeraid.remote import USER_AGENT, Remote, ssl_context, tune_http_reads
from dataeraid.rpc import check_private_directory, open_listener
from dataeraid.rpc import serve as serve_rpc
from dataeraid.scheduler import Scheduler
from dataeraid.store import Store
from dataeraid.watch.manager import WatchManager

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

_log = log.get("dataeraid")

#: The exit status of a daemon that refused to start (sysexits' EX_CONFIG): what stopped it needs a
#: person, so starting it again does not help (the systemd unit's RestartPreventExitStatus).
EXIT_REFUSED = 78
#: A Unix socket's path, with its terminating NUL, fits in 108 bytes.
MAX_SOCKET_PATH_BYTES = 107


class StartRefused(DataeraiError):
    """Something the daemon needs at start is not usable; raised before READY, never after."""

    @classmethod
    def of(cls, error: DataeraiError) -> StartRefused:
        return cls(error.code, error.message)


def _activated() -> bool:
    """Whether systemd passed the listening socket (socket activation), as ``rpc.open_listener`` reads it."""
    try:
        return os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1
    except ValueError:
        return False


def _activated_socket_path() -> Path | None:
    """The filesystem path of the socket systemd passed as descriptor 3, if it has one."""
    try:
        sock = socket.socket(fileno=3)
    except OSError:
        return None
    try:
        name = sock.getsockname()
    except OSError:
        return None
    finally:
        sock.detach()  # descriptor 3 stays open for the listener
    return Path(name) if isinstance(name, str) and name.startswith("/") else None


def _check_socket_path(path: Path) -> None:
    """The socket's path fits in a Unix socket address and its directory is the user's alone (made 0700)."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        raise DataeraiError(
            "invalid_argument",
            f"the socket path {path} is {size} bytes, over the {MAX_SOCKET_PATH_BYTES} a Unix socket allows; "
            "set a shorter DATAERAI_SOCKET (or XDG_RUNTIME_DIR)",
        )
    try:
        check_private_directory(path.parent)
    except OSError as exc:
        raise DataeraiError("io_error", f"cannot create the socket's directory {path.parent}: {exc}") from exc


def _remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _claim(paths: Paths, held: contextlib.ExitStack) -> None:
    """Take the queue's lock and the socket's, registering their release (and the socket's removal) in ``held``.

    Raises ``AlreadyServed`` when a daemon for the same socket and queue runs, and
    ``DataeraiError`` for anything that stops this one from starting.
    """
    activated = _activated()
    socket_path = _activated_socket_path() if activated else Path(os.path.abspath(paths.socket))
    me = Holder(os.getpid(), str(socket_path) if socket_path else None, str(paths.state_dir))
    held.callback(os.close, lock_queue(paths.state_dir, me))
    if activated:
        # systemd owns the socket; lock its path too where it has one, so no daemon started by hand takes it over.
        if socket_path is not None:
            held.callback(os.close, lock_socket(socket_path, me))
        return
    assert socket_path is not None
    _check_socket_path(socket_path)
    held.callback(os.close, lock_socket(socket_path, me))
    held.callback(_remove_socket, socket_path)  # ours to remove only once its lock is ours


async def _housekeeping(jobs: Jobs, live: LiveSettings) -> None:
    """Once an hour: old events and finished jobs pruned, their space given back (dataeraid.housekeeping)."""
    await serve_housekeeping(jobs, live)


async def _status_loop(jobs: Jobs, notifier: Notifier) -> None:
    while True:
        counts = await jobs.counts()
        active = sum(counts.get(s, 0) for s in ("running", "waiting_for_network", "waiting_for_auth"))
        notifier.status(f"{active} active, {counts.get('queued', 0)} queued, {counts.get('failed', 0)} failed")
        await trio.sleep(5)


async def serve(paths: Paths, settings: Settings, notifier: Notifier) -> None:
    memory_trace = memory.configured()  # first, so tracemalloc sees everything after
    try:
        store = await Store.open(paths.queue_db)
    except DataeraiError as exc:
        raise StartRefused.of(exc) from exc
    bulk: BulkHTTP | None = None
    try:
        bus = EventBus(store)
        await bus.start()
        auth = Auth(paths.credentials)
        if not tune_http_reads():
            log.get("dataeraid").warning("httpcore has no READ_NUM_BYTES; response bodies are read in its own size")
        timeout = httpx.Timeout(60.0, connect=10.0)
        # No cap on connections: the scheduler's slots and parts_per_job bound the requests in flight,
        # and both may grow on reload; a cap sized at start would make the extra parts time out.
        limits = httpx.Limits(max_connections=None,
                              max_keepalive_connections=settings.max_active_jobs * settings.parts_per_job + 4)
        tls = ssl_context()
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT},
                                     follow_redirects=False, verify=tls) as http:
            bulk = BulkHTTP.like(http, tls)
            remote = Remote(auth, http, bulk)
            jobs = Jobs(bus)
            tally = await Tally.loaded(store)  # before the scheduler: no job ends uncounted or counted twice
            jobs.add_end_listener(tally.record_job_end, tally.job_ended)
            live = LiveSettings(settings)
            control = DaemonControl(live, paths.config_file, under_systemd=notifier.enabled or _activated(),
                                    on_reload=jobs.wake_scheduler)
            scheduler = Scheduler(jobs, remote, auth, live, {"upload": run_upload, "download": run_download},
                                  tally, control.links)
            watches = WatchManager(jobs, remote, live)
            observer = Observer(jobs=jobs, bus=bus, scheduler=scheduler, watches=watches, auth=auth, remote=remote,
                                settings=live, state_dir=paths.state_dir, tally=tally)
            services = Services(jobs, bus, scheduler, remote, auth, settings, watches, observer, control)
            async with trio.open_nursery() as nursery:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    await nursery.start(control.serve)
                    await nursery.start(scheduler.serve)
                    await nursery.start(watches.serve)
                    try:
                        await nursery.start(observer.serve)
                    except DataeraiError as exc:
                        raise StartRefused.of(exc) from exc
                    try:
                        listener = await open_listener(paths.socket)
                    except DataeraiError as exc:
                        raise StartRefused.of(exc) from exc
                    await nursery.start(serve_rpc, REGISTRY, partial(Call, services), listener)
                    # What start-up made (modules, the queue's SQLAlchemy tables, the HTTP
                    # clients) lives as long as the process. Frozen, the cyclic collector no
                    # longer walks it at each full collection, which a job of many files
                    # triggers several times as it allocates its manifest's objects (each walk
                    # took 30-100 ms: docs/benchmarks.md); the server does the same.
                    gc.collect()
                    gc.freeze()
                    notifier.ready("serving")
                    _log.info("daemon ready", socket=str(paths.socket), pid=os.getpid(), queue=str(paths.queue_db))
                    nursery.start_soon(notifier.watchdog)
                    nursery.start_soon(_status_loop, jobs, notifier)
                    nursery.start_soon(_housekeeping, jobs, live)
                    nursery.start_soon(control.follow_signals, signals)
                    if memory_trace is not None:
                        nursery.start_soon(memory.serve_memory_trace, *memory_trace)
                    _log.info("stopping", reason=await control.stopped())
                    notifier.stopping()
                    nursery.cancel_scope.cancel()
    finally:
        if bulk is not None:
            bulk.close()
        with trio.CancelScope(shield=True):
            await store.close()


def _log_stream(paths: Paths) -> log.Stream:
    """stderr, unless it goes nowhere (a daemon the SDK started): then ``daemon.log`` in the state dir."""
    try:
        err, null = os.fstat(2), os.stat(os.devnull)
        if (err.st_dev, err.st_ino) != (null.st_dev, null.st_ino):
            return sys.stderr
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return log.RotatingFile(paths.log_file)
    except OSError:
        return sys.stderr


def _refusal(exc: BaseException) -> StartRefused | None:
    """The refusal ``exc`` is, alone or as the only kind of error in a group; None for anything else (a bug)."""
    if isinstance(exc, StartRefused):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        refused, rest = exc.split(StartRefused)
        if refused is not None and rest is None:
            while isinstance(refused, BaseExceptionGroup):
                refused = refused.exceptions[0]
            assert isinstance(refused, StartRefused)
            return refused
    return None


def _refuse(error: DataeraiError, stream: log.Stream) -> int:
    """Report why the daemon does not start, in one line, and the status to exit with.

    On stderr as ``error[CODE]: message`` (the CLI's form); when stderr goes
    nowhere (the SDK started this daemon) as a ``cannot start`` line in
    ``daemon.log``, with the pid, where the SDK reads it back.
    """
    if stream is sys.stderr:
        print(f"error[{error.code}]: {error.message}", file=sys.stderr, flush=True)
    else:
        _log.error("cannot start", code=error.code, message=error.message, pid=os.getpid())
    return EXIT_REFUSED


def run_daemon(paths: Paths | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT; the exit status.

    0 after a clean stop, or at once when a daemon for the same socket and queue
    already runs; ``EXIT_REFUSED`` (78) when it cannot start, with the reason in one line.
    """
    paths = paths or Paths.from_environment()
    stream = _log_stream(paths)
    log.configure(os.environ.get("DATAERAI_LOG_LEVEL", "info"), stream)
    held = contextlib.ExitStack()
    try:
        try:
            settings = Settings.load(paths.config_file)
        except ValueError as exc:
            raise DataeraiError("invalid_argument", str(exc)) from exc
        _claim(paths, held)
    except AlreadyServed as exc:
        held.close()
        _log.info("a daemon for this socket and queue already runs; exiting", pid=exc.holder.pid,
                  socket=exc.holder.socket)
        return 0
    except DataeraiError as exc:
        held.close()
        return _refuse(exc, stream)
    with held:
        one_malloc_arena()  # before the first worker thread (dataeraid.housekeeping)
        try:
            trio.run(serve, paths, settings, Notifier())
        except BaseException as exc:
            refused = _refusal(exc)
            if refused is None:
                raise
            return _refuse(refused, stream)
    _log.info("stopped")
    return 0
