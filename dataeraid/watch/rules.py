"""The words a watch is configured with, parsed once at ``watch.add`` and kept as text.

- ``complete_when``: ``close``, ``stable:DURATION`` or ``sentinel:NAME`` (docs/watch.md);
- ``after_upload``: ``keep``, ``move:DIR`` or ``delete``;
- ``free_space_below``: ``SIZE`` (``20G``, ``512MiB``) or ``PERCENT`` (``15%``);
- durations: ``90``, ``30s``, ``5m``, ``1h30m``, ``2d``.

Each parser raises ``ValueError`` with a message that says what was expected,
so the RPC layer can answer ``invalid_argument`` naming the parameter. The
stored text is the canonical form (``format_*``), so what ``watch.get``
shows is what the watch does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from dataerai import contract

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|ms|m|s)")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

#: How long a file found by a scan (not by a close event) must stay unchanged, and seen by no
#: writer, before the ``close`` rule takes it; where writers cannot be seen, the longer window.
CLOSE_SETTLE_S = 2.0
CLOSE_SETTLE_UNKNOWN_WRITERS_S = 60.0
#: The rule a watch gets when it names none: the safest the filesystem allows (docs/watch.md).
DEFAULT_RULE_WITH_EVENTS = "close"
DEFAULT_RULE_POLLING = "stable:1m"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a bare number of seconds, or parts like ``1h30m``, ``45s``, ``250ms``."""
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pos, seconds, matched = 0, 0.0, False
        while pos < len(raw):
            match = _DURATION_PART.match(raw, pos)
            if match is None:
                raise ValueError(f"{text!r} is not a duration: use seconds or parts like 30s, 5m, 1h30m, 2d") from None
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos, matched = match.end(), True
        if not matched:
            raise ValueError("a duration must not be empty") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration of zero or more seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``30s``, ``5m``, ``1h30m``, ``1.5s``."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole, parts = int(seconds), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size or (unit == "s" and not parts):
            amount, whole = divmod(whole, size)
            if amount or unit == "s":
                parts.append(f"{amount}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class CompleteWhen:
    """When a watched file (or, for ``sentinel``, a dataset directory) is complete."""

    kind: Literal["close", "stable", "sentinel"]
    stable_s: float = 0.0
    sentinel: str = ""

    def __str__(self) -> str:
        if self.kind == "stable":
            return f"stable:{format_duration(self.stable_s)}"
        if self.kind == "sentinel":
            return f"sentinel:{self.sentinel}"
        return "close"


def parse_complete_when(text: str) -> CompleteWhen:
    kind, _, arg = text.strip().partition(":")
    if kind == "close" and not arg:
        return CompleteWhen("close")
    if kind == "stable":
        seconds = parse_duration(arg) if arg else -1.0
        if not contract.MIN_STABLE_S < seconds <= contract.MAX_STABLE_S:
            raise ValueError(f"`stable:` takes a duration above {contract.MIN_STABLE_S:g} s and at most "
                             f"{format_duration(contract.MAX_STABLE_S)}, as in stable:30s")
        return CompleteWhen("stable", stable_s=seconds)
    if kind == "sentinel":
        if not arg or "/" in arg or arg in (".", "..") or contract.text_problem(arg) is not None:
            raise ValueError("`sentinel:` takes a file name (no `/`), as in sentinel:ACQUISITION_DONE")
        return CompleteWhen("sentinel", sentinel=arg)
    raise ValueError(f"{text!r} is not a completion rule: use close, stable:DURATION or sentinel:NAME")


@dataclass(frozen=True)
class AfterUpload:
    """What happens to a local file once the repository verified it."""

    kind: Literal["keep", "move", "delete"]
    target: str = ""

    def __str__(self) -> str:
        return f"move:{self.target}" if self.kind == "move" else self.kind


def parse_after_upload(text: str, root: str | None = None) -> AfterUpload:
    """``keep``, ``delete`` or ``move:DIR`` (DIR absolute, outside the watched ``root``)."""
    kind, _, arg = text.strip().partition(":")
    if kind in ("keep", "delete") and not arg:
        return AfterUpload(kind)  # type: ignore[arg-type]
    if kind == "move":
        problem = contract.local_path_problem(arg) if arg else "must not be empty"
        if problem is not None:
            raise ValueError(f"`move:` takes an absolute directory; it {problem}")
        target = os.path.normpath(arg)
        if root is not None and (target == root or target.startswith(root.rstrip("/") + "/")):
            raise ValueError(f"`move:` must go outside the watched folder {root}, or moved files would be "
                             "seen again as new ones")
        return AfterUpload("move", target)
    raise ValueError(f"{text!r} is not an after-upload action: use keep, move:DIR or delete")


@dataclass(frozen=True)
class FreeSpace:
    """The local staging quota: keep at least this much free, as bytes or a share of the disk."""

    bytes: int = 0
    percent: float = 0.0

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else str(self.bytes)

    def wanted(self, total_bytes: int) -> int:
        """How many bytes should be free on a disk of ``total_bytes``."""
        return int(total_bytes * self.percent / 100) if self.percent else self.bytes


def parse_free_space(text: str) -> FreeSpace:
    raw = text.strip()
    if raw.endswith("%"):
        try:
            percent = float(raw[:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not a percentage, as in 15%") from None
        if not 0 < percent < 100:
            raise ValueError("a free-space percentage is above 0 and below 100")
        return FreeSpace(percent=percent)
    match = _SIZE.fullmatch(raw)
    if match is None or (match.group(3) and match.group(3).upper() not in ("B", "IB")):
        raise ValueError(f"{text!r} is not a size or a percentage: use 20G, 512MiB, 1T or 15%")
    size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError("a free-space size is above zero")
    return FreeSpace(bytes=size)
