"""The daemon's own controls: its bandwidth over time, reloading config.toml, stopping.

    DaemonControl.serve()        in the root nursery, before the scheduler
     └─ follows the bandwidth timetable: sets the links' rates at each boundary,
        and again whenever a reload changes the settings
    DaemonControl.follow_signals()
        SIGHUP: reload; SIGTERM, SIGINT: stop
    daemon.reload, daemon.stop   (dataeraid.methods.daemon) call reload and request_stop

Time: the task sleeps on Trio's clock until the next boundary of the timetable,
read from the local wall clock (``wall_now``, injectable), but never longer than
``RECHECK_S``: Trio's clock does not count a suspended machine, and the wall
clock moves under it at a DST change or when it is set by hand, so the limit is
at most that late after either.
"""

from __future__ import annotations

import math
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from dataeraid import log
from dataeraid.bwlimit import OFF, Limit, Timetable
from dataeraid.config import RESTART_KEYS, LiveSettings, Settings
from dataeraid.engine.bandwidth import Links
from dataeraid.errors import DataeraiError
from dataeraid.windows import local_zone

_log = log.get("dataeraid.control")

#: The longest the timetable task sleeps before it reads the wall clock again.
RECHECK_S = 60.0
#: How long a ``daemon.stop`` waits before the tree is cancelled, so its answer leaves first.
ANSWER_GRACE_S = 0.2


def local_wall_now() -> datetime:
    """The local wall time, naive: what the timetable's HH:MM and days mean.

    Read in the zone the transfer windows use (:func:`~dataeraid.windows.local_zone`), so that
    the timetable and the windows never disagree about what time it is here.
    """
    return datetime.now(local_zone()).replace(tzinfo=None)


class DaemonControl:
    """``links`` carry every job's bytes; ``live`` holds the settings in force."""

    def __init__(self, live: LiveSettings, config_file: Path, *, under_systemd: bool = False,
                 wall_now: Callable[[], datetime] = local_wall_now,
                 on_reload: Callable[[], None] = lambda: None) -> None:
        self.live = live
        self.links = Links(shared_bps=live.current.bandwidth_limit_bps)
        self.config_file = config_file
        self.under_systemd = under_systemd
        self._wall_now = wall_now
        self._on_reload = on_reload
        self._settings_changed = trio.Event()
        self._stop = trio.Event()
        self._stop_reason = ""
        self._limit: Limit = OFF
        self._next: tuple[datetime, Limit] | None = None
        self._nursery: trio.Nursery | None = None
        self._reloading = trio.Lock()
        live.listen(self._changed)

    # --- bandwidth ----------------------------------------------------------------

    def _changed(self, old: Settings, new: Settings) -> None:
        self._settings_changed.set()

    def _apply(self, settings: Settings, timetable: Timetable | None, now: datetime) -> None:
        limit = timetable.limit_at(now) if timetable is not None else OFF
        self._next = timetable.next_change(now) if timetable is not None else None
        rates = (settings.bandwidth_limit_bps, limit.up, limit.down)
        before = (self.links.shared.rate, self.links.up.rate, self.links.down.rate)
        self._limit = limit
        if rates != before:
            self.links.set_rates(*rates)
            _log.info("bandwidth limit", upload_bps=limit.up, download_bps=limit.down,
                      shared_bps=settings.bandwidth_limit_bps, bwlimit=str(limit) if timetable else None,
                      next_change=self._next[0].isoformat(timespec="minutes") if self._next else None)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the links' rates to the settings and the timetable; started once the first are set."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            started = False
            while True:
                settings = self.live.current
                timetable = settings.timetable
                self._settings_changed = trio.Event()
                now = self._wall_now()
                self._apply(settings, timetable, now)
                if not started:
                    task_status.started()
                    started = True
                # No next change: nothing changes until a reload, which wakes this task.
                delay = math.inf if self._next is None else min(
                    RECHECK_S, max((self._next[0] - now).total_seconds(), 0.001))
                with trio.move_on_after(delay):
                    await self._settings_changed.wait()

    def bandwidth(self) -> dict[str, Any]:
        """What ``daemon.status`` says of the limit in force now (0 is no limit)."""
        return {
            "upload_bps": self.links.up.rate,
            "download_bps": self.links.down.rate,
            "shared_bps": self.links.shared.rate,
            "bwlimit": self.live.current.bwlimit or None,
            "next_change": self._next[0].isoformat(timespec="minutes") if self._next else None,
        }

    # --- reload -------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Read config.toml again and put what it says in force.

        Raises ``DataeraiError("invalid_argument")`` with the message a start would
        give for the same file, or the error of a part of the daemon that cannot take
        the new settings (``io_error``: the new ``metrics_listen`` cannot be listened
        on); the settings in force then stay as they were, all of them. One reload at
        a time: a SIGHUP during a ``daemon.reload`` waits for it.
        """
        async with self._reloading:
            try:
                new = await trio.to_thread.run_sync(Settings.load, self.config_file)
            except ValueError as exc:
                _log.warning("config reload refused", error=str(exc))
                raise DataeraiError("invalid_argument", str(exc)) from exc
            try:
                changed = await self.live.replace_staged(new)
            except DataeraiError as exc:
                _log.warning("config reload refused", error=exc.message)
                raise
            restart = [key for key in changed if key in RESTART_KEYS]
            _log.info("config reloaded", changed=changed, restart_needed=restart)
            # In force before the answer; the timetable task, woken by the change, plans from here.
            self._apply(new, new.timetable, self._wall_now())
            self._on_reload()
            return {"changed": changed, "restart_needed": restart}

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except DataeraiError:
            pass  # logged; the old settings stay

    # --- stop ---------------------------------------------------------------------

    def request_stop(self, reason: str, grace_s: float = 0.0) -> None:
        """Stop the daemon as SIGTERM does, after ``grace_s`` (time for an answer to leave)."""
        if self._stop.is_set() or self._stop_reason:
            return
        self._stop_reason = reason
        if grace_s <= 0 or self._nursery is None:
            self._stop.set()
            return

        async def later() -> None:
            await trio.sleep(grace_s)
            self._stop.set()

        self._nursery.start_soon(later)

    async def stopped(self) -> str:
        """Wait for a stop request; why it came."""
        await self._stop.wait()
        return self._stop_reason

    async def follow_signals(self, signals: AsyncIterator[int]) -> None:
        """SIGHUP reloads config.toml; SIGTERM and SIGINT stop the daemon."""
        async for signum in signals:
            if signum == signal.SIGHUP:
                _log.info("reloading", signal="SIGHUP")
                if self._nursery is not None:
                    self._nursery.start_soon(self._reload_quietly)
                else:
                    await self._reload_quietly()
            else:
                self.request_stop(signal.Signals(signum).name)
