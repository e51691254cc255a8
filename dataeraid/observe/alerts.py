"""Alerts a person notices, not noise: a hook command and desktop notifications on chosen events.

Kinds (``alert_on``; all by default): ``job.failed``, ``file.quarantined``,
``watch.paused``, ``watch.unavailable``, ``auth.expiring`` (from the durable events)
and ``disk.low`` (from the observer's periodic look at the disks).

Noise is bounded twice, by :class:`Gate`:

- **de-duplicated**: the same kind and subject (a job, a watched file, a watch, the
  token, a disk) is not told again within ``alert_dedup_s`` (an hour);
- **rate-limited**: at most ``alert_max_per_hour`` alerts in any hour; what comes
  over is counted, not sent, and once the hour allows one more, a single
  ``alerts.suppressed`` summary says how many of each kind were held back.

The hook (``alert_command``, run without a shell) gets the alert as one JSON object
on stdin and ``DATAERAI_ALERT_KIND``, ``DATAERAI_ALERT_SUBJECT`` and
``DATAERAI_ALERT_SUMMARY`` in its environment. Hooks run one at a time in the
alerter's own task with ``alert_timeout_s`` each (then the process is killed);
a failure is logged and counted (``dataerai_alerts_total{outcome="failed"}``). Nothing
here waits on the daemon's work: the event bus drops events for a slow subscriber
instead of waiting for it, and the alerter's queue drops alerts when full.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from dataeraid import log
from dataeraid.config import LiveSettings, Settings
from dataeraid.observe import catalogue
from dataeraid.observe.desktop import Desktop
from dataeraid.observe.tally import Tally

_log = log.get("dataeraid.observe")

HOUR_S = 3600.0
#: Alerts waiting for the hook at most; more are dropped (and logged).
QUEUE_SIZE = 64
#: What a failed hook's stderr contributes to the log, at most.
STDERR_TAIL = 2000
#: The event types alerts come from.
EVENT_TYPES = ("job.state", "watch.file", "watch.state", "auth.expiring")

Verdict = Literal["send", "deduplicated", "suppressed"]


@dataclass(frozen=True)
class Alert:
    kind: str
    #: What it is about: a job id, ``watch_id:path``, a watch id, the server's URL, a path.
    subject: str
    #: One line for a person.
    summary: str
    urgency: Literal["normal", "critical"] = "normal"
    details: Mapping[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "summary": self.summary, "urgency": self.urgency,
                "time": self.time, "host": os.uname().nodename, "details": dict(self.details)}


def from_event(event: Mapping[str, Any]) -> Alert | None:
    """The alert an event raises, if any."""
    kind = event.get("type")
    if kind == "job.state" and event.get("state") == "failed":
        job = event.get("job") or {}
        error = job.get("error") or {}
        what = job.get("local_path") or job.get("file_name") or job.get("asset_id") or ""
        return Alert("job.failed", str(event.get("job_id")),
                     f"{job.get('kind', 'job')} {event.get('job_id')} failed: [{error.get('code')}] "
                     f"{error.get('message', '')} {what}".strip(),
                     details={"event": dict(event)})
    if kind == "watch.file" and event.get("state") == "quarantined":
        error = (event.get("file") or {}).get("error") or {}
        return Alert("file.quarantined", f"{event.get('watch_id')}:{event.get('path')}",
                     f"watch {event.get('watch_id')}: {event.get('path')} quarantined: [{error.get('code')}] "
                     f"{error.get('message', '')}".strip(), details={"event": dict(event)})
    if kind == "watch.state" and event.get("state") in ("paused", "unavailable"):
        watch = event.get("watch") or {}
        problem = watch.get("problem") or {}
        why = f": {problem.get('message')}" if problem.get("message") else ""
        return Alert(f"watch.{event['state']}", str(event.get("watch_id")),
                     f"watch {event.get('watch_id')} ({watch.get('root', '')}) is {event['state']}{why}",
                     details={"event": dict(event)})
    if kind == "auth.expiring":
        days = float(event.get("days_left", 0))
        return Alert("auth.expiring", str(event.get("server_url")),
                     f"the token for {event.get('server_url')} expires in {days:.1f} days "
                     f"({event.get('expires_at')}): run `dataerai auth login`",
                     urgency="critical" if days <= 1 else "normal", details={"event": dict(event)})
    return None


class Gate:
    """De-duplication and the hourly budget, on a clock in seconds (Trio's, so tests fake it)."""

    def __init__(self, dedup_s: float, max_per_hour: int) -> None:
        self._dedup_s = dedup_s
        self._max = max_per_hour
        self._last: dict[tuple[str, str], float] = {}
        self._sent: collections.deque[float] = collections.deque()
        #: Held back by the budget since the last summary, by kind.
        self.suppressed: collections.Counter[str] = collections.Counter()

    def tune(self, dedup_s: float, max_per_hour: int) -> None:
        """New limits (a reload), against what was sent already: each send still counts for its hour, and
        keeps its kind and subject quiet for the new ``dedup_s`` after it (sends of the last hour at
        least are remembered, so a window raised up to an hour counts them all)."""
        self._dedup_s = dedup_s
        self._max = max_per_hour

    def _forget(self, now: float) -> None:
        while self._sent and now - self._sent[0] >= HOUR_S:
            self._sent.popleft()
        # Kept for an hour at least (only sends are kept: alert_max_per_hour of them an hour), so that a
        # window raised by a reload still counts the sends of the hour before it.
        keep_s = max(self._dedup_s, HOUR_S)
        if len(self._last) > 1000 or (self._last and now - min(self._last.values()) >= keep_s):
            self._last = {key: t for key, t in self._last.items() if now - t < keep_s}

    def admit(self, alert: Alert, now: float) -> Verdict:
        self._forget(now)
        key = (alert.kind, alert.subject)
        last = self._last.get(key)
        if last is not None and now - last < self._dedup_s:
            return "deduplicated"
        if len(self._sent) >= self._max:
            self.suppressed[alert.kind] += 1
            return "suppressed"
        self._last[key] = now
        self._sent.append(now)
        return "send"

    def summary_at(self) -> float | None:
        """When a summary of what was held back may go (the clock's time), or None if nothing was."""
        if not self.suppressed:
            return None
        return self._sent[0] + HOUR_S if len(self._sent) >= self._max else -float("inf")

    def summary(self, now: float) -> Alert | None:
        """The summary of what was held back, if the budget allows one now (it counts as a send)."""
        self._forget(now)
        if not self.suppressed or len(self._sent) >= self._max:
            return None
        counts, self.suppressed = dict(self.suppressed), collections.Counter()
        self._sent.append(now)
        total = sum(counts.values())
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        return Alert("alerts.suppressed", "alerts",
                     f"{total} more alert{'s' if total != 1 else ''} held back in the last hour ({listed}); "
                     "see `dataerai status` and `dataerai daemon health`", details={"suppressed": counts})


Runner = Callable[[tuple[str, ...], Alert, float], Awaitable[bool]]


async def run_hook(command: tuple[str, ...], alert: Alert, timeout_s: float) -> bool:
    """Run the hook once for ``alert``; whether it exited 0 in time (a failure is logged)."""
    env = {**os.environ, "DATAERAI_ALERT_KIND": alert.kind, "DATAERAI_ALERT_SUBJECT": alert.subject,
           "DATAERAI_ALERT_SUMMARY": alert.summary}
    payload = (json.dumps(alert.to_json()) + "\n").encode("utf-8")
    try:
        with trio.move_on_after(timeout_s) as scope:
            done = await trio.run_process(list(command), stdin=payload, capture_stdout=True, capture_stderr=True,
                                          check=False, env=env)
    except OSError as exc:
        _log.warning("the alert hook could not run", command=command[0], kind=alert.kind, error=str(exc))
        return False
    if scope.cancelled_caught:
        _log.warning("the alert hook timed out and was killed", command=command[0], kind=alert.kind,
                     timeout_s=timeout_s)
        return False
    if done.returncode != 0:
        _log.warning("the alert hook failed", command=command[0], kind=alert.kind, status=done.returncode,
                     stderr=done.stderr.decode("utf-8", "replace")[-STDERR_TAIL:])
        return False
    return True


class Alerter:
    """Turns events (and the observer's disk checks) into alerts and sends them, one at a time.

    ``settings``: a ``LiveSettings`` to follow reloads (the daemon's), or fixed ``Settings``.
    Every ``alert_*`` key and ``desktop_notifications`` is read when it is used, so a reload
    applies to the next alert: ``alert_on`` and whether alerts are on at all when an alert is
    submitted and again when its turn comes; ``alert_dedup_s`` and ``alert_max_per_hour``
    when it is admitted, against what was sent before the reload (the hour's sends still
    count against a lowered budget; a raised one lets a held-back summary go at once);
    ``alert_command`` and ``alert_timeout_s`` when it is sent (a hook running keeps its own).
    Alerts turned on by a reload follow the events from then on; turned off, the
    subscription to the events is closed and alerts waiting are dropped.
    """

    def __init__(self, settings: Settings | LiveSettings, tally: Tally, *, runner: Runner = run_hook,
                 desktop: Desktop | None = None) -> None:
        self._live = LiveSettings.of(settings)
        current = self._live.current
        self._gate = Gate(current.alert_dedup_s, current.alert_max_per_hour)
        self._tally = tally
        self._runner = runner
        self._given_desktop = desktop
        self._desktop: Desktop | None = None
        self._send, self._receive = trio.open_memory_channel[Alert](QUEUE_SIZE)
        #: Woken by a reload: whether alerts are on may have changed.
        self._toggled = trio.Event()
        #: The scope following the events, while alerts are on.
        self._following: trio.CancelScope | None = None
        #: The scope ``_deliver`` waits in (for an alert, or the time of a summary).
        self._waiting: trio.CancelScope | None = None
        self._live.listen(self._changed)

    @property
    def enabled(self) -> bool:
        settings = self._live.current
        return bool(settings.alert_command) or settings.desktop_notifications

    def _changed(self, old: Settings, new: Settings) -> None:
        if old.desktop_notifications != new.desktop_notifications:
            self._desktop = None  # turned on again: a new try (jeepney may be installed, a session bus there now)
        if self._following is not None and not self.enabled:
            self._following.cancel()
        self._toggled.set()
        if self._waiting is not None:
            self._waiting.cancel()  # the budget may allow the summary now, or later

    def _desktop_now(self) -> Desktop | None:
        if not self._live.current.desktop_notifications:
            return None
        if self._desktop is None:
            self._desktop = self._given_desktop if self._given_desktop is not None else Desktop()
        return self._desktop

    def _wanted(self, alert: Alert) -> bool:
        return alert.kind in self._live.current.alert_on and self.enabled

    def submit(self, alert: Alert) -> None:
        """Queue an alert without ever waiting; dropped (and logged) when the queue is full."""
        if not self._wanted(alert):
            return
        try:
            self._send.send_nowait(alert)
        except trio.WouldBlock:
            _log.warning("alert dropped: the hook is behind", kind=alert.kind, subject=alert.subject)

    async def serve(self, bus: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver alerts, and follow the events while alerts are on; started once following (if on)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver)
            started = False
            while True:
                self._toggled = trio.Event()
                if not self.enabled:
                    if not started:
                        task_status.started()
                        started = True
                    await self._toggled.wait()
                    continue
                subscription = await bus.subscribe(types=list(EVENT_TYPES))
                try:
                    if not started:
                        task_status.started()
                        started = True
                    self._following = scope = trio.CancelScope()
                    with scope:
                        await self._follow(subscription)
                    if not scope.cancelled_caught:
                        return  # the events ended (the bus closed)
                finally:
                    self._following = None
                    subscription.close()

    async def _follow(self, subscription: Any) -> None:
        async for event in subscription:
            if event["type"] == "gap":
                _log.warning("alerts missed events: the hook is behind", missed_from=event["missed_from"],
                             missed_to=event["missed_to"])
                continue
            alert = from_event(event)
            if alert is not None:
                self.submit(alert)

    def _tune_gate(self) -> None:
        settings = self._live.current
        self._gate.tune(settings.alert_dedup_s, settings.alert_max_per_hour)

    async def _deliver(self) -> None:
        while True:
            self._tune_gate()
            at = self._gate.summary_at()
            alert: Alert | None = None
            self._waiting = trio.CancelScope(deadline=at if at is not None else float("inf"))
            with self._waiting:
                alert = await self._receive.receive()
            self._waiting = None
            now = trio.current_time()
            self._tune_gate()
            if alert is None:
                summary = self._gate.summary(now)
                if summary is not None and self.enabled:
                    await self._emit(summary)
                continue
            if not self._wanted(alert):
                continue  # turned off (or its kind taken out of alert_on) while it waited
            verdict = self._gate.admit(alert, now)
            if verdict != "send":
                self._tally.add(catalogue.ALERTS, (alert.kind, verdict))
                continue
            await self._emit(alert)

    async def _emit(self, alert: Alert) -> None:
        _log.info("alert", kind=alert.kind, subject=alert.subject, summary=alert.summary)
        settings = self._live.current
        ok = True
        if settings.alert_command:
            ok = await self._runner(settings.alert_command, alert, settings.alert_timeout_s)
        desktop = self._desktop_now()
        if desktop is not None:
            await desktop.notify(f"Dataerai: {alert.kind}", alert.summary, alert.urgency)
        self._tally.add(catalogue.ALERTS, (alert.kind, "sent" if ok else "failed"))
