"""``Observer``: the metrics, the health check, the token's expiry and the alerts of one daemon.

    Observer.serve()           in the daemon's root nursery, after the watches
     ├─ tally.serve            writes counted bytes and retries every 10 s, and at stop
     ├─ monitor.serve          the token's expiry and the repository's reachability
     ├─ alerter.serve          events to the hook and desktop notifications
     ├─ _watch_disks           free space, every few minutes: ``disk.low`` alerts
     └─ metrics.serve          the loopback HTTP endpoint, on ``metrics_listen`` when it is set

The RPC methods ``daemon.metrics`` and ``daemon.health`` and the HTTP endpoint all read
through :meth:`Observer.snapshot` and :meth:`Observer.health`, so the three say the same.

Every key of the observer follows a reload (``LiveSettings``): the health thresholds are
read at each check, the alert settings at each alert (``Alerter``), ``auth_warn_days`` at
each expiry check (one is made at once when they change), and the free space is looked at
again at once when its threshold or the alerts change. A new ``metrics_listen`` is bound
before the reload is put in force (:meth:`Observer._stage_metrics`): an address that
cannot be listened on refuses the whole reload, and the old endpoint goes on.
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
from dataeraid.config import LiveSettings, Settings, Staged
from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.observe.alerts import Alert, Alerter
from dataeraid.observe.expiry import AuthMonitor
from dataeraid.observe.health import Facts, Health, WatchFacts, judge, size
from dataeraid.observe.http import MetricsPort, open_metrics_listeners
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


async def _listen(value: str) -> list[trio.SocketListener]:
    """The metrics endpoint's listeners at ``metrics_listen = value``; the error a start or a reload refuses with."""
    host, port = parse_listen(value)
    try:
        return await open_metrics_listeners(host, port)
    except OSError as exc:
        raise DataeraiError("io_error", f"metrics_listen = {value!r}: cannot listen there "
                                        f"({exc.strerror or exc})") from exc


#: A change of these makes the disks be looked at again at once (a ``disk.low`` alert may be due now).
_DISK_ALERT_KEYS = frozenset({"health_min_free_bytes", "alert_command", "alert_on", "alert_dedup_s",
                              "alert_max_per_hour", "desktop_notifications"})


class Observer:
    """``settings``: a ``LiveSettings`` to follow reloads (the daemon's), or fixed ``Settings``."""

    def __init__(self, *, jobs: Jobs, bus: EventBus, scheduler: Scheduler, watches: WatchManager, auth: Auth,
                 remote: Any, settings: Settings | LiveSettings, state_dir: Path, tally: Tally,
                 alerter: Alerter | None = None) -> None:
        self.jobs = jobs
        self.bus = bus
        self.scheduler = scheduler
        self.watches = watches
        self.live = LiveSettings.of(settings)
        self.state_dir = state_dir
        self.tally = tally
        self.monitor = AuthMonitor(auth, remote, bus, lambda: self.live.current.auth_warn_days)
        self.alerter = alerter or Alerter(self.live, tally)
        self.metrics = MetricsPort(self.exposition, self.health)
        #: The address the metrics endpoint listens on now (``parse_listen``'s), None when off.
        self._metrics_address: tuple[str, int] | None = None
        self._serving = False
        self._look_at_disks = trio.Event()
        self.live.listen(self._changed)
        self.live.stage(self._stage_metrics)

    @property
    def settings(self) -> Settings:
        """The settings in force now."""
        return self.live.current

    @property
    def listeners(self) -> list[trio.SocketListener]:
        """The metrics endpoint's listeners now (for their port), else empty."""
        return self.metrics.listeners

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything; ``DataeraiError`` (before ``started``) when the metrics port cannot be had."""
        store = self.jobs.store
        settings = self.live.current
        # Bound before any task starts, so that its failure is one plain error for the daemon's refusal.
        listeners = await _listen(settings.metrics_listen) if settings.metrics_listen else []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.metrics.serve)
                self.metrics.swap(listeners)
                self._metrics_address = parse_listen(settings.metrics_listen) if listeners else None
                listeners = []  # the endpoint's now: it closes them
                self._serving = True
                await nursery.start(self.tally.serve, store)
                await nursery.start(self.alerter.serve, self.bus)
                await nursery.start(self.monitor.serve)
                nursery.start_soon(self._watch_disks)
                task_status.started()
        finally:
            self._serving = False
            for listener in listeners:
                listener.socket.close()  # cancelled before the endpoint took them

    # --- reload ---------------------------------------------------------------------------

    def _changed(self, old: Settings, new: Settings) -> None:
        changed = set(old.changed(new))
        if "auth_warn_days" in changed:
            self.monitor.recheck()
        if changed & _DISK_ALERT_KEYS:
            self._look_at_disks.set()

    async def _stage_metrics(self, old: Settings, new: Settings) -> Staged:
        """Bind the new ``metrics_listen`` before the reload is in force (refused if it cannot be); moved with it.

        Compared by address, not by text: ``localhost:9464`` after ``127.0.0.1:9464``
        keeps the listener (binding it again would find the port taken, by itself).
        """
        address = parse_listen(new.metrics_listen) if new.metrics_listen else None
        if not self._serving or address == self._metrics_address:
            return Staged()
        listeners = await _listen(new.metrics_listen) if address is not None else []

        def commit() -> None:
            self.metrics.swap(listeners)
            self._metrics_address = address

        async def abort() -> None:
            for listener in listeners:
                await listener.aclose()

        return Staged(commit, abort)

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
            self._look_at_disks = trio.Event()
            threshold = self.settings.health_min_free_bytes
            if threshold:
                try:
                    watches = await self.watches.all()
                    for what, path, free in await self._disks(sorted({w["root"] for w in watches})):
                        if free < threshold:
                            self.alerter.submit(Alert("disk.low", path, f"{size(free)} free on {what} {path}",
                                                      details={"path": path, "free_bytes": free}))
                except Exception:
                    _log.exception("checking free space failed")
            with trio.move_on_after(DISK_CHECK_INTERVAL_S):
                await self._look_at_disks.wait()
