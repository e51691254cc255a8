"""``Observer``: the metrics, the health check, the token's expiry and the alerts of one daemon.

    Observer.serve()           in the daemon's root nursery, after the watches
     ├─ tally.serve            writes counted bytes and retries every 10 s, and at stop
     ├─ monitor.serve          the token's expiry and the repository's reachability
     ├─ alerter.serve          events to the hook and desktop notifications
     ├─ _watch_disks           free space, every few minutes: ``disk.low`` alerts
     └─ serve_metrics          only with ``metrics_listen``: the loopback HTTP endpoint

The RPC methods ``daemon.metrics`` and ``daemon.health`` and the HTTP endpoint all read
through :meth:`Observer.snapshot` and :meth:`Observer.health`, so the three say the same.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio
from dataerai.contract import JOB_STATES

from dataeraid import log, schema
from dataeraid.auth import Auth
from dataeraid.config import Settings
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.observe.alerts import Alert, Alerter
from dataeraid.observe.expiry import AuthMonitor
from dataeraid.observe.health import Facts, Health, WatchFacts, judge, size
from dataeraid.observe.http import open_metrics_listeners, serve_metrics
from dataeraid.observe.metrics import Snapshot, WatchSample, render
from dataeraid.observe.settings import parse_listen
from dataeraid.observe.tally import Tally
from dataeraid.scheduler import Scheduler
from dataeraid.watch.manager import WatchManager
from dataeraid.watch.mounts import filesystem_type

_log = log.get("dataeraid.observe")

#: How often free space is looked at for ``disk.low`` alerts.
DISK_CHECK_INTERVAL_S = 300.0


def bandwidth_limit(scheduler: Scheduler) -> dict[str, int]:
    """The bandwidth limit in force now on each direction (bytes a second, 0 for none): the one place it is read."""
    links = scheduler.bandwidth
    return {"upload": links.shared.rate or links.up.rate, "download": links.shared.rate or links.down.rate}


def _free_bytes(paths: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    found = []
    for what, path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue  # a missing root is the watch's own problem (it is unavailable)
        found.append((what, path, st.f_bavail * st.f_frsize))
    return found


class Observer:
    def __init__(self, *, jobs: Jobs, bus: EventBus, scheduler: Scheduler, watches: WatchManager, auth: Auth,
                 remote: Any, settings: Settings, state_dir: Path, tally: Tally,
                 alerter: Alerter | None = None) -> None:
        self.jobs = jobs
        self.bus = bus
        self.scheduler = scheduler
        self.watches = watches
        self.settings = settings
        self.state_dir = state_dir
        self.tally = tally
        self.monitor = AuthMonitor(auth, remote, bus, settings.auth_warn_days)
        self.alerter = alerter or Alerter(settings, tally)
        #: The metrics endpoint's listeners once it serves (for their port), else empty.
        self.listeners: list[trio.SocketListener] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything; ``DataeraiError`` (before ``started``) when the metrics port cannot be had."""
        store = self.jobs.store
        if self.settings.metrics_listen:
            # Bound before any task starts, so that its failure is one plain error for the daemon's refusal.
            host, port = parse_listen(self.settings.metrics_listen)
            try:
                self.listeners = await open_metrics_listeners(host, port)
            except OSError as exc:
                raise DataeraiError("io_error", f"metrics_listen = {self.settings.metrics_listen!r}: cannot "
                                                f"listen there ({exc.strerror or exc})") from exc
        async with trio.open_nursery() as nursery:
            await nursery.start(self.tally.serve, store)
            await nursery.start(self.alerter.serve, self.bus)
            await nursery.start(self.monitor.serve)
            nursery.start_soon(self._watch_disks)
            if self.listeners:
                await nursery.start(serve_metrics, self.listeners, self.exposition, self.health)
            task_status.started()

    # --- what is read ----------------------------------------------------------------

    async def _failed_recently(self) -> int:
        since = time.time() - self.settings.health_failed_window_s
        jobs = schema.jobs
        query = sa.select(sa.func.count()).where(jobs.c.state == "failed", jobs.c.updated_at >= since)
        return int(await self.jobs.store.transaction(lambda conn: conn.execute(query).scalar_one()))

    async def _disks(self, watch_roots: list[str]) -> list[tuple[str, str, int]]:
        paths = [("the state directory", str(self.state_dir))] + [("watched folder", r) for r in watch_roots]
        return await trio.to_thread.run_sync(_free_bytes, paths)

    async def facts(self) -> tuple[Facts, dict[str, int], list[Any]]:
        counts = await self.jobs.counts()
        watches = await self.watches.all()
        disks = await self._disks(sorted({w["root"] for w in watches}))
        queue_fs = await trio.to_thread.run_sync(filesystem_type, str(self.state_dir))
        m = self.monitor
        facts = Facts(
            now=time.time(), logged_in=m.logged_in, auth_rejected=m.rejected, auth_expires_at=m.expires_at,
            waiting_for_auth=counts.get("waiting_for_auth", 0),
            waiting_for_network=counts.get("waiting_for_network", 0),
            failed_recently=await self._failed_recently(), unreachable_since=m.unreachable_since,
            watches=tuple(WatchFacts(w["watch_id"], w["root"], w["state"], w["lag_s"], w["files"]["quarantined"])
                          for w in watches),
            disks=tuple(disks), queue_filesystem=queue_fs)
        return facts, counts, list(watches)

    async def health(self) -> Health:
        facts, _, _ = await self.facts()
        return judge(facts, self.settings)

    async def snapshot(self) -> Snapshot:
        facts, counts, watches = await self.facts()
        m = self.monitor
        return Snapshot(
            jobs={state: counts.get(state, 0) for state in JOB_STATES},
            watches=tuple(WatchSample(w["watch_id"], w["state"], w["lag_s"], w["files"]["quarantined"])
                          for w in watches),
            bandwidth_limit_bps=bandwidth_limit(self.scheduler), logged_in=m.logged_in,
            auth_expires_at=m.expires_at, reachable=m.reachable, health=judge(facts, self.settings),
            counters=Snapshot.counters_of(self.tally))

    async def exposition(self) -> str:
        return render(await self.snapshot())

    # --- disks ----------------------------------------------------------------------------

    async def _watch_disks(self) -> None:
        while True:
            if self.settings.health_min_free_bytes:
                try:
                    watches = await self.watches.all()
                    for what, path, free in await self._disks(sorted({w["root"] for w in watches})):
                        if free < self.settings.health_min_free_bytes:
                            self.alerter.submit(Alert("disk.low", path, f"{size(free)} free on {what} {path}",
                                                      details={"path": path, "free_bytes": free}))
                except Exception:
                    _log.exception("checking free space failed")
            await trio.sleep(DISK_CHECK_INTERVAL_S)
