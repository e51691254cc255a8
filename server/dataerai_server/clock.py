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
