"""The daemon's settings: frozen values read from ``config.toml`` at start and on reload.

```toml
# $XDG_CONFIG_HOME/dataerai/config.toml
max_active_jobs = 4         # jobs moving bytes at once
parts_per_job = 4           # parallel parts (or ranges) per job
default_chunk_size = 67108864
retry_base_s = 0.5          # first backoff, doubled per attempt, full jitter
retry_cap_s = 30.0          # longest backoff between attempts
progress_interval_s = 0.25  # at most this often a progress event per job
bandwidth_limit_bps = 0     # bytes per second over all transfers; 0 is no limit
bwlimit = ""                # or a timetable in rclone's shape: "Mon-Fri 08:00,2M 19:00,off" (dataeraid.bwlimit)
event_retention_days = 30   # stored events older than this are pruned (replay reaches back this far)
job_retention_days = 30     # a finished job is pruned this long after a client saw its end (docs/job-states.md)
housekeeping_interval_s = 3600.0  # pruning and vacuuming of the queue this often (and at start)
upload_order = "auto"       # "auto", "always", "never": part bodies one after the other (docs/configuration.md)
watch_retry_base_s = 30.0   # a failed watched file waits this, then 4x, 20x, 60x it (30 s, 2, 10, 30 min)
watch_max_attempts = 5      # failed uploads of one version of a watched file before it is quarantined
```
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import trio
from dataerai.contract import DEFAULT_PART_SIZE, MAX_PART_SIZE, MIN_PART_SIZE

from dataeraid.bwlimit import Timetable
from dataeraid.observe.settings import ALERT_KINDS, AUTH_WARN_DAYS, HEALTH_DEFAULTS, OBSERVE_BOUNDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: What each setting must be, beyond its type: a check and the words for it.
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_active_jobs": (lambda v: v >= 1, "at least 1"),
    "parts_per_job": (lambda v: v >= 1, "at least 1"),
    "default_chunk_size": (lambda v: MIN_PART_SIZE <= v <= MAX_PART_SIZE,
                           f"between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes"),
    "retry_base_s": (lambda v: v > 0, "more than 0"),
    "retry_cap_s": (lambda v: v > 0, "more than 0"),
    "progress_interval_s": (lambda v: v >= 0, "0 or more"),
    "io_block_size": (lambda v: v >= 4096, "at least 4096 bytes"),
    "bandwidth_limit_bps": (lambda v: v >= 0, "0 (no limit) or more"),
    "event_retention_days": (lambda v: v > 0, "more than 0"),
    "job_retention_days": (lambda v: v > 0, "more than 0"),
    "housekeeping_interval_s": (lambda v: v >= 1, "at least 1"),
    "upload_order": (lambda v: v in ("auto", "always", "never"), "'auto', 'always' or 'never'"),
    "watch_retry_base_s": (lambda v: v > 0, "more than 0"),
    "watch_max_attempts": (lambda v: v >= 1, "at least 1"),
    **OBSERVE_BOUNDS,
}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "tuple[str, ...]": "an array of strings", "tuple[float, ...]": "an array of numbers"}


def _typed(name: str, kind: str, value: Any) -> Any:
    """``value`` as the setting's type (an integer is a number too); ValueError naming the setting if it is not."""
    if kind.startswith("tuple[") and kind.endswith(", ...]"):
        if not isinstance(value, list):
            raise ValueError(f"{name} must be {_TYPE_WORDS[kind]}, not {value!r}")
        return tuple(_typed(name, kind[len("tuple["):-len(", ...]")], item) for item in value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value).__name__ != kind:
        raise ValueError(f"{name} must be {_TYPE_WORDS[kind]}, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    max_active_jobs: int = 4
    parts_per_job: int = 4
    default_chunk_size: int = DEFAULT_PART_SIZE
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    progress_interval_s: float = 0.25
    io_block_size: int = 1024 * 1024
    bandwidth_limit_bps: int = 0
    event_retention_days: float = 30.0
    job_retention_days: float = 30.0
    housekeeping_interval_s: float = 3600.0
    upload_order: str = "auto"
    watch_retry_base_s: float = 30.0
    watch_max_attempts: int = 5
    # Seeing and being told (dataeraid/observe: the defaults and the rules are there).
    metrics_listen: str = ""
    health_watch_lag_s: float = HEALTH_DEFAULTS.watch_lag_s
    health_watch_lag_failing_s: float = HEALTH_DEFAULTS.watch_lag_failing_s
    health_quarantined_files: int = HEALTH_DEFAULTS.quarantined_files
    health_failed_jobs: int = HEALTH_DEFAULTS.failed_jobs
    health_failed_window_s: float = HEALTH_DEFAULTS.failed_window_s
    health_auth_expiry_days: float = HEALTH_DEFAULTS.auth_expiry_days
    health_min_free_bytes: int = HEALTH_DEFAULTS.min_free_bytes
    health_unreachable_s: float = HEALTH_DEFAULTS.unreachable_s
    auth_warn_days: tuple[float, ...] = AUTH_WARN_DAYS
    alert_command: tuple[str, ...] = ()
    alert_on: tuple[str, ...] = ALERT_KINDS
    alert_dedup_s: float = 3600.0
    alert_max_per_hour: int = 10
    alert_timeout_s: float = 30.0
    desktop_notifications: bool = False
    bwlimit: str = ""

    def __post_init__(self) -> None:
        for name, (ok, words) in _BOUNDS.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{name} must be {words}, not {value!r}")
        if self.retry_cap_s < self.retry_base_s:
            raise ValueError(f"retry_cap_s ({self.retry_cap_s}) must be at least retry_base_s ({self.retry_base_s})")
        if self.bwlimit:
            if self.bandwidth_limit_bps:
                raise ValueError("bwlimit and bandwidth_limit_bps are both set; keep one (bwlimit limits each "
                                 "direction by a timetable, bandwidth_limit_bps both directions together)")
            Timetable.parse(self.bwlimit)  # a BwlimitError (a ValueError) says where it is wrong

    @property
    def timetable(self) -> Timetable | None:
        """The ``bwlimit`` timetable, or None when it is not set (``bandwidth_limit_bps`` applies)."""
        return Timetable.parse(self.bwlimit) if self.bwlimit else None

    def changed(self, other: Settings) -> list[str]:
        """The keys whose values differ in ``other``, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def load(cls, path: Path) -> Settings:
        """Defaults, overridden by the file if it exists.

        Raises ``ValueError`` with a message that starts with the file's path: it
        cannot be read, is not TOML, has a key that is not a setting (the message
        lists the keys), or a value of the wrong type or out of range.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot be read: {exc}") from exc
        try:
            raw: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: is not valid TOML: {exc}") from exc
        kinds = {f.name: str(f.type) for f in fields(cls)}
        unknown = [key for key in raw if key not in kinds]
        if unknown:
            named = ("unknown key " if len(unknown) == 1 else "unknown keys ") + ", ".join(map(repr, unknown))
            raise ValueError(f"{path}: {named} in it; the keys are {', '.join(kinds)}")
        try:
            return cls(**{key: _typed(key, kinds[key], value) for key, value in raw.items()})
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


#: Keys that take effect only when the daemon starts: a reload records the new value and its answer
#: (``restart_needed``) names them. None today: every key of ``config.toml`` follows a reload, the
#: observer's too (``dataeraid.observe``: its port is moved, its thresholds and alert settings read
#: at each use). A key added here must say why in docs/configuration.md's reload table.
RESTART_KEYS: frozenset[str] = frozenset()


async def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Staged:
    """What a stage got ready for new settings: ``commit`` puts it in force together with them (it
    must not wait), ``abort`` undoes it when the reload is refused after all."""

    commit: Callable[[], None] = lambda: None
    abort: Callable[[], Awaitable[None]] = _nothing


#: Gets ready for ``(old, new)`` settings before they are put in force, or refuses them by raising
#: (``DataeraiError``): the metrics endpoint binds its new address here.
Stage = Callable[[Settings, Settings], Awaitable[Staged]]


class LiveSettings:
    """The settings in force now, one holder for the whole daemon.

    Components that can follow a reload keep this holder and read ``current`` at
    each use, instead of keeping a ``Settings`` of their own: the scheduler
    (``max_active_jobs`` at each start, and the settings a job starts with), the
    bandwidth timetable, the housekeeping, the watches, the observer (health
    thresholds, alerts, the token's warnings). ``replace`` swaps the value whole
    (the ``Settings`` stays frozen) and calls the listeners, on the daemon's thread.

    What cannot simply be read again, because it holds something of the system (the
    metrics port), registers a ``stage``: ``replace_staged`` asks every stage to get
    ready for the new settings first, so that one that cannot (the new port is taken)
    refuses the reload before anything changed.
    """

    def __init__(self, settings: Settings) -> None:
        self._current = settings
        self._listeners: list[Callable[[Settings, Settings], None]] = []
        self._stages: list[Stage] = []

    @classmethod
    def of(cls, settings: Settings | LiveSettings) -> LiveSettings:
        return settings if isinstance(settings, LiveSettings) else cls(settings)

    @property
    def current(self) -> Settings:
        return self._current

    def listen(self, listener: Callable[[Settings, Settings], None]) -> None:
        """Call ``listener(old, new)`` after each ``replace`` that changed something."""
        self._listeners.append(listener)

    def stage(self, stage: Stage) -> None:
        """Have ``stage(old, new)`` get ready for (or refuse) each ``replace_staged``."""
        self._stages.append(stage)

    def replace(self, new: Settings) -> list[str]:
        """Put ``new`` in force; the keys that changed."""
        old, self._current = self._current, new
        changed = old.changed(new)
        if changed:
            for listener in self._listeners:
                listener(old, new)
        return changed

    async def replace_staged(self, new: Settings) -> list[str]:
        """``replace``, once every stage is ready for ``new``; the keys that changed.

        A stage that raises refuses the whole of ``new``: what the stages before it got
        ready is undone, the settings in force stay, and the error propagates. The
        caller keeps two of these from overlapping (``DaemonControl.reload`` holds a lock).
        """
        old = self._current
        staged: list[Staged] = []
        try:
            for stage in self._stages:
                staged.append(await stage(old, new))
        except BaseException:
            with trio.CancelScope(shield=True):
                for done in reversed(staged):
                    await done.abort()
            raise
        changed = self.replace(new)
        for done in staged:
            done.commit()
        return changed
