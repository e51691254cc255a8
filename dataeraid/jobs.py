"""Jobs: their states, the legal transitions, and the one place that changes them.

Every change of state goes through ``Jobs.transition``, which writes the job row
and its ``job.state`` event in one transaction (see ``events.EventBus.commit``).
The states and their transitions are documented in docs/job-states.md.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import sqlalchemy as sa
import trio
from dataerai.contract import (
    JOB_STATES,
    OUTSIDE_WINDOW,
    TERMINAL_JOB_STATES,
    WAITING_JOB_STATES,
    JobErrorObject,
    JobObject,
    JobWaitingObject,
)
from sqlalchemy.engine import Connection

from dataeraid import schema, windows
from dataeraid.errors import DataeraiError
from dataeraid.events import Emit, EventBus
from dataeraid.redact import redact
from dataeraid.store import INTERRUPTIBLE_STATES, JOB_COLUMNS, PRUNE_BATCH, PRUNED_BEFORE_KEY, Row, Store

TERMINAL = TERMINAL_JOB_STATES
#: States in which a job waits for something outside it, with a reason (the job's ``waiting``).
WAITING = WAITING_JOB_STATES

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"running", "scheduled", "paused", "cancelled"}),
    # Outside its transfer window; the scheduler requeues it when the window opens.
    "scheduled": frozenset({"queued", "paused", "cancelled"}),
    "running": frozenset(
        {"completed", "failed", "cancelled", "waiting_for_network", "waiting_for_auth", "queued", "scheduled",
         "paused"}
    ),
    "waiting_for_network": frozenset(
        {"running", "waiting_for_auth", "failed", "cancelled", "queued", "scheduled", "paused"}),
    "waiting_for_auth": frozenset(
        {"running", "waiting_for_network", "failed", "cancelled", "queued", "scheduled", "paused"}),
    "paused": frozenset({"queued", "cancelled"}),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "completed": frozenset(),
}
STATES = JOB_STATES

#: Told of every change of a job's state inside its transaction (``(conn, emit, row, state)``),
#: so that what hangs on the job (a watched file) moves with it atomically; returns a key to
#: pass to its notice, called on the Trio thread once the transaction committed, or None.
EndRecorder = Callable[[Connection, Emit, Row, str], "str | None"]
EndNotice = Callable[[str], None]
assert set(TRANSITIONS) == set(JOB_STATES), "every state of the contract has its transitions"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_wire(row: Row, bytes_done: int, chunks_done: int, retry_at: float | None = None) -> JobObject:
    """The job object of docs/protocol.md, in the contract's shape (``contract.JobObject``). ``retry_at``
    is when a job waiting for the network tries again (Unix time), if it does by itself."""
    error: JobErrorObject | None = None
    if row["error_code"]:
        error = {"code": row["error_code"], "message": redact(row["error_message"] or "")}
    waiting: JobWaitingObject | None = None
    if row["state"] in WAITING:
        # The error that put the job there is its reason to wait (docs/job-states.md).
        waiting = {
            "code": row["error_code"] or ("auth_required" if row["state"] == "waiting_for_auth" else "unavailable"),
            "reason": error["message"] if error else "",
            "retry_at": _iso(retry_at) if row["state"] == "waiting_for_network" else None,
        }
    elif row["state"] == "scheduled":
        waiting = {
            "code": OUTSIDE_WINDOW,
            "reason": f"outside its transfer window ({row.get('window')})",
            "retry_at": _iso(row.get("not_before")),
        }
    total = row["bytes_total"]
    if row["state"] == "completed" and total is not None:
        bytes_done = total
        chunks_done = row["chunk_count"] or chunks_done
    return {
        "job_id": row["job_id"],
        "kind": row["kind"],
        "state": row["state"],
        "priority": row["priority"],
        "client": row.get("client") or None,
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "bytes_done": bytes_done,
        "bytes_total": total,
        "chunk_count": row["chunk_count"],
        "chunks_done": chunks_done,
        "file_name": row["file_name"],
        "local_path": row["local_path"],
        "dest_dir": row["dest_dir"],
        "asset_id": row["asset_id"],
        "content_id": row["content_id"],
        "upload_id": row["remote_session"] if row["kind"] == "upload" else None,
        "sha256": row["sha256"],
        "files": row["files"] or [],
        "deduplicated": bool(row.get("deduplicated")),
        "error": error,
        "waiting": waiting,
        "window": row.get("window"),
    }


def _id_time(job_id: str) -> float | None:
    """When a job id was made (``contract.new_job_id``: its first 12 hex digits are Unix milliseconds)."""
    try:
        return int(job_id[4:16], 16) / 1000
    except ValueError:
        return None


def not_found(conn: Connection, job_id: str) -> DataeraiError:
    """``not_found`` for ``job_id``, saying so when it is as old as the finished jobs pruned already.

    Pruning records the newest ``created_at`` it deleted (``Store.prune_jobs_batch``); an id made
    before that is most likely one of them (ids are time-ordered): one settings read, no tombstones.
    """
    pruned_before = float(Store.read_setting(conn, PRUNED_BEFORE_KEY) or 0)
    made = _id_time(job_id)
    if pruned_before and made is not None and made <= pruned_before:
        return DataeraiError(
            "not_found", f"no job {job_id}: it is older than jobs this daemon has pruned (a finished job is "
            "deleted job_retention_days after a client saw its end), so it most likely ended and was pruned",
            pruned=True)
    return DataeraiError("not_found", f"no job {job_id}")


def acknowledge(conn: Connection, rows: Sequence[Row]) -> None:
    """A client saw these jobs (those of them in a final state) end: pruning may count from now."""
    ended = [r["job_id"] for r in rows if r["state"] in TERMINAL and r.get("acknowledged_at") is None]
    for start in range(0, len(ended), 500):
        conn.execute(schema.jobs.update().where(schema.jobs.c.job_id.in_(ended[start:start + 500]))
                     .values(acknowledged_at=time.time()))


def _fetch_jobs(conn: Connection, job_ids: Sequence[str]) -> dict[str, Row]:
    """The rows of those of ``job_ids`` that exist, by id (a few queries, not one per id)."""
    found: dict[str, Row] = {}
    for start in range(0, len(job_ids), 500):
        query = sa.select(*JOB_COLUMNS).where(schema.jobs.c.job_id.in_(job_ids[start:start + 500]))
        found.update((row["job_id"], dict(row)) for row in conn.execute(query).mappings())
    return found


def _checkpoint_totals(conn: Connection, job_id: str) -> tuple[int, int]:
    table = schema.chunks
    query = sa.select(sa.func.coalesce(sa.func.sum(table.c.size), 0), sa.func.count()).where(table.c.job_id == job_id)
    total, count = conn.execute(query).one()
    return int(total), int(count)


class Jobs:
    """The job table's owner: creation, transitions with their events, reads."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.store: Store = bus.store
        self._queue_changed = trio.Event()
        # Live counters of running jobs, so reads don't wait for checkpoints.
        self.live_progress: dict[str, tuple[int, int]] = {}
        # When each job waiting for the network tries again (Unix time). Kept in memory only:
        # a daemon that starts again requeues its waiting jobs, so the time means nothing then.
        self.retry_at: dict[str, float] = {}
        self._end_listeners: list[tuple[EndRecorder, EndNotice]] = []
        #: The wall clock (Unix time) and the zone that transfer windows are read in; tests replace them.
        self.wall: Callable[[], float] = time.time
        self.zone: dt.tzinfo = windows.local_zone()

    def window_opens(self, window: str | None, at: float | None = None) -> float | None:
        """When a job with ``window`` may next move bytes: None if it may now (or has no window),
        else the Unix time its window opens."""
        if not window:
            return None
        now = self.wall() if at is None else at
        opens = windows.parse(window).next_open(now, self.zone)
        return None if opens <= now else opens

    def window_closes(self, window: str | None) -> float | None:
        """When a running job with ``window`` must stop (Unix time), or None if never."""
        if not window:
            return None
        return windows.parse(window).next_close(self.wall(), self.zone)

    def _entry(self, window: str | None, now: float) -> dict[str, Any]:
        """A job (re)entering the queue at ``now``: ``queued``, or ``scheduled`` until its window opens.
        (``now`` is read on the Trio thread: the wall clock a test gives may be Trio's.)"""
        opens = self.window_opens(window, now)
        return {"state": "queued", "not_before": None} if opens is None else {"state": "scheduled",
                                                                              "not_before": opens}

    def add_end_listener(self, record: EndRecorder, notice: EndNotice) -> None:
        self._end_listeners.append((record, notice))

    # The scheduler sleeps on this; anything that makes a job runnable sets it.
    def queue_changed(self) -> trio.Event:
        return self._queue_changed

    def wake_scheduler(self) -> None:
        self._queue_changed.set()
        self._queue_changed = trio.Event()

    def _wire(self, conn: Connection, row: Row) -> dict[str, Any]:
        live = self.live_progress.get(row["job_id"])
        done, count = live if live is not None else _checkpoint_totals(conn, row["job_id"])
        return dict(to_wire(row, done, count, self.retry_at.get(row["job_id"])))

    async def create(self, row: Row) -> dict[str, Any]:
        """Insert a queued job; returns once it is durably committed.

        A ``job_id`` that exists already (a start repeated after a lost answer)
        returns that job unchanged, whatever its state; ``conflict`` if it is of another kind.
        """
        now = time.time()
        row = {**row, **self._entry(row.get("window"), self.wall()), "created_at": now, "updated_at": now}

        created = True

        def write(conn: Connection, emit: Emit) -> dict[str, Any]:
            nonlocal created
            existing = Store.fetch_job(conn, row["job_id"])
            if existing is not None:
                # The same start sent again (its first answer was lost to a timeout).
                if existing["kind"] != row["kind"]:
                    raise DataeraiError("conflict", f"job {row['job_id']} exists and is an {existing['kind']}")
                created = False
                return self._wire(conn, existing)
            Store.insert_job(conn, row)
            job = self._wire(conn, Store.fetch_job(conn, row["job_id"]) or row)
            emit("job.state", row["job_id"], {"state": row["state"], "previous_state": None, "job": job})
            return job

        job = await self.bus.commit(write)
        if created:
            self.wake_scheduler()
        return job

    async def create_many(self, rows: Sequence[Row], *,
                          also: Callable[[Connection, Emit], None] | None = None) -> list[dict[str, Any]]:
        """Insert many queued jobs, with their events and ``also``, in one durable transaction.

        As in :meth:`create`, a ``job_id`` that exists already answers with that job unchanged;
        one of another kind is ``conflict`` (``data.index`` the row) and nothing is inserted.
        """
        now = time.time()
        wall = self.wall()

        def write(conn: Connection, emit: Emit) -> list[dict[str, Any]]:
            # Set-wise, not a statement per row: building SQLAlchemy statements row by row cost
            # more than SQLite's work (about 1.5 ms a job; docs/benchmarks.md#enqueueing).
            existing = _fetch_jobs(conn, [given["job_id"] for given in rows])
            next_seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema.jobs.c.seq), 0) + 1)).scalar_one()
            new: list[Row] = []
            for offset, given in enumerate(rows):
                found = existing.get(given["job_id"])
                if found is not None:
                    if found["kind"] != given["kind"]:
                        raise DataeraiError("conflict", f"job {given['job_id']} exists and is an {found['kind']}",
                                            index=offset)
                    continue
                new.append({**given, **self._entry(given.get("window"), wall), "created_at": now,
                            "updated_at": now, "seq": next_seq + len(new)})
            # One executemany per shape of row (they all have one shape when one caller made them).
            shapes: dict[tuple[str, ...], list[Row]] = {}
            for row in new:
                shapes.setdefault(tuple(sorted(row)), []).append(row)
            for same in shapes.values():
                conn.execute(schema.jobs.insert(), same)
            inserted = _fetch_jobs(conn, [row["job_id"] for row in new])
            out = []
            for given in rows:
                job_id = given["job_id"]
                if job_id in existing:
                    out.append(self._wire(conn, existing[job_id]))
                    continue
                # A new job has no checkpoints and no live progress yet.
                job = dict(to_wire(inserted[job_id], 0, 0))
                emit("job.state", job_id, {"state": job["state"], "previous_state": None, "job": job})
                out.append(job)
            if also is not None:
                also(conn, emit)
            return out

        jobs = await self.bus.commit(write)
        self.wake_scheduler()
        return jobs

    async def transition(
        self,
        job_id: str,
        to: str,
        *,
        fields: Mapping[str, Any] | None = None,
        only_from: Sequence[str] | None = None,
        retry_at: float | None = None,
        also: Callable[[Connection, Emit], None] | None = None,
    ) -> dict[str, Any]:
        """Move a job to state ``to`` (and set ``fields``) with its event, or raise ``conflict``.

        ``retry_at`` (Unix time) is when a job entering ``waiting_for_network`` tries
        again; the event's job object carries it. ``also`` runs in the same transaction.

        A job with a transfer window that is closed now enters ``scheduled`` when it is sent
        to ``queued`` (a resume, a retry, a requeue), with ``not_before`` its window's opening.
        """
        wall = self.wall()

        def write(conn: Connection, emit: Emit) -> dict[str, Any]:
            row = Store.fetch_job(conn, job_id)
            if row is None:
                raise not_found(conn, job_id)
            current = row["state"]
            allowed = TRANSITIONS[current] if only_from is None or current in only_from else frozenset()
            if to not in allowed:
                raise DataeraiError("conflict", f"job {job_id} is {current}; it cannot become {to}", state=current)
            changes = dict(fields or {})
            changes["state"] = to
            if to == "queued":
                changes.update(self._entry(row.get("window"), wall))
            elif to != "scheduled":
                changes["not_before"] = None
            # Seen ending again before a new end counts (a retried job): pruning waits for that.
            changes["acknowledged_at"] = None
            self._note_retry(job_id, to, retry_at)
            if to in ("queued", "running", "completed"):
                changes.setdefault("error_code", None)
                changes.setdefault("error_message", None)
            Store.update_job(conn, job_id, changes)
            if to == "completed":
                # A completed job needs no checkpoints: the queue stays small over months.
                conn.execute(schema.chunks.delete().where(schema.chunks.c.job_id == job_id))
            new_row = Store.fetch_job(conn, job_id)
            assert new_row is not None
            job = self._wire(conn, new_row)
            emit("job.state", job_id, {"state": changes["state"], "previous_state": current, "job": job})
            for record, notice in self._end_listeners:
                key = record(conn, emit, new_row, to)
                if key is not None:
                    notices.append((notice, key))
                    # The watch that made the job recorded its end: the watch is the client that saw it.
                    acknowledge(conn, [new_row])
            if also is not None:
                also(conn, emit)
            return job

        notices: list[tuple[EndNotice, str]] = []
        job = await self.bus.commit(write)
        for notice, key in notices:
            notice(key)
        if to == "queued":
            self.wake_scheduler()
        return job

    def _note_retry(self, job_id: str, state: str, retry_at: float | None) -> None:
        if state == "waiting_for_network" and retry_at is not None:
            self.retry_at[job_id] = retry_at
        else:
            self.retry_at.pop(job_id, None)

    async def note_waiting(self, job_id: str, fields: Mapping[str, Any], retry_at: float | None) -> dict[str, Any]:
        """A waiting job failed again: record its newer reason (``fields``) and next retry,
        without a change of state (so without a durable event); the job object as it is now.

        ``conflict`` if the job is no longer waiting (cancelled or paused meanwhile).
        """

        def write(conn: Connection) -> dict[str, Any]:
            row = Store.fetch_job(conn, job_id)
            if row is None:
                raise DataeraiError("not_found", f"no job {job_id}")
            if row["state"] not in WAITING:
                raise DataeraiError("conflict", f"job {job_id} is {row['state']}, not waiting", state=row["state"])
            if any(row[key] != value for key, value in fields.items()):
                Store.update_job(conn, job_id, dict(fields))
                row = {**row, **fields}
            self._note_retry(job_id, row["state"], retry_at)
            return self._wire(conn, row)

        return await self.store.transaction(write)

    async def set_priority(self, job_id: str, priority: int) -> dict[str, Any]:
        """Change a job's priority, with a durable ``job.priority`` event.

        Any job that has not ended may change; a running one keeps running (the
        priority orders the queue, it does not preempt). A finished one is ``conflict``.
        """

        def write(conn: Connection, emit: Emit) -> dict[str, Any]:
            row = Store.fetch_job(conn, job_id)
            if row is None:
                raise DataeraiError("not_found", f"no job {job_id}")
            if row["state"] in TERMINAL:
                raise DataeraiError("conflict", f"job {job_id} is {row['state']}; its priority no longer matters",
                                    state=row["state"])
            Store.update_job(conn, job_id, {"priority": priority})
            new_row = Store.fetch_job(conn, job_id)
            assert new_row is not None
            job = self._wire(conn, new_row)
            emit("job.priority", job_id, {"priority": priority, "previous_priority": row["priority"], "job": job})
            return job

        job = await self.bus.commit(write)
        self.wake_scheduler()
        return job

    async def update(self, job_id: str, fields: Mapping[str, Any]) -> None:
        """Record fields that are not a change of state (no event)."""
        await self.store.transaction(lambda conn: Store.update_job(conn, job_id, dict(fields)))

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job; reading it in a final state acknowledges its end (pruning counts from then)."""

        def read(conn: Connection) -> dict[str, Any]:
            row = Store.fetch_job(conn, job_id)
            if row is None:
                raise not_found(conn, job_id)
            acknowledge(conn, [row])
            return self._wire(conn, row)

        return await self.store.transaction(read)

    async def acknowledge(self, job_id: str) -> None:
        """A client saw the job's end (a ``job.state`` event it was sent, ``job.wait``'s answer)."""

        def write(conn: Connection) -> None:
            row = Store.fetch_job(conn, job_id)
            if row is not None:
                acknowledge(conn, [row])

        await self.store.transaction(write)

    async def prune_finished(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Delete finished jobs whose end a client saw before ``older_than``, ``limit`` per transaction
        (``Store.prune_jobs_batch``), never one a subscriber follows now; how many went."""
        pruned = 0
        while True:
            batch = await self.store.transaction(
                partial(Store.prune_jobs_batch, older_than=older_than, keep=self.bus.followed_jobs(), limit=limit))
            pruned += batch
            if batch < limit:
                return pruned

    async def row(self, job_id: str) -> Row:
        row = await self.store.get_job(job_id)
        if row is None:
            raise DataeraiError("not_found", f"no job {job_id}")
        return row

    async def list_all(self, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        def read(conn: Connection) -> list[dict[str, Any]]:
            query = sa.select(*JOB_COLUMNS).order_by(schema.jobs.c.seq)
            if states:
                query = query.where(schema.jobs.c.state.in_(list(states)))
            rows = [dict(r) for r in conn.execute(query).mappings()]
            acknowledge(conn, rows)  # a person or a program read the list: it saw these ends
            return [self._wire(conn, row) for row in rows]

        return await self.store.transaction(read)

    async def requeue_interrupted(self) -> list[str]:
        """After a stop or crash, jobs that were moving bytes go back to the queue."""
        rows = await self.store.list_jobs(INTERRUPTIBLE_STATES)
        for row in rows:
            await self.transition(row["job_id"], "queued")
        return [r["job_id"] for r in rows]

    async def open_windows(self) -> float | None:
        """Requeue the ``scheduled`` jobs whose window opened (a seek on ``ix_jobs_not_before``);
        when the next one opens (Unix time), or None if no job is scheduled."""
        table = schema.jobs
        now = self.wall()
        due_query = (sa.select(table.c.job_id).where(table.c.state == "scheduled", table.c.not_before <= now)
                     .order_by(table.c.not_before).limit(1000))
        due = await self.store.transaction(lambda conn: list(conn.execute(due_query).scalars()))
        for job_id in due:
            try:
                await self.transition(job_id, "queued", only_from=("scheduled",))
            except DataeraiError:
                pass  # paused or cancelled meanwhile
        next_query = sa.select(sa.func.min(table.c.not_before)).where(table.c.not_before.is_not(None),
                                                                      table.c.state == "scheduled")
        return await self.store.transaction(lambda conn: conn.execute(next_query).scalar())

    async def counts(self) -> dict[str, int]:
        query = sa.select(schema.jobs.c.state, sa.func.count()).group_by(schema.jobs.c.state)
        rows = await self.store.transaction(lambda conn: conn.execute(query).all())
        return {state: int(n) for state, n in rows}
