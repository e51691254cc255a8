"""The token's expiry, learnt ahead of time, so an unattended machine never stops silently on the day.

The repository tells a token's expiry in ``GET /api/v1/me`` (``token_expires_at``,
null for a token that never expires). :class:`AuthMonitor` asks at start, at once
after every ``auth.reload`` (a new login), and every :data:`CHECK_INTERVAL_S`. What it
learnt feeds the metrics and the health check, and each time the days left cross
one of ``auth_warn_days`` (14, 7 and 1 by default) it emits one durable
``auth.expiring`` event. Which threshold was announced for which expiry is kept in
the queue database, so a restart does not announce it again, and a new token (another
expiry) starts over.

The same check tells whether the repository answers: ``unreachable_since`` is when
it stopped answering, for the health check's "server unreachable for long".

``auth_warn_days`` is read at each check, so a reload changes the next one, and a
reload that changes it has the check made at once (``recheck``): a threshold added
above the days left is announced then; one announced already, or farther than it,
is not announced again for the same token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any

import trio
from sqlalchemy.engine import Connection

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.errors import AuthProblem, DataeraiError, TransientError
from dataeraid.events import Emit, EventBus
from dataeraid.redact import redact
from dataeraid.store import Store

_log = log.get("dataeraid.observe")

#: How often the token's expiry (and the repository's reachability) is checked.
CHECK_INTERVAL_S = 900.0
_WARNED_KEY = "auth_expiring_warned"
DAY_S = 86400.0


def parse_time(text: object) -> float | None:
    """An API timestamp (ISO 8601, ``Z`` for UTC) as Unix time; None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def threshold_crossed(days_left: float, thresholds: tuple[float, ...]) -> float | None:
    """The smallest of ``thresholds`` that ``days_left`` is at or under, or None."""
    crossed = [t for t in thresholds if days_left <= t]
    return min(crossed) if crossed else None


class AuthMonitor:
    """What the daemon knows of its token's expiry and of the repository's reachability."""

    def __init__(self, auth: Auth, remote: Any, bus: EventBus,
                 warn_days: tuple[float, ...] | Callable[[], tuple[float, ...]],
                 clock: Callable[[], float] = time.time) -> None:
        """``warn_days``: the thresholds, or where to read them at each check (the settings in force)."""
        self._auth = auth
        self._remote = remote
        self._bus = bus
        self._warn_days = warn_days if callable(warn_days) else (lambda: warn_days)
        self._clock = clock
        #: Unix time the token expires; ``math.inf`` if never; None while not known.
        self.expires_at: float | None = None
        #: The code the repository refused the token with (``auth_expired``, ...), else None.
        self.rejected: str | None = None
        #: Whether the last check reached the repository; None before the first.
        self.reachable: bool | None = None
        #: Since when the repository does not answer (Unix time), else None.
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self._checked = trio.Event()
        self._recheck = trio.Event()

    @property
    def logged_in(self) -> bool:
        return self._auth.current is not None

    def days_left(self) -> float | None:
        if self.expires_at is None:
            return None
        return (self.expires_at - self._clock()) / DAY_S

    async def checked(self) -> None:
        """Return once the first check is done (for tests and the first health check)."""
        await self._checked.wait()

    def recheck(self) -> None:
        """Check again now, not at the next interval (``auth_warn_days`` changed by a reload)."""
        self._recheck.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            version = self._auth.version
            self._recheck = trio.Event()
            try:
                await self.check()
            except Exception:
                _log.exception("checking the token's expiry failed")
            self._checked.set()
            with trio.move_on_after(CHECK_INTERVAL_S):
                await self._until_asked(version)

    async def _until_asked(self, version: int) -> None:
        """Return once the credentials changed after ``version``, or ``recheck`` was called."""
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[None]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, partial(self._auth.wait_changed, version))
            nursery.start_soon(first, self._recheck.wait)

    async def check(self) -> None:
        """Ask the repository about the token now, and announce a threshold it crossed."""
        creds = self._auth.current
        if creds is None:
            self.expires_at, self.rejected = None, None
            return
        try:
            me = await self._remote.me()
        except TransientError as exc:
            self.reachable = False
            self.last_error = redact(str(exc), creds.token)
            if self.unreachable_since is None:
                self.unreachable_since = self._clock()
            return
        except AuthProblem as exc:
            self.reachable, self.unreachable_since = True, None
            self.rejected = exc.code
            self.expires_at = None
            return
        except DataeraiError as exc:
            self.reachable, self.unreachable_since = True, None
            self.last_error = redact(exc.message, creds.token)
            return
        self.reachable, self.unreachable_since, self.rejected, self.last_error = True, None, None, None
        expires = parse_time(me.get("token_expires_at"))
        self.expires_at = math.inf if expires is None else expires
        await self._announce(creds.server_url)

    async def _announce(self, server_url: str) -> None:
        days_left = self.days_left()
        if days_left is None or math.isinf(days_left):
            return
        threshold = threshold_crossed(days_left, self._warn_days())
        if threshold is None:
            return
        expires_at = self.expires_at
        assert expires_at is not None
        announced = False

        def write(conn: Connection, emit: Emit) -> None:
            nonlocal announced
            before = json.loads(Store.read_setting(conn, _WARNED_KEY) or "{}")
            if before.get("expires_at") == expires_at and before.get("threshold_days", math.inf) <= threshold:
                return  # announced already, for this token and a threshold this close or closer
            Store.write_setting(conn, _WARNED_KEY, json.dumps({"expires_at": expires_at, "threshold_days": threshold}))
            emit("auth.expiring", None, {"server_url": server_url, "expires_at": iso(expires_at),
                                         "days_left": round(days_left, 3), "threshold_days": threshold})
            announced = True

        await self._bus.commit(write)
        if announced:
            _log.warning("the token expires soon", days_left=round(days_left, 2), expires_at=iso(expires_at),
                         server_url=server_url)
