"""Durations on the command line: ``90d``, ``12h``, ``30m``, ``3600s``, ``2w``, or a bare number.

A bare number takes the option's own unit (days for ``--expires-in``, as before it took
durations; seconds for ``--url-ttl``), so older scripts keep working. ``never`` is taken
only where the option allows it.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import click

#: Seconds per unit suffix.
UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
NEVER: Final = "never"
_DURATION: Final = re.compile(r"(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>[smhdw]?)")
#: Anything longer is not a duration anyone means (and would overflow a datetime).
MAX_SECONDS: Final = 1000 * 365 * 86_400


def parse_duration(text: str, *, bare_unit: str) -> timedelta:
    """``text`` as a duration; a number without a unit is in ``bare_unit`` (a key of :data:`UNITS`).

    Raises ValueError for anything else, negative or absurdly long durations included.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 15m or 3600s")
    seconds = float(match["number"]) * UNITS[match["unit"] or bare_unit]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than anyone means")
    return timedelta(seconds=seconds)


def describe(value: timedelta) -> str:
    """A duration in its largest whole unit: ``90d``, ``12h``, ``3600s`` → ``1h``."""
    seconds = value.total_seconds()
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


if TYPE_CHECKING:  # click 8.5 makes ParamType generic; click 8.1 (our lower bound) cannot be subscripted
    _ParamType = click.ParamType[timedelta | None, Any]
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """A click parameter for a duration (``never`` gives None where ``allow_never``), with bounds."""

    name = "duration"

    def __init__(
        self,
        *,
        bare_unit: str,
        allow_never: bool = False,
        minimum: timedelta | None = None,
        maximum: timedelta | None = None,
    ) -> None:
        self.bare_unit = bare_unit
        self.allow_never = allow_never
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta | None:
        if value is None or isinstance(value, timedelta):
            return value
        text = str(value)
        if self.allow_never and text.strip().lower() == NEVER:
            return None
        try:
            duration = parse_duration(text, bare_unit=self.bare_unit)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.minimum is not None and duration < self.minimum:
            self.fail(f"{text!r} is shorter than the least allowed, {describe(self.minimum)}", param, ctx)
        if self.maximum is not None and duration > self.maximum:
            self.fail(f"{text!r} is longer than the most allowed, {describe(self.maximum)}", param, ctx)
        return duration
