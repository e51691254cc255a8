"""Health: ok, degraded or failing, with the reasons, for cron, Nagios and systemd timers.

The rules are pure (:func:`judge`, over :class:`Facts` gathered by ``service``), so
each can be tested alone; docs/operations.md lists them with what to do about each.
Thresholds are ``health_*`` keys of ``config.toml``; 0 turns a count rule off.

failing (2), nothing moves or will soon:
  - the daemon does not answer (the CLI says so; it never starts one to ask)
  - no credentials, or the repository refused the token (expired, revoked)
  - the token expired by the clock, or jobs wait for a login
  - a watch's lag is over ``health_watch_lag_failing_s`` (a day)
degraded (1), a person should look within the day:
  - a watch's lag is over ``health_watch_lag_s`` (an hour)
  - a watch is unavailable (its root is missing, unmounted or replaced)
  - ``health_quarantined_files`` or more files are quarantined
  - ``health_failed_jobs`` or more jobs failed in the last ``health_failed_window_s``
  - the token expires within ``health_auth_expiry_days``
  - less than ``health_min_free_bytes`` free on the state directory's or a watched folder's filesystem
  - the repository has not answered for ``health_unreachable_s``
  - the queue database is on a network filesystem (SQLite's locking is unreliable there)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

from dataeraid.config import Settings
from dataeraid.watch.mounts import NETWORK_FILESYSTEMS

Status = Literal["ok", "degraded", "failing"]
#: The exit status of `dataerai daemon health` for each status.
EXIT_STATUS: Final[dict[str, int]] = {"ok": 0, "degraded": 1, "failing": 2}
STATUSES: Final[tuple[Status, ...]] = ("ok", "degraded", "failing")


@dataclass(frozen=True)
class WatchFacts:
    watch_id: str
    root: str
    state: str
    lag_s: float | None
    quarantined: int


@dataclass(frozen=True)
class Facts:
    """What the rules look at, gathered in one go (``service.Observer.facts``)."""

    now: float
    logged_in: bool
    #: The repository's refusal of the token (``auth_expired``, ...), else None.
    auth_rejected: str | None
    #: Unix time; ``math.inf`` if the token never expires; None when not known.
    auth_expires_at: float | None
    waiting_for_auth: int
    waiting_for_network: int
    failed_recently: int
    unreachable_since: float | None
    watches: tuple[WatchFacts, ...] = ()
    #: (what, path, free bytes) for the state directory and each watched root.
    disks: tuple[tuple[str, str, int], ...] = ()
    queue_filesystem: str | None = None


@dataclass(frozen=True)
class Reason:
    status: Status
    code: str
    text: str


@dataclass(frozen=True)
class Health:
    status: Status
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.status]

    def line(self) -> str:
        """One line: the status, then the reasons, worst first."""
        if not self.reasons:
            return self.status
        ordered = sorted(self.reasons, key=lambda r: -EXIT_STATUS[r.status])
        return f"{self.status}: " + "; ".join(r.text for r in ordered)

    def to_wire(self) -> dict[str, object]:
        return {"status": self.status, "exit_status": self.exit_status, "summary": self.line(),
                "reasons": [{"status": r.status, "code": r.code, "text": r.text} for r in self.reasons]}


def duration(seconds: float) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h``, ``5 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def judge(facts: Facts, settings: Settings) -> Health:
    """The daemon's health by the rules of the module docstring."""
    reasons: list[Reason] = []

    def add(status: Status, code: str, text: str) -> None:
        reasons.append(Reason(status, code, text))

    if not facts.logged_in:
        add("failing", "auth_required", "not logged in (`dataerai auth login`)")
    elif facts.auth_rejected is not None:
        add("failing", facts.auth_rejected, f"the repository refused the token ({facts.auth_rejected}): log in again")
    elif facts.auth_expires_at is not None and not math.isinf(facts.auth_expires_at):
        left = facts.auth_expires_at - facts.now
        if left <= 0:
            add("failing", "auth_expired", "the token expired: log in again")
        elif settings.health_auth_expiry_days > 0 and left <= settings.health_auth_expiry_days * 86400:
            add("degraded", "auth_expiring", f"auth expires in {duration(left)}")
    if facts.waiting_for_auth and not any(r.status == "failing" and r.code.startswith("auth") for r in reasons):
        add("failing", "waiting_for_auth", f"{facts.waiting_for_auth} jobs wait for a login")

    quarantined = 0
    for watch in facts.watches:
        quarantined += watch.quarantined
        if watch.state == "unavailable":
            add("degraded", "watch_unavailable", f"watch {watch.watch_id} unavailable ({watch.root})")
        if watch.lag_s is not None:
            if watch.lag_s > settings.health_watch_lag_failing_s:
                add("failing", "watch_lag", f"watch {watch.watch_id} lag {duration(watch.lag_s)}")
            elif watch.lag_s > settings.health_watch_lag_s:
                add("degraded", "watch_lag", f"watch {watch.watch_id} lag {duration(watch.lag_s)}")
    if settings.health_quarantined_files and quarantined >= settings.health_quarantined_files:
        add("degraded", "quarantined", f"{quarantined} file{'s' if quarantined != 1 else ''} quarantined")
    if settings.health_failed_jobs and facts.failed_recently >= settings.health_failed_jobs:
        add("degraded", "jobs_failed", f"{facts.failed_recently} job{'s' if facts.failed_recently != 1 else ''} "
                                       f"failed in the last {duration(settings.health_failed_window_s)}")
    if facts.unreachable_since is not None and facts.now - facts.unreachable_since >= settings.health_unreachable_s:
        waiting = f", {facts.waiting_for_network} jobs waiting" if facts.waiting_for_network else ""
        add("degraded", "unreachable",
            f"the repository has not answered for {duration(facts.now - facts.unreachable_since)}{waiting}")
    if settings.health_min_free_bytes:
        for what, path, free in facts.disks:
            if free < settings.health_min_free_bytes:
                add("degraded", "disk_low", f"{size(free)} free on {what} {path}")
    if facts.queue_filesystem in NETWORK_FILESYSTEMS:
        add("degraded", "queue_on_network_fs",
            f"the queue database is on {facts.queue_filesystem}, where SQLite's locking is unreliable")

    worst: Status = "ok"
    for reason in reasons:
        if EXIT_STATUS[reason.status] > EXIT_STATUS[worst]:
            worst = reason.status
    return Health(worst, tuple(reasons))
