"""What every handler gets: the daemon's services and the caller's connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dataeraid.auth import Auth
from dataeraid.config import Settings
from dataeraid.control import DaemonControl
from dataeraid.errors import DataeraiError, TransientError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.remote import Remote
from dataeraid.rpc import Connection
from dataeraid.scheduler import Scheduler
from dataeraid.watch.manager import WatchManager

if TYPE_CHECKING:
    from dataeraid.observe.service import Observer

T = TypeVar("T")

#: The codes a method that asks the repository may answer besides its own.
REPOSITORY_ERRORS = ("auth_required", "auth_expired", "permission_denied", "not_found", "unavailable")


@dataclass(frozen=True)
class Services:
    jobs: Jobs
    bus: EventBus
    scheduler: Scheduler
    remote: Remote
    auth: Auth
    settings: Settings  # as at start: what a reload changes is read from ``control.live``
    watches: WatchManager
    #: Metrics, health, the token's expiry, alerts (dataeraid.observe).
    observer: Observer | None = None
    #: The bandwidth timetable, reload and stop (dataeraid.control).
    control: DaemonControl | None = None

    @property
    def current(self) -> Settings:
        """The settings in force now: ``settings`` as a reload left them."""
        return self.control.live.current if self.control is not None else self.settings


@dataclass(frozen=True)
class Call:
    """One request's context: ``svc`` to act, ``conn`` to know the caller and stream to it."""

    svc: Services
    conn: Connection


async def ask_repository(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """A direct request to the repository: a user is waiting, so no endless retries."""
    try:
        return await call()
    except TransientError as exc:
        raise DataeraiError("unavailable", f"{what}: the repository cannot be reached ({exc})") from exc


def drop_none(**values: Any) -> dict[str, str]:
    """Query parameters: the given ones, as strings."""
    return {k: str(v) for k, v in values.items() if v is not None}
