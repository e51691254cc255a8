"""The ledger: every entry a watch knows, as durable rows, and every change to them.

A row is the record of one path under a watch's root: the version last seen
(size, mtime, inode), its state (``contract.WATCH_FILE_STATES``) and, from
``queued`` on, the job, asset and content it became. The rules that make the
watch exactly-once live here, each applied in one transaction:

- a file goes ``complete → queued`` in the same transaction that creates its
  upload job (``Jobs.create_many(..., also=...)``), so a crash leaves either
  both or neither;
- the job's end moves the row in the same transaction as the job's own state
  (``record_job_end``, a ``Jobs`` end listener): ``uploaded`` with its asset and
  content, or back to ``seen`` when the source changed under it, or ``complete``
  again after a backoff, or ``quarantined`` after ``MAX_ATTEMPTS``;
- a new version of a file that was uploaded keeps its ``asset_id``, so its
  upload becomes a new content of the same asset.

Everything here runs on the store's thread (plain functions of a
``Connection``); ``dataeraid.watch.watcher`` decides when.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from dataerai import contract
from sqlalchemy.engine import Connection

from dataeraid import schema
from dataeraid.events import Emit
from dataeraid.redact import redact

Row = dict[str, Any]

#: Uploads of one version that may fail before the file is quarantined, and the waits after each
#: failure (for the daemon's default ``watch_retry_base_s`` of 30 s; the others scale with it).
MAX_ATTEMPTS = 5
RETRY_BASE_S = 30.0
BACKOFF_S = (30.0, 120.0, 600.0, 1800.0)
#: Job errors that mean the file itself moved on (changed or vanished): seen again, not a failure.
SOURCE_MOVED_ON = frozenset({"source_changed", "not_found"})

W = schema.watch_files
WATCHES = schema.watches


def backoff(attempts: int, base_s: float = RETRY_BASE_S) -> float:
    """The wait after the ``attempts``-th failed upload: 30 s, 2 min, 10 min, then 30 min (scaled by ``base_s``)."""
    return BACKOFF_S[min(max(attempts - 1, 0), len(BACKOFF_S) - 1)] * base_s / RETRY_BASE_S


@dataclass(frozen=True)
class Retries:
    """How often a failed watched file is tried again before it is quarantined (``watch_max_attempts``,
    ``watch_retry_base_s``)."""

    max_attempts: int = MAX_ATTEMPTS
    base_s: float = RETRY_BASE_S

    def backoff(self, attempts: int) -> float:
        return backoff(attempts, self.base_s)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Observation:
    """A path as a stat found it. ``closed``: a close-after-write (or a move in) was the news."""

    rel: str
    size: int
    mtime_ns: int
    inode: int
    kind: str = "file"
    closed: bool = False

    def version(self) -> tuple[int, int, int]:
        return (self.size, self.mtime_ns, self.inode)


def _version(row: Row) -> tuple[int, int, int]:
    return (row["size"], row["mtime_ns"], row["inode"])


def file_to_wire(row: Row) -> contract.WatchFileObject:
    error: contract.JobErrorObject | None = None
    if row["error_code"]:
        error = {"code": row["error_code"], "message": redact(row["error_message"] or "")}
    return {
        "path": row["rel"],
        "kind": row["kind"],
        "state": row["state"],
        "size": row["size"],
        "mtime": iso(row["mtime_ns"] / 1e9) if row["mtime_ns"] is not None else None,
        "asset_id": row["asset_id"],
        "content_id": row["content_id"],
        "job_id": row["job_id"],
        "sha256": row["sha256"],
        "attempts": row["attempts"],
        "retry_at": iso(row["retry_at"]) if row["state"] in ("complete", "quarantined", "verified") else None,
        "error": error,
        "seen_at": iso(row["seen_at"]) or "",
        "updated_at": iso(row["updated_at"]) or "",
    }


# --- the watches table ------------------------------------------------------------


def fetch_watch(conn: Connection, watch_id: str) -> Row | None:
    row = conn.execute(sa.select(WATCHES).where(WATCHES.c.watch_id == watch_id)).mappings().first()
    return dict(row) if row else None


def all_watches(conn: Connection) -> list[Row]:
    return [dict(r) for r in conn.execute(sa.select(WATCHES).order_by(WATCHES.c.created_at)).mappings()]


def update_watch(conn: Connection, watch_id: str, **fields: Any) -> None:
    conn.execute(WATCHES.update().where(WATCHES.c.watch_id == watch_id).values(**fields, updated_at=time.time()))


COUNTS = schema.watch_file_counts


def counts(conn: Connection, watch_id: str) -> dict[str, int]:
    """The watch's files by state: a few rows of ``watch_file_counts``, which triggers on
    ``watch_files`` keep exact in the transaction of every change (migration 0007), so
    ``watch.get`` costs the same at a million files as at ten (docs/benchmarks.md)."""
    query = sa.select(COUNTS.c.state, COUNTS.c.n).where(COUNTS.c.watch_id == watch_id)
    found = {state: int(n) for state, n in conn.execute(query).all()}
    return {state: found.get(state, 0) for state in contract.WATCH_FILE_STATES}


def count_rows(conn: Connection, watch_id: str) -> dict[str, int]:
    """The same as :func:`counts`, counted from every row of the watch (what the kept counts must equal)."""
    query = sa.select(W.c.state, sa.func.count()).where(W.c.watch_id == watch_id).group_by(W.c.state)
    found = {state: int(n) for state, n in conn.execute(query).all()}
    return {state: found.get(state, 0) for state in contract.WATCH_FILE_STATES}


def oldest_pending(conn: Connection, watch_id: str) -> tuple[str, float] | None:
    """The pending file seen longest ago, and when; one index seek per pending state."""
    best: tuple[str, float] | None = None
    for state in sorted(contract.PENDING_WATCH_FILE_STATES):
        query = (sa.select(W.c.rel, W.c.seen_at).where(W.c.watch_id == watch_id, W.c.state == state)
                 .order_by(W.c.seen_at).limit(1))
        found = conn.execute(query).first()
        if found is not None and (best is None or found[1] < best[1]):
            best = (found[0], found[1])
    return best


# --- reading files ----------------------------------------------------------------


def fetch_files(conn: Connection, watch_id: str, rels: Sequence[str]) -> dict[str, Row]:
    found: dict[str, Row] = {}
    for start in range(0, len(rels), 500):
        query = sa.select(W).where(W.c.watch_id == watch_id, W.c.rel.in_(list(rels[start:start + 500])))
        found.update((r["rel"], dict(r)) for r in conn.execute(query).mappings())
    return found


def list_files(conn: Connection, watch_id: str, states: Sequence[str] | None, after: str | None,
               limit: int) -> list[Row]:
    query = sa.select(W).where(W.c.watch_id == watch_id).order_by(W.c.rel).limit(limit)
    if states:
        query = query.where(W.c.state.in_(list(states)))
    if after is not None:
        query = query.where(W.c.rel > after)
    return [dict(r) for r in conn.execute(query).mappings()]


def due(conn: Connection, watch_id: str, state: str, now: float, limit: int, *, unset: bool = True) -> list[Row]:
    """Rows in ``state`` whose ``retry_at`` has come (or, with ``unset``, that have none), the earliest first."""
    when = sa.or_(W.c.retry_at.is_(None), W.c.retry_at <= now) if unset else W.c.retry_at <= now
    query = (sa.select(W).where(W.c.watch_id == watch_id, W.c.state == state, when)
             .order_by(W.c.retry_at, W.c.seen_at).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


def next_due(conn: Connection, watch_id: str, states: Iterable[str]) -> float | None:
    """The earliest ``retry_at`` among rows in ``states`` (one index seek each)."""
    best: float | None = None
    for state in states:
        query = (sa.select(W.c.retry_at).where(W.c.watch_id == watch_id, W.c.state == state,
                                                 W.c.retry_at.is_not(None))
                 .order_by(W.c.retry_at).limit(1))
        found = conn.execute(query).scalar()
        if found is not None and (best is None or found < best):
            best = float(found)
    return best


def has_any(conn: Connection, watch_id: str, state: str) -> bool:
    query = sa.select(W.c.rel).where(W.c.watch_id == watch_id, W.c.state == state).limit(1)
    return conn.execute(query).first() is not None


# --- writing files ----------------------------------------------------------------


def _set(conn: Connection, watch_id: str, rel: str, **fields: Any) -> None:
    fields.setdefault("updated_at", time.time())
    conn.execute(W.update().where(W.c.watch_id == watch_id, W.c.rel == rel).values(**fields))


def emit_file(conn: Connection, emit: Emit, watch_id: str, rel: str, previous: str) -> None:
    row = conn.execute(sa.select(W).where(W.c.watch_id == watch_id, W.c.rel == rel)).mappings().first()
    if row is None:
        return
    emit("watch.file", None, {"watch_id": watch_id, "path": rel, "state": row["state"],
                              "previous_state": previous, "file": file_to_wire(dict(row))})


def observe(conn: Connection, watch_id: str, seen: Sequence[Observation], window_s: float, now: float,
            scan_gen: int | None = None) -> list[str]:
    """Record what a scan or file events found; returns the paths closed by their writer that
    are ``seen`` with exactly the observed version (candidates for the ``close`` rule).

    A new path is ``seen``. A known path with another version is a new version: ``seen`` again
    with its ``asset_id`` kept (a modified file becomes a new content of the same asset),
    its failures forgotten; unless a job has it (``queued``), whose end decides. ``scan_gen``:
    a full scan stamps every row it found.
    """
    rows = fetch_files(conn, watch_id, [o.rel for o in seen])
    closed: list[str] = []
    inserts: list[Row] = []
    for obs in seen:
        row = rows.get(obs.rel)
        if row is None:
            inserts.append({"watch_id": watch_id, "rel": obs.rel, "kind": obs.kind, "state": "seen",
                            "size": obs.size, "mtime_ns": obs.mtime_ns, "inode": obs.inode, "stable_since": now,
                            "retry_at": now + window_s, "attempts": 0, "seen_at": now, "updated_at": now,
                            "scan_gen": scan_gen or 0})
            if obs.closed:
                closed.append(obs.rel)
            continue
        stamp: dict[str, Any] = {"scan_gen": scan_gen, "gone_at": None} if scan_gen is not None else {}
        if row["gone_at"] is not None:
            stamp["gone_at"] = None  # found on disk again: not gone, whatever found it (pruning counts from gone_at)
        if row["state"] == "queued" or (_version(row) == obs.version() and row["state"] != "ignored"):
            if stamp:
                _set(conn, watch_id, obs.rel, **stamp, updated_at=row["updated_at"])
            if obs.closed and row["state"] == "seen":
                closed.append(obs.rel)
            continue
        # Another version of the file (or an ignored entry that became a regular file).
        _set(conn, watch_id, obs.rel, state="seen", kind=obs.kind, size=obs.size, mtime_ns=obs.mtime_ns,
             inode=obs.inode, stable_since=now, retry_at=now + window_s, attempts=0, error_code=None,
             error_message=None, job_id=None, content_id=None, sha256=None,
             seen_at=now if row["state"] not in contract.PENDING_WATCH_FILE_STATES else row["seen_at"], **stamp)
        if obs.closed:
            closed.append(obs.rel)
    if inserts:
        conn.execute(W.insert(), inserts)
    return closed


def ignore(conn: Connection, watch_id: str, skipped: Sequence[tuple[str, str, str]], now: float,
           scan_gen: int | None = None) -> None:
    """Record entries that are not uploaded (``(rel, reason, detail)``: symlinks, special files,
    excluded or unstorable names): counted and listed as ``ignored``, never a job."""
    rows = fetch_files(conn, watch_id, [rel for rel, _, _ in skipped])
    inserts: list[Row] = []
    for rel, reason, detail in skipped:
        row = rows.get(rel)
        if row is None:
            inserts.append({"watch_id": watch_id, "rel": rel, "kind": "file", "state": "ignored",
                            "error_code": reason, "error_message": detail or reason, "attempts": 0,
                            "seen_at": now, "updated_at": now, "scan_gen": scan_gen or 0})
        elif row["state"] == "queued":
            continue
        elif row["state"] != "ignored" or row["error_code"] != reason:
            _set(conn, watch_id, rel, state="ignored", error_code=reason, error_message=detail or reason,
                 size=None, mtime_ns=None, inode=None, retry_at=None, job_id=None,
                 **({"scan_gen": scan_gen, "gone_at": None} if scan_gen is not None else {}))
        elif scan_gen is not None:
            _set(conn, watch_id, rel, scan_gen=scan_gen, gone_at=None, updated_at=row["updated_at"])
    if inserts:
        conn.execute(W.insert(), inserts)


#: Rows a missing file simply leaves, unless an earlier version of it reached the repository.
FORGET_WHEN_GONE = ("seen", "complete", "quarantined", "ignored")
#: States whose rows stay once their file is gone (with ``gone_at``) until pruning.
KEPT_WHEN_GONE = ("uploaded", "verified", "cleaned", "ignored")


def _gone_with_asset(now: float) -> dict[str, Any]:
    """What a row becomes whose newer version vanished before it was uploaded: ``ignored``, still
    holding the asset its earlier versions went to, so the path coming back is that asset again."""
    return {"state": "ignored", "error_code": "gone",
            "error_message": "the file went before its new version was uploaded; its path keeps its asset",
            "size": None, "mtime_ns": None, "inode": None, "retry_at": None, "job_id": None, "gone_at": now,
            "updated_at": now}


def gone(conn: Connection, watch_id: str, rels: Sequence[str] | None, now: float,
         before_gen: int | None = None) -> int:
    """Paths no longer there: ``rels``, or every row a full scan (``before_gen``) did not stamp.

    Rows of files that never reached the repository are forgotten; the record of uploaded
    ones stays (so the same file coming back is known) with ``gone_at`` for pruning; a
    ``queued`` one is left to its job. How many rows changed.
    """
    where = [W.c.watch_id == watch_id]
    if rels is not None:
        where.append(W.c.rel.in_(list(rels)))
    if before_gen is not None:
        where.append(W.c.scan_gen < before_gen)
    pending = W.c.state.in_(FORGET_WHEN_GONE)
    kept = conn.execute(
        W.update().where(*where, pending, W.c.asset_id.is_not(None), W.c.gone_at.is_(None))
        .values(**_gone_with_asset(now))
    ).rowcount
    forgotten = conn.execute(W.delete().where(*where, pending, W.c.asset_id.is_(None))).rowcount
    marked = conn.execute(
        W.update().where(*where, W.c.state.in_(("uploaded", "verified", "cleaned")), W.c.gone_at.is_(None))
        .values(gone_at=now)
    ).rowcount
    return int(forgotten) + int(marked) + int(kept)


def known_here(conn: Connection, watch_id: str) -> int:
    """How many rows stand for files that should be under the root now (not cleaned, not gone)."""
    query = sa.select(sa.func.count()).where(
        W.c.watch_id == watch_id, W.c.state.in_(("seen", "complete", "queued", "uploaded", "verified")),
        W.c.gone_at.is_(None))
    return int(conn.execute(query).scalar_one())


def judge(conn: Connection, watch_id: str, rel: str, now: float, *, version: tuple[int, int, int] | None,
          complete: bool, recheck_at: float) -> str:
    """Settle a ``seen`` row after a completion check: ``version`` is what a stat found now (None: gone).

    Same version and ``complete`` → ``complete``; another version → ``seen`` from now;
    same but not complete yet → looked at again at ``recheck_at``. Returns the row's new state.
    """
    row = fetch_files(conn, watch_id, [rel]).get(rel)
    if row is None or row["state"] != "seen":
        return row["state"] if row else "gone"
    if version is None:
        if row["asset_id"] is not None:
            _set(conn, watch_id, rel, **_gone_with_asset(now))
        else:
            conn.execute(W.delete().where(W.c.watch_id == watch_id, W.c.rel == rel))
        return "gone"
    if version != _version(row):
        # Another version (as in ``observe``): the failures counted were the old version's.
        size, mtime_ns, inode = version
        _set(conn, watch_id, rel, size=size, mtime_ns=mtime_ns, inode=inode, stable_since=now,
             retry_at=recheck_at, attempts=0)
        return "seen"
    if complete:
        _set(conn, watch_id, rel, state="complete", retry_at=None)
        return "complete"
    _set(conn, watch_id, rel, retry_at=recheck_at)
    return "seen"


def mark_queued(conn: Connection, watch_id: str, queued: Sequence[tuple[str, str]]) -> None:
    """``(rel, job_id)``: the files whose upload jobs are being created in this transaction."""
    now = time.time()
    for rel, job_id in queued:
        _set(conn, watch_id, rel, state="queued", job_id=job_id, retry_at=None, error_code=None,
             error_message=None, updated_at=now)


def quarantine(conn: Connection, emit: Emit, watch_id: str, rel: str, code: str, message: str) -> None:
    row = fetch_files(conn, watch_id, [rel]).get(rel)
    if row is None or row["state"] == "quarantined":
        return
    _set(conn, watch_id, rel, state="quarantined", error_code=code, error_message=message, retry_at=None)
    emit_file(conn, emit, watch_id, rel, row["state"])


def record_job_end(conn: Connection, emit: Emit, job: Row, state: str, window_s_of: dict[str, float],
                   retries: Retries = Retries()) -> str | None:
    """A job ended (``state`` terminal): move the file it was uploading, in the job's own transaction.

    ``window_s_of`` maps a watch id to its completion window (a changed file is looked at
    again that long after). Returns the file's watch id, or None if the job was no watch's.
    """
    found = conn.execute(sa.select(W).where(W.c.job_id == job["job_id"])).mappings().first()
    # ``complete`` with this job's id: it failed and waits out its backoff, and someone retried it by hand.
    if found is None or found["state"] not in ("queued", "quarantined", "complete"):
        return None
    row = dict(found)
    watch_id, rel, now = row["watch_id"], row["rel"], time.time()
    if state == "completed":
        _set(conn, watch_id, rel, state="uploaded", asset_id=job["asset_id"], content_id=job["content_id"],
             sha256=job["sha256"], error_code=None, error_message=None, retry_at=None)
    elif state == "cancelled":
        _set(conn, watch_id, rel, state="queued")  # so that quarantine() records where it came from
        quarantine(conn, emit, watch_id, rel, "cancelled",
                   f"its upload job {job['job_id']} was cancelled; `dataerai watch rescan` tries again")
    elif job["error_code"] in SOURCE_MOVED_ON:
        # Changed or gone while queued: judged again from now, as a file never taken.
        window = window_s_of.get(watch_id, 0.0)
        _set(conn, watch_id, rel, state="seen", job_id=None, stable_since=now, retry_at=now + window,
             error_code=job["error_code"], error_message=job["error_message"])
    else:
        attempts = row["attempts"] + 1
        if attempts >= retries.max_attempts:
            _set(conn, watch_id, rel, state="queued", attempts=attempts)
            quarantine(conn, emit, watch_id, rel, job["error_code"] or "internal",
                       f"{attempts} uploads failed, the last: {job['error_message'] or job['error_code']}")
        else:
            _set(conn, watch_id, rel, state="complete", attempts=attempts, retry_at=now + retries.backoff(attempts),
                 error_code=job["error_code"], error_message=job["error_message"])
    return str(watch_id)


def verified(conn: Connection, emit: Emit, watch_id: str, rel: str, keep: bool) -> None:
    _set(conn, watch_id, rel, state="verified", error_code=None, error_message=None,
         retry_at=None if keep else time.time())
    emit_file(conn, emit, watch_id, rel, "uploaded")


def cleaned(conn: Connection, emit: Emit, watch_id: str, rel: str) -> None:
    now = time.time()
    _set(conn, watch_id, rel, state="cleaned", error_code=None, error_message=None, retry_at=None, gone_at=now)
    emit_file(conn, emit, watch_id, rel, "verified")


def clean_failed(conn: Connection, watch_id: str, rel: str, code: str, message: str,
                 retry_at: float | None) -> None:
    """A move or delete that failed: the file stays where it is, verified, and says why (tried again at
    ``retry_at``; None: only once the file changes)."""
    _set(conn, watch_id, rel, error_code=code, error_message=message, retry_at=retry_at)


def retry_quarantined(conn: Connection, watch_id: str) -> int:
    """``watch rescan``: quarantined files are tried again (their failures forgotten)."""
    now = time.time()
    return int(conn.execute(
        W.update().where(W.c.watch_id == watch_id, W.c.state == "quarantined")
        .values(state="seen", attempts=0, retry_at=now, stable_since=now, job_id=None, updated_at=now)
    ).rowcount)


#: Rows one pruning transaction forgets at most (0.14 s of the store's one thread on average, at
#: most 0.3 s, at a million rows: tools/bench_watch.py): that thread is free again between
#: batches, so a million old rows never hold every RPC and job for half a minute.
PRUNE_BATCH = 1000


def prunable(older_than: float, limit: int | None = None) -> sa.Select[Any]:
    """The rowids of the rows :func:`prune` forgets: a seek on ``ix_watch_files_gone``.

    Only rows kept when their file went carry ``gone_at`` (``KEPT_WHEN_GONE``, and such a row
    a failed verification quarantined since). A queued one is its job's until that ends. No
    state equality, which would steer SQLite to the state index and a pass over every row.
    """
    old: sa.Select[Any] = sa.select(sa.literal_column("rowid")).select_from(W).where(
        W.c.gone_at.is_not(None), W.c.gone_at < older_than, W.c.state != "queued")
    return old if limit is None else old.limit(limit)


def prune(conn: Connection, older_than: float, limit: int | None = None) -> int:
    """Forget rows of files cleaned or gone before ``older_than`` (at most ``limit`` of them):
    what keeps a watch of millions of files small (docs/watch.md). A prune with nothing to
    forget reads nothing."""
    return int(conn.execute(W.delete().where(sa.literal_column("rowid").in_(prunable(older_than, limit)))).rowcount)
