"""The bandwidth timetable of ``config.toml`` (``bwlimit``), in rclone's ``--bwlimit`` shape.

Sans-I/O: parsing, and "which limit at this local wall time, and when does it change next".
The daemon's task that follows it lives in ``dataeraid.control``.

Grammar (tokens are separated by spaces or ``;``)::

    bwlimit   := RATE                         one limit all week
               | item (SEP item)*
    item      := DAYS                         the slots after it apply to these days
               | [DAY "-"] HH:MM "," RATE     a slot; with DAY, on that day only
    DAYS      := DAY | DAY "-" DAY            "Mon-Fri", "Sat-Sun", "Fri-Mon" (wraps)
    DAY       := Mon … Sun, or the whole name, any case
    RATE      := SIZE | SIZE ":" SIZE         upload:download
    SIZE      := "off" | NUMBER [SUFFIX]      a bare number is KiB/s, and 0 is off, as in rclone
    SUFFIX    := b | k | M | G | T | P, any case, optionally followed by "i" or "iB" (1024 multiples)

A slot with no day applies to every day (rclone's rule), or to the days of the
last ``DAYS`` item before it. The limit at a time is that of the latest slot at
or before it in the week, wrapping from the week's last slot to its first; a
later slot for the same day and minute replaces an earlier one (rclone's rule).
So ``"Mon-Fri 08:00,2M 19:00,off Sat-Sun 00:00,off"`` is 2 MiB/s on weekdays from
08:00 to 19:00 and no limit otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

#: Monday first, as ``datetime.weekday()`` counts.
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MINUTES_A_DAY = 24 * 60
MINUTES_A_WEEK = 7 * MINUTES_A_DAY
_MULTIPLIERS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
#: Above any link there is: a limit past it is a typo (a bare number is KiB/s).
MAX_RATE = 1024**5
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?:(?P<suffix>[bkmgtp])(?:i|ib)?)?", re.IGNORECASE)
_TIME = re.compile(r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})")
_SEPARATOR = re.compile(r"[ \t;]+")


class BwlimitError(ValueError):
    """``text`` is not a timetable; ``column`` (1-based) is where the problem starts."""

    def __init__(self, text: str, column: int, problem: str) -> None:
        self.text = text
        self.column = column
        self.problem = problem
        super().__init__(f"bwlimit {text!r}: at column {column}: {problem}")


@dataclass(frozen=True, order=True)
class Limit:
    """Bytes per second for uploads and for downloads; 0 is no limit."""

    up: int = 0
    down: int = 0

    def __str__(self) -> str:
        up, down = format_size(self.up), format_size(self.down)
        return up if up == down else f"{up}:{down}"

    @property
    def off(self) -> bool:
        return self.up == 0 and self.down == 0


OFF = Limit(0, 0)


@dataclass(frozen=True, order=True)
class Slot:
    """From ``minute`` (0-1439) of ``day`` (0 = Monday) on, until the next slot: ``limit``."""

    day: int
    minute: int
    limit: Limit

    @property
    def week_minute(self) -> int:
        return self.day * MINUTES_A_DAY + self.minute

    def __str__(self) -> str:
        return f"{DAY_NAMES[self.day]}-{self.minute // 60:02d}:{self.minute % 60:02d},{self.limit}"


def format_size(rate: int) -> str:
    """``rate`` bytes a second as the timetable writes it: ``off``, ``512k``, ``2M``, ``1000b``."""
    if rate == 0:
        return "off"
    for suffix, factor in (("P", 1024**5), ("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("k", 1024)):
        if rate % factor == 0:
            return f"{rate // factor}{suffix}"
    return f"{rate}b"


def week_minute(when: datetime) -> int:
    return when.weekday() * MINUTES_A_DAY + when.hour * 60 + when.minute


@dataclass(frozen=True)
class Timetable:
    """Slots in week order, at most one per day and minute; never empty."""

    slots: tuple[Slot, ...]

    @classmethod
    def constant(cls, limit: Limit) -> Timetable:
        return cls((Slot(0, 0, limit),))

    @classmethod
    def parse(cls, text: str) -> Timetable:
        """The timetable ``text`` says; ``BwlimitError`` naming the column of the first problem."""
        return _Parser(text).parse()

    def __str__(self) -> str:
        if self.is_constant:
            return str(self.slots[0].limit)
        return " ".join(map(str, self.slots))

    @property
    def is_constant(self) -> bool:
        return len({slot.limit for slot in self.slots}) == 1

    def _index_at(self, minute: int) -> int:
        """The index of the slot in force at ``minute`` of the week (the last one wraps round)."""
        found = len(self.slots) - 1
        for i, slot in enumerate(self.slots):
            if slot.week_minute <= minute:
                found = i
            else:
                break
        return found

    def limit_at(self, when: datetime) -> Limit:
        """The limit in force at local wall time ``when`` (its weekday, hour and minute)."""
        return self.slots[self._index_at(week_minute(when))].limit

    def next_change(self, when: datetime) -> tuple[datetime, Limit] | None:
        """The next wall time after ``when`` at which the limit differs from the one now, and that limit.

        Naive wall-clock arithmetic: the caller turns it into a delay (and rechecks, since a
        DST change or a clock set by hand moves the wall clock under it). None when the
        limit never changes.
        """
        if self.is_constant:
            return None
        now = week_minute(when)
        index = self._index_at(now)
        current = self.slots[index].limit
        start = when.replace(second=0, microsecond=0)
        for step in range(1, len(self.slots) + 1):
            slot = self.slots[(index + step) % len(self.slots)]
            if slot.limit != current:
                ahead = (slot.week_minute - now) % MINUTES_A_WEEK or MINUTES_A_WEEK
                return start + timedelta(minutes=ahead), slot.limit
        return None  # pragma: no cover - is_constant said otherwise


def parse_rate(text: str) -> Limit:
    """``RATE`` alone (``"10M"``, ``"10M:100k"``, ``"off"``); ``BwlimitError`` if it is not one."""
    return _Parser(text).rate(text, 0)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, column: int, problem: str) -> BwlimitError:
        return BwlimitError(self.text, column + 1, problem)

    def tokens(self) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        position = 0
        for match in _SEPARATOR.finditer(self.text):
            if match.start() > position:
                found.append((position, self.text[position:match.start()]))
            position = match.end()
        if position < len(self.text):
            found.append((position, self.text[position:]))
        return found

    def parse(self) -> Timetable:
        tokens = self.tokens()
        if not tokens:
            raise self.fail(0, "it is empty; write a rate such as \"10M\", \"off\", or a timetable")
        if len(tokens) == 1 and "," not in tokens[0][1] and self.days(tokens[0][1]) is None:
            at, token = tokens[0]
            return Timetable.constant(self.rate(token, at))
        slots: dict[tuple[int, int], Limit] = {}
        scope: tuple[int, ...] = tuple(range(7))
        pending: tuple[int, str] | None = None  # a DAYS item with no slot after it yet
        for at, token in tokens:
            if "," not in token:
                days = self.days(token)
                if days is None:
                    raise self.fail(at, f"{token!r} is neither days (Mon, Mon-Fri) nor a slot ([DAY-]HH:MM,RATE)")
                if pending is not None:
                    raise self.fail(pending[0], f"{pending[1]!r} has no HH:MM,RATE slot after it")
                scope, pending = days, (at, token)
                continue
            when, _, rate_text = token.partition(",")
            day_text, dash, time_text = when.rpartition("-")
            days = scope
            if dash:
                day = self.day(day_text)
                if day is None:
                    raise self.fail(at, f"{day_text!r} is not a day (Mon … Sun)")
                days = (day,)
            minute = self.time(time_text, at + len(day_text) + len(dash))
            limit = self.rate(rate_text, at + len(when) + 1)
            for day in days:
                slots[(day, minute)] = limit
            pending = None
        if pending is not None:
            raise self.fail(pending[0], f"{pending[1]!r} has no HH:MM,RATE slot after it")
        return Timetable(tuple(sorted(Slot(day, minute, limit) for (day, minute), limit in slots.items())))

    @staticmethod
    def day(text: str) -> int | None:
        lowered = text.lower()
        for index, (short, full) in enumerate(zip(DAY_NAMES, _FULL_NAMES, strict=True)):
            if lowered in (short.lower(), full):
                return index
        return None

    def days(self, text: str) -> tuple[int, ...] | None:
        first, dash, last = text.partition("-")
        start = self.day(first)
        if start is None:
            return None
        if not dash:
            return (start,)
        end = self.day(last)
        if end is None:
            return None
        return tuple((start + i) % 7 for i in range((end - start) % 7 + 1))

    def time(self, text: str, at: int) -> int:
        match = _TIME.fullmatch(text)
        if match is None:
            raise self.fail(at, f"{text!r} is not a time (HH:MM, 00:00 to 23:59)")
        hour, minute = int(match["hour"]), int(match["minute"])
        if hour > 23 or minute > 59:
            raise self.fail(at, f"{text!r} is not a time of day (00:00 to 23:59)")
        return hour * 60 + minute

    def rate(self, text: str, at: int) -> Limit:
        up_text, colon, down_text = text.partition(":")
        up = self.size(up_text, at)
        down = self.size(down_text, at + len(up_text) + 1) if colon else up
        return Limit(up, down)

    def size(self, text: str, at: int) -> int:
        if text.lower() == "off":
            return 0
        match = _SIZE.fullmatch(text)
        if match is None:
            raise self.fail(at, f"{text!r} is not a rate (off, or a number with b, k, M, G, T or P: 512k, 2M)")
        factor = _MULTIPLIERS[(match["suffix"] or "k").lower()]
        value = round(float(match["number"]) * factor)
        if value == 0 and float(match["number"]) != 0:
            raise self.fail(at, f"{text!r} is under 1 byte a second")
        if value > MAX_RATE:
            raise self.fail(at, f"{text!r} is over 1 PiB a second (a bare number is KiB/s, as in rclone)")
        return value
