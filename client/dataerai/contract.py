"""The one definition of what crosses the product's edges.

Standard library only, shared by the SDK, the daemon and the repository server:
the limits, the enumerations, the id patterns, the path rules and the shapes of
the job object and of every event. A fact that two of them must agree on lives
here and nowhere else; ``tests/client/test_contract.py`` fails when a copy
appears, and the daemon's protocol reference is generated from these names.

Nothing here does I/O.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from collections.abc import Mapping
from typing import Final, Literal, TypedDict

# --- limits -----------------------------------------------------------------

KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30

#: Parts (chunks) of a content: S3's own bounds, so any object store can hold them.
MIN_PART_SIZE: Final = 64 * KiB
MAX_PART_SIZE: Final = 5 * GiB
DEFAULT_PART_SIZE: Final = 64 * MiB
MAX_PARTS: Final = 10_000

#: The most files one content (one directory upload) may hold.
MAX_FILES_PER_CONTENT: Final = 100_000

#: A repository path (an asset's path, a file's path inside a content), in characters.
MAX_PATH_LENGTH: Final = 1024
#: One name on a local disk, in bytes (Linux NAME_MAX).
MAX_NAME_BYTES: Final = 255
#: A whole local path, in bytes, without its NUL (Linux PATH_MAX - 1).
MAX_LOCAL_PATH_BYTES: Final = 4095

#: Free text the repository stores (titles, descriptions, names), in characters.
MAX_TITLE_LENGTH: Final = 1024
MAX_TEXT_LENGTH: Final = 65_536
MAX_TAGS: Final = 1000
MAX_TAG_LENGTH: Final = 255
#: An asset's free-form ``metadata`` object, encoded as JSON.
MAX_METADATA_BYTES: Final = 1 * MiB
MAX_METADATA_DEPTH: Final = 32

#: A job's priority is a signed 32-bit integer; higher starts first.
MIN_PRIORITY: Final = -(2**31)
MAX_PRIORITY: Final = 2**31 - 1

#: The most transfers one ``upload.start_many`` or ``download.start_many`` call queues (all or
#: none of them). Its request must also fit one line of the wire (``protocol.MAX_LINE_BYTES``,
#: 1 MiB): a caller with more, or with bulky items, sends several calls.
MAX_START_MANY_ITEMS: Final = 1000

#: Event ids and other counters that cross JSON stay exact in any JSON reader (2**53 - 1).
MAX_JSON_INT: Final = 2**53 - 1

# --- enumerations -----------------------------------------------------------

OwnerType = Literal["project", "user", "collection"]
OWNER_TYPES: Final[tuple[OwnerType, ...]] = ("project", "user", "collection")

AnalysisMode = Literal["non_destructive", "altering", "destructive", "in_situ", "ex_situ", "invasive", "non_invasive"]
ANALYSIS_MODES: Final[tuple[AnalysisMode, ...]] = (
    "non_destructive", "altering", "destructive", "in_situ", "ex_situ", "invasive", "non_invasive",
)

JobKind = Literal["upload", "download"]
JOB_KINDS: Final[tuple[JobKind, ...]] = ("upload", "download")

JobState = Literal[
    "queued", "scheduled", "running", "waiting_for_network", "waiting_for_auth", "paused", "completed", "failed",
    "cancelled",
]
JOB_STATES: Final[tuple[JobState, ...]] = (
    "queued", "scheduled", "running", "waiting_for_network", "waiting_for_auth", "paused", "completed", "failed",
    "cancelled",
)
#: A job in one of these states will not change any more.
TERMINAL_JOB_STATES: Final[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})
#: States in which a job waits for something outside it and says why (the job's ``waiting``).
WAITING_JOB_STATES: Final[frozenset[str]] = frozenset({"waiting_for_network", "waiting_for_auth"})
#: States whose job object carries ``waiting`` (why, and when it goes on): the waiting states, and
#: ``scheduled`` (outside its transfer window; ``retry_at`` is when the window opens).
WAITING_OBJECT_JOB_STATES: Final[frozenset[str]] = WAITING_JOB_STATES | {"scheduled"}
#: The ``waiting.code`` of a ``scheduled`` job.
OUTSIDE_WINDOW: Final = "outside_window"
#: The longest transfer window (``window`` of ``upload.start``, ``download.start``, a watch).
MAX_WINDOW_LENGTH: Final = 200
#: States a job is in only while a daemon works on it; after a crash they mean "queued".
ACTIVE_JOB_STATES: Final[tuple[JobState, ...]] = ("running", "waiting_for_network", "waiting_for_auth")

EventType = Literal[
    "job.state", "job.progress", "job.priority", "auth.reloaded", "auth.expiring", "watch.state", "watch.file", "gap",
]
#: Every event type the daemon emits; a subscriber may filter by them (``gap`` always comes through).
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "job.state", "job.progress", "job.priority", "auth.reloaded", "auth.expiring", "watch.state", "watch.file", "gap",
)

# --- watch folders (docs/watch.md) ------------------------------------------

#: ``active``: watching; ``paused``: a person paused it; ``unavailable``: its root is missing,
#: unmounted or replaced, so it waits (deleting nothing, uploading nothing) until the root is back.
WatchState = Literal["active", "paused", "unavailable"]
WATCH_STATES: Final[tuple[WatchState, ...]] = ("active", "paused", "unavailable")
#: How a watch learns of changes: file events (inotify) with a periodic rescan, or the rescan alone.
WatchMode = Literal["events", "polling"]
WATCH_MODES: Final[tuple[WatchMode, ...]] = ("events", "polling")

#: A watched file's life: ``seen`` (known, not complete by the watch's rule), ``complete`` (to be
#: queued), ``queued`` (a job uploads it), ``uploaded`` (the job completed), ``verified`` (the
#: repository holds its SHA-256 and the local file is unchanged), ``cleaned`` (moved or deleted
#: after verification), ``quarantined`` (kept failing; waits for a change or a rescan),
#: ``ignored`` (not uploaded: a symlink, special file, excluded or unstorable name).
WatchFileState = Literal["seen", "complete", "queued", "uploaded", "verified", "cleaned", "quarantined", "ignored"]
WATCH_FILE_STATES: Final[tuple[WatchFileState, ...]] = (
    "seen", "complete", "queued", "uploaded", "verified", "cleaned", "quarantined", "ignored",
)
#: Files in these states are not in the repository yet: a watch's lag is the age of the oldest.
PENDING_WATCH_FILE_STATES: Final[frozenset[str]] = frozenset({"seen", "complete", "queued", "uploaded"})
#: A watched entry is one file, or a dataset directory (``sentinel:NAME``) uploaded as one content.
WatchEntryKind = Literal["file", "dataset"]

#: When a watched file is complete: ``close`` (its last writer closed it), ``stable:DURATION``
#: (unchanged and not open for writing that long), ``sentinel:NAME`` (a directory is one dataset,
#: complete once a file NAME appears in it).
COMPLETION_RULES: Final[tuple[str, ...]] = ("close", "stable", "sentinel")
#: What happens to a local file once the repository verified it: ``keep``, ``move:DIR`` or ``delete``.
AFTER_UPLOAD_ACTIONS: Final[tuple[str, ...]] = ("keep", "move", "delete")
#: The shortest and longest stability window and rescan interval a watch takes, in seconds.
MIN_STABLE_S: Final = 0.0
MAX_STABLE_S: Final = 7 * 86400.0
MIN_RESCAN_INTERVAL_S: Final = 1.0
MAX_RESCAN_INTERVAL_S: Final = 7 * 86400.0
#: The most exclude patterns one watch takes.
MAX_EXCLUDES: Final = 1000

# --- ids --------------------------------------------------------------------

#: What each kind of id starts with. Repository ids are ``<prefix>_`` and 8 to 64
#: lower-case letters or digits: never a ``/``, ``.``, ``%`` or anything else that
#: could carry a path into a URL.
ID_PREFIXES: Final[Mapping[str, str]] = {
    "job": "job",
    "user": "usr",
    "token": "tok",
    "project": "prj",
    "collection": "col",
    "asset": "ast",
    "content": "cnt",
    "relationship": "rel",
    "upload": "upl",
    "challenge": "chl",
    "watch": "wat",
}
IdKind = str

_JOB_ID: Final = re.compile(r"job_[0-9a-f]{24}")
_REPOSITORY_ID: Final = {
    kind: re.compile(re.escape(prefix) + r"_[0-9a-z]{8,64}") for kind, prefix in ID_PREFIXES.items() if kind != "job"
}
ID_PATTERNS: Final[Mapping[str, re.Pattern[str]]] = {"job": _JOB_ID, **_REPOSITORY_ID}
#: Which id kind an owner's id is, by ``owner_type``.
OWNER_ID_KINDS: Final[Mapping[str, str]] = {"project": "project", "user": "user", "collection": "collection"}


def is_id(kind: str, value: object) -> bool:
    """Whether ``value`` is an id of ``kind`` (a key of :data:`ID_PATTERNS`)."""
    return isinstance(value, str) and ID_PATTERNS[kind].fullmatch(value) is not None


def id_problem(kind: str, value: object) -> str | None:
    """What is wrong with ``value`` as an id of ``kind`` (a phrase after its name), or None."""
    if is_id(kind, value):
        return None
    if kind == "job":
        return "must be a job id: job_ and 24 hex digits"
    return f"must be a {kind} id: {ID_PREFIXES[kind]}_ and 8 to 64 lower-case letters or digits"


def new_job_id() -> str:
    """A new job id: a time-ordered prefix so ids sort by creation, a random tail so they never collide."""
    return f"job_{int(time.time() * 1000) % 16**12:012x}{secrets.token_hex(6)}"


def new_id(kind: str) -> str:
    """A new repository id of ``kind`` (80 random bits)."""
    return f"{ID_PREFIXES[kind]}_{secrets.token_hex(10)}"


# --- text and paths ---------------------------------------------------------


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What is wrong with ``value`` as text that crosses an edge, or None.

    No NUL or other control character (``multiline`` text may hold tabs and
    newlines) and no lone surrogate, which no UTF-8 encoder can write.
    """
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            return "must not hold a lone surrogate (it is not valid UTF-8)"
        if code < 0x20 or 0x7F <= code < 0xA0:
            if multiline and char in "\t\n":
                continue
            return f"must not hold the control character U+{code:04X}"
    return None


def path_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a repository path (a phrase after "the path"), or None.

    A repository path is relative and ``/``-separated, with no ``.``, ``..`` or empty
    segments, no backslash, no control character and at most :data:`MAX_PATH_LENGTH`
    characters: so whatever a client restores from it stays inside its destination.
    (The daemon also refuses, when it writes, a name longer than its disk takes.)
    """
    if not path:
        return "must not be empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"must be at most {MAX_PATH_LENGTH} characters"
    if "\\" in path:
        return "must not contain a backslash"
    problem = text_problem(path)
    if problem is not None:
        return problem
    if path.startswith("/"):
        return "must be relative (no leading `/`)"
    for segment in path.split("/"):
        if segment == "":
            return "must not have empty segments (`//` or a trailing `/`)"
        if segment in (".", ".."):
            return "must not have `.` or `..` segments"
    return None


def plain_segment(name: str) -> bool:
    """Whether ``name``, added as one more segment to a path :func:`path_problem` takes, keeps
    it one that it takes but for the length: printable ASCII, not ``.`` or ``..``, no ``/`` or
    backslash. A quick look for the common file name, so that a tree of many files need not
    walk each whole path again; any other name goes to :func:`path_problem`, the definition.
    """
    return (
        name.isascii() and name.isprintable() and name not in ("", ".", "..") and "/" not in name and "\\" not in name
    )


def local_path_problem(path: str) -> str | None:
    """What is wrong with ``path`` as an absolute local path the OS can take, or None.

    A name that was not UTF-8 on disk arrives surrogate-escaped (U+DC80 to
    U+DCFF), and those are kept; any other lone surrogate or a NUL cannot be a
    path. Names and the whole path are held to what Linux takes.
    """
    if not path.startswith("/"):
        return "must be an absolute path"
    if "\x00" in path:
        return "must not hold a NUL"
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "must not hold a lone surrogate (it is not a file name)"
    if len(raw) > MAX_LOCAL_PATH_BYTES:
        return f"must be at most {MAX_LOCAL_PATH_BYTES} bytes"
    if any(len(name) > MAX_NAME_BYTES for name in raw.split(b"/")):
        return f"must not have a name longer than {MAX_NAME_BYTES} bytes"
    return None


def normalize_tag(tag: str) -> str:
    """Tags compare after NFC normalisation, so ``é`` typed two ways is one tag."""
    return unicodedata.normalize("NFC", tag)


# --- the job object and the events (docs/protocol.md) -----------------------


class JobErrorObject(TypedDict):
    code: str
    message: str


class JobWaitingObject(TypedDict):
    """Why a job in ``waiting_for_network``/``waiting_for_auth``/``scheduled`` waits, and when it
    goes on (for ``scheduled``, ``code`` is ``outside_window`` and ``retry_at`` the window's opening)."""

    code: str
    reason: str
    retry_at: str | None


class DownloadedFileObject(TypedDict):
    local_path: str
    size: int


class JobObject(TypedDict):
    """A job as the daemon sends it (``job.get``, and inside ``job.*`` events)."""

    job_id: str
    kind: JobKind
    state: JobState
    priority: int
    client: str | None
    created_at: str | None
    updated_at: str | None
    bytes_done: int
    bytes_total: int | None
    chunk_count: int | None
    chunks_done: int
    file_name: str | None
    local_path: str | None
    dest_dir: str | None
    asset_id: str | None
    content_id: str | None
    upload_id: str | None
    sha256: str | None
    files: list[DownloadedFileObject]
    deduplicated: bool
    error: JobErrorObject | None
    waiting: JobWaitingObject | None
    window: str | None


class _EventBase(TypedDict):
    id: int
    time: float


class JobStateEvent(_EventBase):
    """Durable: a job changed state (``previous_state`` is null for a new job)."""

    type: Literal["job.state"]
    job_id: str
    state: JobState
    previous_state: JobState | None
    job: JobObject


class JobPriorityEvent(_EventBase):
    """Durable: a job's priority changed."""

    type: Literal["job.priority"]
    job_id: str
    priority: int
    previous_priority: int
    job: JobObject


class JobProgressEvent(_EventBase):
    """Transient (not stored, throttled): how far a running job has got."""

    type: Literal["job.progress"]
    job_id: str
    bytes_done: int
    bytes_total: int
    chunk_index: int
    chunk_count: int
    rate_bps: float
    file_index: int
    file_name: str
    state: JobState
    waiting: JobWaitingObject | None


class AuthReloadedEvent(_EventBase):
    """Durable: the credentials were read again; ``waiting_jobs`` were waiting for them."""

    type: Literal["auth.reloaded"]
    logged_in: bool
    server_url: str | None
    waiting_jobs: list[str]


class AuthExpiringEvent(_EventBase):
    """Durable: the token expires within ``threshold_days`` (one of the daemon's ``auth_warn_days``);
    emitted once per threshold and token, ``days_left`` as it was then."""

    type: Literal["auth.expiring"]
    server_url: str
    expires_at: str
    days_left: float
    threshold_days: float


class GapEvent(_EventBase):
    """This subscriber missed the events with ids ``missed_from`` to ``missed_to`` (inclusive)."""

    type: Literal["gap"]
    missed_from: int
    missed_to: int


class WatchProblemObject(TypedDict):
    """Why a watch is ``unavailable``, or why it polls instead of using file events."""

    code: str
    message: str


class WatchObject(TypedDict):
    """A watch folder as the daemon sends it (``watch.get``, ``watch.list``, ``watch.state`` events)."""

    watch_id: str
    root: str
    state: WatchState
    mode: WatchMode
    project_id: str
    collection_id: str | None
    prefix: str | None
    complete_when: str
    after_upload: str
    excludes: list[str]
    tags: list[str]
    metadata_template: dict[str, object] | None
    priority: int
    rescan_interval_s: float
    free_space_below: str | None
    force_polling: bool
    #: The transfer window its uploads get (``Mon-Fri 20:00-06:00``), else null: any time.
    window: str | None
    #: Why it is ``unavailable`` (root missing, unmounted, replaced, emptied), else null.
    problem: WatchProblemObject | None
    #: Why it polls although it asked for events (no inotify, ``max_user_watches`` reached), else null.
    mode_reason: WatchProblemObject | None
    #: How many of its files are in each state (every state present, zeros included).
    files: dict[str, int]
    #: Seconds since the oldest file not yet uploaded was seen; null when none waits.
    lag_s: float | None
    #: The path of the oldest file not yet uploaded (the one ``lag_s`` is about), else null.
    oldest_pending: str | None
    last_scan_at: str | None
    created_at: str
    updated_at: str


class WatchFileObject(TypedDict):
    """One file (or dataset directory) a watch knows."""

    path: str
    kind: WatchEntryKind
    state: WatchFileState
    size: int | None
    mtime: str | None
    asset_id: str | None
    content_id: str | None
    job_id: str | None
    sha256: str | None
    attempts: int
    retry_at: str | None
    #: Why it is quarantined or ignored (``code`` such as ``permission_denied``, ``symlink``), else null.
    error: JobErrorObject | None
    seen_at: str
    updated_at: str


class WatchStateEvent(_EventBase):
    """Durable: a watch was added, removed (``state`` null), paused, resumed, became unavailable or came back."""

    type: Literal["watch.state"]
    watch_id: str
    state: WatchState | None
    previous_state: WatchState | None
    watch: WatchObject | None


class WatchFileEvent(_EventBase):
    """Durable: a watched file was verified, cleaned (moved or deleted) or quarantined."""

    type: Literal["watch.file"]
    watch_id: str
    path: str
    state: WatchFileState
    previous_state: WatchFileState
    file: WatchFileObject


AnyEvent = (
    JobStateEvent | JobPriorityEvent | JobProgressEvent | AuthReloadedEvent | AuthExpiringEvent | WatchStateEvent
    | WatchFileEvent | GapEvent
)

#: Each event type's payload keys besides ``id``, ``type`` and ``time``: the daemon emits
#: exactly these, and the SDK's ``Event`` reads them.
EVENT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "job.state": tuple(k for k in JobStateEvent.__annotations__ if k not in ("id", "time", "type")),
    "job.priority": tuple(k for k in JobPriorityEvent.__annotations__ if k not in ("id", "time", "type")),
    "job.progress": tuple(k for k in JobProgressEvent.__annotations__ if k not in ("id", "time", "type")),
    "auth.reloaded": tuple(k for k in AuthReloadedEvent.__annotations__ if k not in ("id", "time", "type")),
    "auth.expiring": tuple(k for k in AuthExpiringEvent.__annotations__ if k not in ("id", "time", "type")),
    "watch.state": tuple(k for k in WatchStateEvent.__annotations__ if k not in ("id", "time", "type")),
    "watch.file": tuple(k for k in WatchFileEvent.__annotations__ if k not in ("id", "time", "type")),
    "gap": tuple(k for k in GapEvent.__annotations__ if k not in ("id", "time", "type")),
}
