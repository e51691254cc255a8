"""Time and ids: the few helpers every module shares."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, timezone-aware UTC, to the microsecond."""
    return datetime.now(timezone.utc)


def isoformat(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z`` suffix (the API's timestamp format); None stays None."""
    if value is None:
        return None
    text = value.astimezone(timezone.utc).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    """A fresh random id such as ``usr_3f9c...``: 80 random bits, so ids never collide in practice."""
    return f"{prefix}_{secrets.token_hex(10)}"


def from_unix(seconds: float) -> datetime:
    """A Unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime, or None if it is not one.

    A ``Z`` suffix means UTC (Python 3.10's parser needs it spelled ``+00:00``); a
    timestamp without an offset is taken as UTC; a date alone is its midnight UTC.
    """
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
