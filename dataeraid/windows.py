"""Transfer windows: when a job may move bytes, in local wall-clock time.

The grammar (docs/job-states.md#transfer-windows), kept small on purpose::

    window := span ("," span)*
    span   := [days " "] HH:MM "-" HH:MM
    days   := day | day "-" day          day := Mon Tue Wed Thu Fri Sat Sun

``20:00-06:00`` is every night; ``Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00`` is
weeknights and the whole weekend. A span whose end is not after its start
wraps midnight and belongs to the day it *opens* on (``Fri 20:00-06:00`` runs
to Saturday 06:00). ``24:00`` is allowed as an end only; a start equal to its
end is refused (write ``00:00-24:00`` for a whole day). A day range may wrap
the week (``Sat-Mon``). Day names are case-insensitive; spaces around commas
and the dash are allowed.

Times are local wall-clock times in the daemon's zone (:func:`local_zone`), so
"20:00" stays 20:00 across a daylight-saving change. The window is open at an
instant exactly when the wall clock at that instant reads a time inside a
span. That one rule settles the two awkward hours: a span opening at a time
the clock skips (02:30 on a spring-forward night) opens when the clock jumps
past it (at 03:00, the change itself); a time the clock shows twice (autumn)
is inside on both passes.

Everything here is pure: instants are Unix times given by the caller (the
scheduler's injectable wall clock), never read from the system.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dataerai import contract

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The longest text a window may be (a parameter of the RPCs and the watch settings).
MAX_WINDOW_LENGTH = contract.MAX_WINDOW_LENGTH
_MINUTES_PER_DAY = 24 * 60
_MINUTES_PER_WEEK = 7 * _MINUTES_PER_DAY

_SPAN = re.compile(
    r"^\s*(?:(?P<d1>[A-Za-z]{3})(?:\s*-\s*(?P<d2>[A-Za-z]{3}))?\s+)?"
    r"(?P<h1>\d{2}):(?P<m1>\d{2})\s*-\s*(?P<h2>\d{2}):(?P<m2>\d{2})\s*$"
)


class WindowError(ValueError):
    """A window that does not parse; the message says what and where."""


@dataclass(frozen=True)
class Span:
    """Open on ``days`` (0 = Monday) from ``start`` to ``end`` (minutes after midnight;
    ``end`` <= ``start`` means it runs into the next day)."""

    days: frozenset[int]
    start: int
    end: int

    def week_intervals(self) -> list[tuple[int, int]]:
        """Its open intervals in minutes of a week from Monday 00:00 (end may pass the week's end)."""
        length = self.end - self.start if self.end > self.start else self.end + _MINUTES_PER_DAY - self.start
        return [(d * _MINUTES_PER_DAY + self.start, d * _MINUTES_PER_DAY + self.start + length)
                for d in sorted(self.days)]


@dataclass(frozen=True)
class Window:
    """A parsed window: ``text`` as given, and its spans."""

    text: str
    spans: tuple[Span, ...]

    def _intervals(self) -> list[tuple[int, int]]:
        return [iv for span in self.spans for iv in span.week_intervals()]

    def _open_at_wall(self, wall: dt.datetime) -> bool:
        minute = wall.weekday() * _MINUTES_PER_DAY + wall.hour * 60 + wall.minute
        # An interval that runs past Sunday midnight continues at the start of the week.
        return any(lo <= m < hi for lo, hi in self._intervals() for m in (minute, minute + _MINUTES_PER_WEEK))

    def is_open(self, at: float, zone: dt.tzinfo) -> bool:
        """Whether the window is open at the instant ``at`` (Unix time), read on ``zone``'s clock."""
        return self._open_at_wall(_wall(at, zone))

    def next_open(self, at: float, zone: dt.tzinfo) -> float:
        """The first instant at or after ``at`` at which the window is open (``at`` if it is now)."""
        return self._next_change(at, zone, want_open=True)

    def next_close(self, at: float, zone: dt.tzinfo) -> float | None:
        """The first instant at or after ``at`` at which the window is closed (``at`` if it is now);
        None for a window that never closes (``Mon-Sun 00:00-24:00``)."""
        if self._always_open():
            return None
        return self._next_change(at, zone, want_open=False)

    def _always_open(self) -> bool:
        # A span that runs past Sunday midnight covers the start of the week too.
        covered = sorted([*self._intervals(),
                          *((0, hi - _MINUTES_PER_WEEK) for _, hi in self._intervals() if hi > _MINUTES_PER_WEEK)])
        reach = 0
        for lo, hi in covered:
            if lo > reach:
                return False
            reach = max(reach, hi)
        return reach >= _MINUTES_PER_WEEK

    def _next_change(self, at: float, zone: dt.tzinfo, *, want_open: bool) -> float:
        if self._open_at_wall(_wall(at, zone)) == want_open:
            return at
        # The state changes only at a span's edge, or where the wall clock jumps (a zone's
        # transition); both fall on minute boundaries of some offset. Walk the candidate wall
        # minutes of the next eight days in order and take the first instant that qualifies.
        edges = sorted({lo % _MINUTES_PER_WEEK for lo, _ in self._intervals()} if want_open
                       else {hi % _MINUTES_PER_WEEK for _, hi in self._intervals()})
        start_wall = _wall(at, zone).replace(second=0, microsecond=0, tzinfo=None)
        week_start = (start_wall - dt.timedelta(days=start_wall.weekday())).replace(hour=0, minute=0)
        best: float | None = None
        for week in range(3):
            for edge in edges:
                wall = week_start + dt.timedelta(weeks=week, minutes=edge)
                for instant in _instants(wall, zone):
                    if instant > at and self._open_at_wall(_wall(instant, zone)) == want_open:
                        best = instant if best is None else min(best, instant)
            if best is not None:
                break
        if best is None:  # pragma: no cover - every window has an edge within two weeks
            raise WindowError(f"window {self.text!r} never changes")
        # Where the clock jumps (a zone's transition) it may land in the wanted state between edges:
        # into a span that opens in the skipped hour, or back into one it had just left.
        for jump in _jumps(at, best, zone):
            if self._open_at_wall(_wall(jump, zone)) == want_open:
                return jump
        return best


def _wall(at: float, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, zone)


def _instants(wall: dt.datetime, zone: dt.tzinfo) -> list[float]:
    """The instants at which ``zone``'s clock reads ``wall`` (two in a repeated hour, one
    otherwise; for a skipped wall time, the two readings of PEP 495, which bracket the jump)."""
    return sorted({wall.replace(tzinfo=zone, fold=fold).timestamp() for fold in (0, 1)})


def _offset(at: float, zone: dt.tzinfo) -> dt.timedelta | None:
    return _wall(at, zone).utcoffset()


def _jumps(start: float, end: float, zone: dt.tzinfo) -> list[float]:
    """The instants in (``start``, ``end``) where ``zone``'s offset changes, to the second, in order.
    zoneinfo lists no transitions, so look hourly (zones change at most a few times a year, never
    twice within an hour) and bisect each change."""
    found: list[float] = []
    lo = start
    before = _offset(lo, zone)
    while lo < end:
        hi = min(end, lo + 3600)
        if _offset(hi, zone) != before:
            a, b = lo, hi
            while b - a > 1:
                mid = math.floor((a + b) / 2)
                if mid <= a:
                    break
                if _offset(mid, zone) == before:
                    a = mid
                else:
                    b = mid
            if start < b < end:
                found.append(b)
            before = _offset(hi, zone)
        lo = hi
    return found


def parse(text: str) -> Window:
    """The window ``text`` describes (grammar in the module docstring), or :class:`WindowError`."""
    if len(text) > MAX_WINDOW_LENGTH:
        raise WindowError(f"a window is at most {MAX_WINDOW_LENGTH} characters")
    if not text.strip():
        raise WindowError("a window is empty; leave it out to transfer at any time")
    spans = []
    for part in text.split(","):
        match = _SPAN.match(part)
        if match is None:
            raise WindowError(f"{part.strip()!r} is not a span like '20:00-06:00' or 'Mon-Fri 20:00-06:00'")
        start = _minutes(match["h1"], match["m1"], part, end=False)
        end = _minutes(match["h2"], match["m2"], part, end=True)
        if start == end:
            raise WindowError(f"{part.strip()!r} opens and closes at the same time (write 00:00-24:00 for a whole day)")
        spans.append(Span(_days(match["d1"], match["d2"], part), start, end))
    return Window(text, tuple(spans))


def problem(text: str) -> str | None:
    """Why ``text`` is not a window, or None (for parameter checks)."""
    try:
        parse(text)
    except WindowError as exc:
        return str(exc)
    return None


def _minutes(hours: str, minutes: str, part: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not end)):
        raise WindowError(f"{part.strip()!r}: {hours}:{minutes} is not a time of day"
                          + (" (24:00 only ends a span)" if h == 24 and not end else ""))
    return h * 60 + m


def _day(name: str, part: str) -> int:
    try:
        return DAY_NAMES.index(name.lower())
    except ValueError:
        raise WindowError(f"{part.strip()!r}: {name!r} is not a day (Mon Tue Wed Thu Fri Sat Sun)") from None


def _days(first: str | None, last: str | None, part: str) -> frozenset[int]:
    if first is None:
        return frozenset(range(7))
    a = _day(first, part)
    b = _day(last, part) if last is not None else a
    return frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))


def local_zone() -> dt.tzinfo:
    """The daemon's local zone with its daylight-saving rules: ``TZ`` if it names a zone, else
    /etc/localtime, else UTC (a fixed offset would get every DST change wrong)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return dt.timezone.utc


def describe(at: float, zone: dt.tzinfo) -> str:
    """``at`` as a person reads it in the local zone (``2026-12-04 20:00 CET``)."""
    return _wall(at, zone).strftime("%Y-%m-%d %H:%M %Z").strip()
