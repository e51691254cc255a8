"""What the SDK returns: frozen dataclasses built from the daemon's JSON.

Every model has a ``from_wire(obj)`` class method that reads tolerantly: keys it
does not know are ignored (a newer daemon must not break an older SDK), missing
or mistyped keys take a neutral default, and timestamps become timezone-aware
``datetime`` objects (or ``None``). The whole object as received stays
available as ``raw`` (not part of equality or the repr).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .contract import PENDING_WATCH_FILE_STATES, WAITING_OBJECT_JOB_STATES
from .contract import TERMINAL_JOB_STATES as TERMINAL_JOB_STATES
from .contract import WAITING_JOB_STATES as WAITING_JOB_STATES

# --- tolerant readers -------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _int(value: Any, default: int = 0) -> int:
    result = _opt_int(value)
    return default if result is None else result


def _float(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return default


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _counts(value: Any) -> dict[str, int]:
    """A ``{name: count}`` object, keeping only the entries whose count is an int."""
    return {k: v for k, v in _obj(value).items() if isinstance(v, int) and not isinstance(v, bool)}


def _strs(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


_FRACTION = re.compile(r"\.(\d+)")


def _time(value: Any) -> datetime | None:
    """An ISO-8601 timestamp (``Z`` or an offset; naive means UTC), else None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat takes exactly 3 or 6 fraction digits.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _event_time(value: Any) -> datetime | None:
    """An event's ``time``: Unix seconds as the daemon sends it, or an ISO-8601 string."""
    seconds = _opt_float(value)
    if seconds is None:
        return _time(value)
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


# --- identity and projects --------------------------------------------------


@dataclass(frozen=True)
class AuthStatus:
    """Who the daemon is signed in as. The token itself never leaves the daemon."""

    user_email: str
    expires_at: datetime | None
    server_url: str
    user_id: str
    scopes: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> AuthStatus:
        d = _obj(obj)
        return cls(
            user_email=_str(d.get("user_email", d.get("email"))),
            expires_at=_time(d.get("expires_at", d.get("token_expires_at"))),
            server_url=_str(d.get("server_url")),
            user_id=_str(d.get("user_id")),
            scopes=_strs(d.get("scopes")),
            # Defence in depth: a token never passes through the SDK, even from a buggy daemon.
            raw={k: v for k, v in d.items() if k != "token" and not k.endswith("_token")},
        )


@dataclass(frozen=True)
class Project:
    """A project of the repository; ``root_collection_id`` is the collection made with it."""

    project_id: str
    name: str
    description: str
    root_collection_id: str | None
    allocation_bytes: int | None = None
    used_bytes: int | None = None
    role: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> Project:
        d = _obj(obj)
        return cls(
            project_id=_str(d.get("project_id", d.get("id"))),
            name=_str(d.get("name")),
            description=_str(d.get("description")),
            root_collection_id=_opt_str(d.get("root_collection_id")),
            allocation_bytes=_opt_int(d.get("allocation_bytes")),
            used_bytes=_opt_int(d.get("used_bytes")),
            role=_opt_str(d.get("role")),
            created_at=_time(d.get("created_at")),
            raw=d,
        )


@dataclass(frozen=True)
class Collection:
    """A collection of a project; the root collection has no ``parent_id``."""

    collection_id: str
    project_id: str
    name: str
    parent_id: str | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> Collection:
        d = _obj(obj)
        return cls(
            collection_id=_str(d.get("collection_id", d.get("id"))),
            project_id=_str(d.get("project_id")),
            name=_str(d.get("name")),
            parent_id=_opt_str(d.get("parent_id")),
            created_at=_time(d.get("created_at")),
            raw=d,
        )


# --- assets -----------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """One file of an asset's content: its path, where its bytes lie in the content,
    and its SHA-256 as the uploader reported it (``None`` if it reported none)."""

    path: str
    size: int
    offset: int
    sha256: str | None
    content_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any, *, content_id: str | None = None) -> FileInfo:
        d = _obj(obj)
        return cls(
            path=_str(d.get("path")),
            size=_int(d.get("size")),
            offset=_int(d.get("offset")),
            sha256=_opt_str(d.get("sha256")),
            content_id=_opt_str(d.get("content_id")) or content_id,
            raw=d,
        )


@dataclass(frozen=True)
class ContentVersion:
    """One stored version of an asset's bytes."""

    content_id: str
    size: int
    sha256: str | None
    file_name: str | None
    created_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> ContentVersion:
        d = _obj(obj)
        return cls(
            content_id=_str(d.get("content_id")),
            size=_int(d.get("size")),
            sha256=_opt_str(d.get("sha256")),
            file_name=_opt_str(d.get("file_name")),
            created_at=_time(d.get("created_at")),
            raw=d,
        )


@dataclass(frozen=True)
class AssetMetadata:
    """An asset's metadata and its latest content version (``None`` before any upload completed)."""

    asset_id: str
    title: str
    description: str | None
    alias: str | None
    tags: list[str]
    metadata: dict[str, Any]
    owner_type: str
    owner_id: str
    project_id: str | None
    collection_id: str | None
    latest_content: ContentVersion | None
    created_by: str | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def content_id(self) -> str | None:
        """The latest content version's id."""
        return self.latest_content.content_id if self.latest_content else None

    @property
    def size(self) -> int | None:
        """The latest content version's size in bytes."""
        return self.latest_content.size if self.latest_content else None

    @property
    def sha256(self) -> str | None:
        """The latest content version's SHA-256 (hex)."""
        return self.latest_content.sha256 if self.latest_content else None

    @classmethod
    def from_wire(cls, obj: Any) -> AssetMetadata:
        d = _obj(obj)
        latest = d.get("latest_content")
        return cls(
            asset_id=_str(d.get("asset_id", d.get("id"))),
            title=_str(d.get("title")),
            description=_opt_str(d.get("description")),
            alias=_opt_str(d.get("alias")),
            tags=_strs(d.get("tags")),
            metadata=_obj(d.get("metadata")),
            owner_type=_str(d.get("owner_type")),
            owner_id=_str(d.get("owner_id")),
            project_id=_opt_str(d.get("project_id")),
            collection_id=_opt_str(d.get("collection_id")),
            latest_content=ContentVersion.from_wire(latest) if isinstance(latest, dict) else None,
            created_by=_opt_str(d.get("created_by")),
            created_at=_time(d.get("created_at")),
            updated_at=_time(d.get("updated_at")),
            raw=d,
        )


@dataclass(frozen=True)
class Relationship:
    """A directed provenance link from one asset (the dependent) to another (the origin)."""

    relationship_id: str
    type: str
    from_asset_id: str
    to_asset_id: str
    analysis_mode: str | None = None
    qualifier_note: str | None = None
    qualifier_time: str | None = None
    qualifiers: dict[str, Any] = field(default_factory=dict)
    related_asset: dict[str, Any] | None = None
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> Relationship:
        d = _obj(obj)
        related = d.get("related_asset")
        return cls(
            relationship_id=_str(d.get("relationship_id", d.get("id"))),
            type=_str(d.get("type", d.get("relationship_type", d.get("rel_type")))),
            from_asset_id=_str(d.get("from_asset_id")),
            to_asset_id=_str(d.get("to_asset_id")),
            analysis_mode=_opt_str(d.get("analysis_mode")),
            qualifier_note=_opt_str(d.get("qualifier_note")),
            qualifier_time=_opt_str(d.get("qualifier_time")),
            qualifiers=_obj(d.get("qualifiers")),
            related_asset=related if isinstance(related, dict) else None,
            created_at=_time(d.get("created_at")),
            raw=d,
        )


# --- transfers --------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """How far one transfer has got. ``transfer_id`` is the job id.

    The daemon sends these about four times a second per job. When a transfer
    completes, the SDK delivers one last event with ``completed=True`` and
    ``bytes_done == bytes_total``, so a callback always sees 100 %.
    """

    transfer_id: str
    bytes_done: int
    bytes_total: int
    chunk_index: int
    chunk_count: int
    rate_bps: float
    file_index: int
    file_name: str
    completed: bool = False
    #: The job's state when the daemon sent this (``None`` from a daemon that does not say):
    #: a waiting job's events have a ``rate_bps`` of 0 and ``waiting`` set.
    state: str | None = None
    #: Why the job waits and when it tries again, while it waits.
    waiting: JobWaiting | None = None

    @property
    def percent(self) -> float:
        """Share done, 0 to 100. A completed transfer is 100, a 0-byte one included;
        an unknown total (0) before completion reads 0."""
        if self.completed:
            return 100.0
        if self.bytes_total <= 0:
            return 0.0
        return min(100.0, max(0.0, 100.0 * self.bytes_done / self.bytes_total))

    @property
    def rate_mbps(self) -> float:
        """The transfer rate in megabytes (10^6 bytes) per second."""
        return self.rate_bps / 1e6

    @classmethod
    def from_wire(cls, obj: Any, *, transfer_id: str | None = None) -> ProgressEvent:
        d = _obj(obj)
        return cls(
            transfer_id=transfer_id if transfer_id is not None else _str(d.get("job_id")),
            bytes_done=_int(d.get("bytes_done")),
            bytes_total=_int(d.get("bytes_total")),
            chunk_index=_int(d.get("chunk_index")),
            chunk_count=_int(d.get("chunk_count")),
            rate_bps=_float(d.get("rate_bps")),
            file_index=_int(d.get("file_index")),
            file_name=_str(d.get("file_name")),
            state=_opt_str(d.get("state")),
            waiting=JobWaiting.from_wire(d["waiting"]) if isinstance(d.get("waiting"), dict) else None,
        )


@dataclass(frozen=True)
class DownloadedFile:
    """One file a download wrote."""

    local_path: str
    size: int

    @classmethod
    def from_wire(cls, obj: Any) -> DownloadedFile:
        d = _obj(obj)
        return cls(local_path=_str(d.get("local_path")), size=_int(d.get("size")))


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable ``code`` from the catalogue and a message."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, obj: Any) -> JobError:
        d = _obj(obj)
        extra = {k: v for k, v in d.items() if k not in ("code", "message")}
        return cls(code=_str(d.get("code"), "internal"), message=_str(d.get("message")), data=extra)




@dataclass(frozen=True)
class JobWaiting:
    """Why a job waits (``waiting_for_network``, ``waiting_for_auth``, ``scheduled``) and when it
    tries again (for ``scheduled``: ``code`` ``outside_window``, ``retry_at`` when its window opens).

    ``code`` is the catalogue's code of the failure that keeps it waiting
    (``unavailable``, ``auth_required``, ``auth_expired``, ...), ``reason`` a
    sentence for a person (it never holds a token or a URL's query string), and
    ``retry_at`` the time of the next attempt, or ``None`` when the job waits for
    a login (``dataerai auth login``) instead.
    """

    code: str
    reason: str
    retry_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def retry_in_s(self, now: datetime | None = None) -> float | None:
        """Seconds until the next attempt (0 once it is due); ``None`` without one."""
        if self.retry_at is None:
            return None
        now = now if now is not None else datetime.now(timezone.utc)
        return max(0.0, (self.retry_at - now).total_seconds())

    @classmethod
    def from_wire(cls, obj: Any) -> JobWaiting:
        d = _obj(obj)
        return cls(
            code=_str(d.get("code"), "unavailable"),
            reason=_str(d.get("reason")),
            retry_at=_time(d.get("retry_at")),
            raw=d,
        )


@dataclass(frozen=True)
class Job:
    """A transfer queued in the daemon (the protocol's job object).

    ``state`` is a string: ``completed``, ``failed`` and ``cancelled`` are final
    (see ``is_terminal``); the others are the daemon's business and may grow.
    """

    job_id: str
    kind: str
    state: str
    priority: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    chunk_count: int = 0
    chunks_done: int = 0
    file_name: str | None = None
    local_path: str | None = None
    dest_dir: str | None = None
    asset_id: str | None = None
    content_id: str | None = None
    files: list[DownloadedFile] = field(default_factory=list)
    error: JobError | None = None
    sha256: str | None = None
    #: The repository's upload session, once the daemon opened one (uploads only).
    upload_id: str | None = None
    #: Who submitted it, as the scheduler's fairness sees it (``pid:123`` or ``name:nightly``).
    client: str | None = None
    #: A completed upload whose content the repository already held: the daemon proved
    #: possession instead of sending the bytes.
    deduplicated: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: Why the job waits and when it tries again, while it is ``waiting_for_network`` or
    #: ``waiting_for_auth``; while it is ``scheduled`` (outside its transfer window), ``code``
    #: ``outside_window`` and ``retry_at`` when the window opens; ``None`` in any other state.
    waiting: JobWaiting | None = None
    #: When the job may move bytes (its transfer window, e.g. ``Mon-Fri 20:00-06:00``), or ``None``.
    window: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.state in TERMINAL_JOB_STATES

    @classmethod
    def from_wire(cls, obj: Any) -> Job:
        d = _obj(obj)
        files = d.get("files")
        error = d.get("error")
        return cls(
            job_id=_str(d.get("job_id")),
            kind=_str(d.get("kind")),
            state=_str(d.get("state")),
            priority=_int(d.get("priority")),
            created_at=_time(d.get("created_at")),
            updated_at=_time(d.get("updated_at")),
            bytes_done=_int(d.get("bytes_done")),
            bytes_total=_int(d.get("bytes_total")),
            chunk_count=_int(d.get("chunk_count")),
            chunks_done=_int(d.get("chunks_done")),
            file_name=_opt_str(d.get("file_name")),
            local_path=_opt_str(d.get("local_path")),
            dest_dir=_opt_str(d.get("dest_dir")),
            asset_id=_opt_str(d.get("asset_id")),
            content_id=_opt_str(d.get("content_id")),
            files=[DownloadedFile.from_wire(f) for f in files if isinstance(f, dict)]
            if isinstance(files, list)
            else [],
            error=JobError.from_wire(error) if isinstance(error, dict) else None,
            sha256=_opt_str(d.get("sha256")),
            upload_id=_opt_str(d.get("upload_id")),
            client=_opt_str(d.get("client")),
            deduplicated=d.get("deduplicated") is True,
            raw=d,
            waiting=_waiting_of(d),
            window=_opt_str(d.get("window")),
        )


def _waiting_of(d: dict[str, Any]) -> JobWaiting | None:
    """A job's ``waiting``; from a daemon that does not send it, the error that made a waiting job wait."""
    if d.get("state") not in WAITING_OBJECT_JOB_STATES:
        return None
    if isinstance(d.get("waiting"), dict):
        return JobWaiting.from_wire(d["waiting"])
    error = d.get("error")
    if isinstance(error, dict):
        return JobWaiting(code=_str(error.get("code"), "unavailable"), reason=_str(error.get("message")))
    return None


@dataclass(frozen=True)
class UploadResult:
    """A completed upload. ``transfer_id`` is the job id; ``sha256`` is hex, or
    ``None`` if neither the job nor the asset reported it."""

    asset_id: str
    content_id: str
    transfer_id: str
    size: int
    sha256: str | None
    #: The repository already held this content: possession was proved, no bytes were sent.
    deduplicated: bool = False


@dataclass(frozen=True)
class DownloadResult:
    """A completed download: the files written, absolute paths. ``transfer_id`` is the job id."""

    files: list[DownloadedFile]
    asset_id: str
    content_id: str | None
    transfer_id: str


# --- watch folders ----------------------------------------------------------


@dataclass(frozen=True)
class WatchProblem:
    """Why a watch is ``unavailable`` (its root is missing, unmounted, replaced), or why it
    polls although it asked for file events: a stable ``code`` and a sentence for a person."""

    code: str
    message: str

    @classmethod
    def from_wire(cls, obj: Any) -> WatchProblem:
        d = _obj(obj)
        return cls(code=_str(d.get("code"), "internal"), message=_str(d.get("message")))


def _problem(value: Any) -> WatchProblem | None:
    return WatchProblem.from_wire(value) if isinstance(value, dict) else None


@dataclass(frozen=True)
class Watch:
    """A watch folder: a local directory whose complete files the daemon uploads, each exactly once.

    ``state`` is ``active``, ``paused`` or ``unavailable`` (``problem`` says why);
    ``mode`` is ``events`` or ``polling`` (``mode_reason`` says why it polls when it
    asked for events). ``files`` counts its files in each state; ``lag_s`` is the
    age in seconds of the oldest file not in the repository yet (``None`` when
    none waits). ``complete_when`` and ``after_upload`` are the rules as the
    daemon resolved them (``stable:30s``, ``move:/done``, ...).
    """

    watch_id: str
    root: str
    state: str
    mode: str = "events"
    project_id: str = ""
    collection_id: str | None = None
    prefix: str | None = None
    complete_when: str = ""
    after_upload: str = "keep"
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metadata_template: dict[str, Any] | None = None
    priority: int = 0
    rescan_interval_s: float = 0.0
    free_space_below: str | None = None
    force_polling: bool = False
    #: The transfer window every upload of the watch gets, or ``None`` (any time).
    window: str | None = None
    problem: WatchProblem | None = None
    mode_reason: WatchProblem | None = None
    files: dict[str, int] = field(default_factory=dict)
    lag_s: float | None = None
    oldest_pending: str | None = None
    last_scan_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def pending(self) -> int:
        """How many of its files are not in the repository yet (seen, complete, queued or uploaded)."""
        return sum(n for state, n in self.files.items() if state in PENDING_WATCH_FILE_STATES)

    @property
    def quarantined(self) -> int:
        """How many of its files kept failing and wait for a change or a rescan."""
        return self.files.get("quarantined", 0)

    @classmethod
    def from_wire(cls, obj: Any) -> Watch:
        d = _obj(obj)
        template = d.get("metadata_template")
        return cls(
            watch_id=_str(d.get("watch_id")),
            root=_str(d.get("root")),
            state=_str(d.get("state")),
            mode=_str(d.get("mode"), "events"),
            project_id=_str(d.get("project_id")),
            collection_id=_opt_str(d.get("collection_id")),
            prefix=_opt_str(d.get("prefix")),
            complete_when=_str(d.get("complete_when")),
            after_upload=_str(d.get("after_upload"), "keep"),
            excludes=_strs(d.get("excludes")),
            tags=_strs(d.get("tags")),
            metadata_template=template if isinstance(template, dict) else None,
            priority=_int(d.get("priority")),
            rescan_interval_s=_float(d.get("rescan_interval_s")),
            free_space_below=_opt_str(d.get("free_space_below")),
            force_polling=d.get("force_polling") is True,
            window=_opt_str(d.get("window")),
            problem=_problem(d.get("problem")),
            mode_reason=_problem(d.get("mode_reason")),
            files=_counts(d.get("files")),
            lag_s=_opt_float(d.get("lag_s")),
            oldest_pending=_opt_str(d.get("oldest_pending")),
            last_scan_at=_time(d.get("last_scan_at")),
            created_at=_time(d.get("created_at")),
            updated_at=_time(d.get("updated_at")),
            raw=d,
        )


@dataclass(frozen=True)
class WatchFile:
    """One file (``kind`` ``file``) or dataset directory (``dataset``) a watch knows, by its path under the root.

    ``state`` goes ``seen`` → ``complete`` → ``queued`` → ``uploaded`` →
    ``verified`` (→ ``cleaned`` once moved or deleted), or ends ``quarantined``
    (kept failing: ``error`` says why, ``retry_at`` when it is tried again) or
    ``ignored`` (a symlink, special file, excluded or unstorable name). ``job_id``
    is the job that uploads it, ``asset_id`` the asset it became.
    """

    path: str
    state: str
    kind: str = "file"
    size: int | None = None
    mtime: datetime | None = None
    asset_id: str | None = None
    content_id: str | None = None
    job_id: str | None = None
    sha256: str | None = None
    attempts: int = 0
    retry_at: datetime | None = None
    error: JobError | None = None
    seen_at: datetime | None = None
    updated_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, obj: Any) -> WatchFile:
        d = _obj(obj)
        error = d.get("error")
        return cls(
            path=_str(d.get("path")),
            state=_str(d.get("state")),
            kind=_str(d.get("kind"), "file"),
            size=_opt_int(d.get("size")),
            mtime=_time(d.get("mtime")),
            asset_id=_opt_str(d.get("asset_id")),
            content_id=_opt_str(d.get("content_id")),
            job_id=_opt_str(d.get("job_id")),
            sha256=_opt_str(d.get("sha256")),
            attempts=_int(d.get("attempts")),
            retry_at=_time(d.get("retry_at")),
            error=JobError.from_wire(error) if isinstance(error, dict) else None,
            seen_at=_time(d.get("seen_at")),
            updated_at=_time(d.get("updated_at")),
            raw=d,
        )


@dataclass(frozen=True)
class Event:
    """One event from the daemon's stream.

    ``type`` is ``job.state``, ``job.progress``, ``job.priority``,
    ``auth.reloaded``, ``auth.expiring``, ``watch.state``, ``watch.file``, ``gap`` or something
    newer. Fields that do not belong to the type are ``None``: ``state`` and
    ``previous_state`` for ``job.state``, ``watch.state`` (``state`` is ``None``
    once the watch was removed, ``previous_state`` for a new one) and
    ``watch.file``; ``job`` for ``job.state`` and ``job.priority``; ``progress``
    for ``job.progress``; ``watch_id`` and ``watch`` (the watch as it is now,
    ``None`` once removed) for ``watch.state``; ``watch_id``, ``path`` and
    ``file`` for ``watch.file``; ``missed_from``/``missed_to`` for ``gap`` (the
    ids this subscriber missed, inclusive; replay durable ones with
    ``since=missed_from - 1``); ``expires_at``, ``days_left`` and
    ``threshold_days`` for ``auth.expiring`` (the token expires within
    ``threshold_days``). ``time`` is when it happened.
    """

    id: int
    type: str
    time: datetime | None = None
    job_id: str | None = None
    state: str | None = None
    previous_state: str | None = None
    job: Job | None = None
    progress: ProgressEvent | None = None
    missed_from: int | None = None
    missed_to: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    watch_id: str | None = None
    path: str | None = None
    watch: Watch | None = None
    file: WatchFile | None = None
    expires_at: datetime | None = None
    days_left: float | None = None
    threshold_days: float | None = None

    @property
    def is_gap(self) -> bool:
        """True for a gap marker: events were dropped for this subscriber."""
        return self.type == "gap"

    @classmethod
    def from_wire(cls, obj: Any) -> Event:
        d = _obj(obj)
        type_ = _str(d.get("type"))
        job_id = _opt_str(d.get("job_id"))
        job = d.get("job")
        watch = d.get("watch")
        file = d.get("file")
        has_state = type_ in ("job.state", "watch.state", "watch.file")
        is_watch = type_ in ("watch.state", "watch.file")
        return cls(
            id=_int(d.get("id")),
            type=type_,
            time=_event_time(d.get("time")),
            job_id=job_id,
            state=_opt_str(d.get("state")) if has_state else None,
            previous_state=_opt_str(d.get("previous_state")) if has_state else None,
            job=Job.from_wire(job) if type_ in ("job.state", "job.priority") and isinstance(job, dict) else None,
            progress=ProgressEvent.from_wire(d, transfer_id=job_id or "") if type_ == "job.progress" else None,
            missed_from=_opt_int(d.get("missed_from")) if type_ == "gap" else None,
            missed_to=_opt_int(d.get("missed_to")) if type_ == "gap" else None,
            raw=d,
            watch_id=_opt_str(d.get("watch_id")) if is_watch else None,
            path=_opt_str(d.get("path")) if type_ == "watch.file" else None,
            watch=Watch.from_wire(watch) if type_ == "watch.state" and isinstance(watch, dict) else None,
            file=WatchFile.from_wire(file) if type_ == "watch.file" and isinstance(file, dict) else None,
            expires_at=_time(d.get("expires_at")) if type_ == "auth.expiring" else None,
            days_left=_opt_float(d.get("days_left")) if type_ == "auth.expiring" else None,
            threshold_days=_opt_float(d.get("threshold_days")) if type_ == "auth.expiring" else None,
        )
