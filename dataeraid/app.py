"""The daemon's root: the nursery tree and the order things start and stop in.

    run_daemon()
     └─ serve()                     root nursery, owns everything below
         ├─ store + migrations      before anything else (Store.open)
         ├─ event bus               ids continue after the last run
         ├─ scheduler.serve         requeues interrupted jobs, then runs jobs
         ├─ rpc.serve               the socket listens
         ├─ READY=1                 only now: migrated and listening
         ├─ watchdog, status        systemd pings and a STATUS= summary
         ├─ housekeeping            prunes stored events past their retention
         └─ signals                 SIGTERM/SIGINT: STOPPING=1, cancel the tree

Stopping cancels the tree: running jobs are interrupted between checkpoints and
stay resumable (the next start requeues them). One daemon per socket: a second
one finds the lock taken and exits with status 0.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import trio

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.config import Settings
from dataeraid.download import run_download
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.methods import REGISTRY, Call, Services
from dataeraid.notify import Notifier
from dataeraid.paths import Paths
from dataeraid.remote import USER_AGENT, Remote, tune_http_reads
from dataeraid.rpc import open_listener
from dataeraid.rpc import serve as serve_rpc
from dataeraid.scheduler import Scheduler
from dataeraid.store import Store
from dataeraid.upload import run_upload

_log = log.get("dataeraid")


def _take_lock(socket_path: Path) -> int | None:
    """The single-instance lock beside the socket; None if another daemon holds it."""
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{socket_path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


async def _housekeeping(jobs: Jobs, settings: Settings) -> None:
    """Once an hour: forget old stored events, so a daemon that runs for months stays small."""
    while True:
        pruned = await jobs.store.prune_events(time.time() - settings.event_retention_days * 86400)
        if pruned:
            _log.info("pruned old events", count=pruned)
        await trio.sleep(3600)


async def _status_loop(jobs: Jobs, notifier: Notifier) -> None:
    while True:
        counts = await jobs.counts()
        active = sum(counts.get(s, 0) for s in ("running", "waiting_for_network", "waiting_for_auth"))
        notifier.status(f"{active} active, {counts.get('queued', 0)} queued, {counts.get('failed', 0)} failed")
        await trio.sleep(5)


async def serve(paths: Paths, settings: Settings, notifier: Notifier) -> None:
    store = await Store.open(paths.queue_db)
    try:
        bus = EventBus(store)
        await bus.start()
        auth = Auth(paths.credentials)
        if not tune_http_reads():
            log.get("dataeraid").warning("httpcore has no READ_NUM_BYTES; response bodies are read in its own size")
        timeout = httpx.Timeout(60.0, connect=10.0)
        limits = httpx.Limits(max_connections=settings.max_active_jobs * settings.parts_per_job + 4)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": USER_AGENT},
                                     follow_redirects=False) as http:
            remote = Remote(auth, http)
            jobs = Jobs(bus)
            scheduler = Scheduler(jobs, remote, auth, settings, {"upload": run_upload, "download": run_download})
            services = Services(jobs, bus, scheduler, remote, auth, settings)
            async with trio.open_nursery() as nursery:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    await nursery.start(scheduler.serve)
                    listener = await open_listener(paths.socket)
                    await nursery.start(serve_rpc, REGISTRY, partial(Call, services), listener)
                    notifier.ready("serving")
                    _log.info("daemon ready", socket=str(paths.socket), pid=os.getpid(), queue=str(paths.queue_db))
                    nursery.start_soon(notifier.watchdog)
                    nursery.start_soon(_status_loop, jobs, notifier)
                    nursery.start_soon(_housekeeping, jobs, settings)
                    async for signum in signals:
                        _log.info("stopping", signal=signal.Signals(signum).name)
                        notifier.stopping()
                        nursery.cancel_scope.cancel()
                        break
    finally:
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


def run_daemon(paths: Paths | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM or SIGINT; the exit status."""
    paths = paths or Paths.from_environment()
    log.configure(os.environ.get("DATAERAI_LOG_LEVEL", "info"), _log_stream(paths))
    try:
        settings = Settings.load(paths.config_file)
    except ValueError as exc:
        print(f"error[invalid_argument]: {exc}", file=sys.stderr)
        return 2
    lock = _take_lock(paths.socket)
    if lock is None:
        _log.info("another daemon already serves this socket; exiting", socket=str(paths.socket))
        return 0
    try:
        trio.run(serve, paths, settings, Notifier())
    except DataeraiError as exc:
        _log.error("cannot start", code=exc.code, error=exc.message)
        return 1
    finally:
        if not os.environ.get("LISTEN_FDS"):
            try:
                paths.socket.unlink()
            except FileNotFoundError:
                pass
        os.close(lock)
    _log.info("stopped")
    return 0
