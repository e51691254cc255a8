"""The watch ledger's rules (dataeraid/watch/ledger.py) on the real queue schema.

The exactly-once promise of docs/watch.md rests on these functions, so they are played
against a model: a state machine moves files on a pretend disk, scans and file events
observe them, a judge completes them, the watcher queues them, jobs end every way a job
can, verification and cleaning follow, and after every step the ledger's rows must be
what the rules say, and the promises must hold (one asset per path, a queued row's
version stays the one its job took, ...). Plain tests below pin the sharper edges.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from dataerai import contract
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Connection, Engine

from dataeraid.store import open_queue
from dataeraid.watch import ledger
from dataeraid.watch.ledger import MAX_ATTEMPTS, Observation
from dataeraid.watch.manager import FORGET_AFTER_S

WATCH = "wat_ledger"
OTHER_WATCH = "wat_other"
WINDOW_S = 30.0
RECHECK_S = 5.0
START = 1_700_000_000.0
Version = tuple[int, int, int]


class Clock:
    """Stands in for the ``time`` module inside the ledger: its ``time()`` moves only when told."""

    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now


class Emitted:
    """A recording ``emit``: the ``watch.file`` events the ledger sent, as (path, state, previous)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    def __call__(self, type_: str, job_id: str | None, payload: dict[str, Any]) -> dict[str, Any]:
        self.events.append((type_, job_id, payload))
        return {"type": type_, "job_id": job_id, **payload}  # the event, as the bus's emit answers

    def take(self) -> list[tuple[str, str, str]]:
        taken = []
        for type_, job_id, payload in self.events:
            assert type_ == "watch.file" and job_id is None
            assert payload["watch_id"] == WATCH and payload["file"]["path"] == payload["path"]
            assert payload["file"]["state"] == payload["state"]
            taken.append((payload["path"], payload["state"], payload["previous_state"]))
        self.events.clear()
        return taken


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One migrated queue database for the module (migrations are slow); each test rolls its work back."""
    engine = open_queue(tmp_path_factory.mktemp("ledger") / "queue.sqlite3")
    yield engine
    engine.dispose()


@contextlib.contextmanager
def fresh_connection(engine: Engine) -> Iterator[Connection]:
    """A connection to an empty ledger of two watches, inside one transaction that is rolled back at the
    end: each test (and each example) starts from nothing, and nothing waits for the disk."""
    with engine.connect() as conn, conn.begin() as transaction:
        for watch_id in (WATCH, OTHER_WATCH):
            conn.execute(ledger.WATCHES.insert().values(
                watch_id=watch_id, root=f"/data/{watch_id}", params={}, created_at=START, updated_at=START))
        yield conn
        transaction.rollback()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ledger, "time", fake)
    return fake


@pytest.fixture
def conn(queue: Engine, clock: Clock) -> Iterator[Connection]:
    with fresh_connection(queue) as connection:
        yield connection


def rows_of(conn: Connection, watch_id: str = WATCH) -> dict[str, dict[str, Any]]:
    query = sa.select(ledger.W).where(ledger.W.c.watch_id == watch_id)
    return {r["rel"]: dict(r) for r in conn.execute(query).mappings()}


def version_of(row: dict[str, Any]) -> Version | None:
    return None if row["size"] is None else (row["size"], row["mtime_ns"], row["inode"])


# --- the model ---------------------------------------------------------------------------------

PATHS = ("a.tif", "run1/b.tif", "run1/c.dat")
PENDING = contract.PENDING_WATCH_FILE_STATES
RECORDED = ("uploaded", "verified", "cleaned")
# Forgotten when their file goes, unless an earlier version of it reached the repository (an asset).
FORGOTTEN_WHEN_GONE = ("seen", "complete", "quarantined", "ignored")
MOVED_ON = ("source_changed", "not_found")  # job errors that mean the file changed or went: not a failure
JOB_ENDS = (("completed", None), ("cancelled", "cancelled"), ("failed", "source_changed"), ("failed", "not_found"),
            ("failed", "permission_denied"), ("failed", "io_error"))


@dataclass(frozen=True)
class OnDisk:
    size: int
    mtime_ns: int
    inode: int
    symlink: bool = False

    def version(self) -> Version:
        return (self.size, self.mtime_ns, self.inode)


@dataclass
class Expected:
    """What the ledger's row for one path must hold."""

    state: str
    version: Version | None
    seen_at: float
    retry_at: float | None
    asset_id: str | None = None
    content_id: str | None = None
    sha256: str | None = None
    job_id: str | None = None
    attempts: int = 0
    error_code: str | None = None
    gone_at: float | None = None


@dataclass
class Job:
    job_id: str
    rel: str
    version: Version
    asset_id: str | None  # what the job was created with: its upload is a new content of this asset
    ended: bool = False


@dataclass
class Repository:
    """The assets uploads made for each path since the ledger last forgot the path."""

    assets: dict[str, set[str]] = field(default_factory=lambda: {rel: set() for rel in PATHS})


STAGES = ("absent", "on_disk", "seen", "complete", "queued", "uploaded", "verified", "cleaned")


class LedgerMachine(RuleBasedStateMachine):
    """The world, the watcher and the jobs, played against the ledger and a model of its rows.

    The methods do one thing each to the ledger and to the model (``self.model``); the
    rules choose what and when. Time is the fake ``Clock`` the ledger reads too.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        super().__init__()
        self.connection = fresh_connection(engine)
        self.conn = self.connection.__enter__()
        self.clock = clock
        clock.now = START
        self.emitted = Emitted()
        self.expected_events: list[tuple[str, str, str]] = []
        self.disk: dict[str, OnDisk] = {}
        self.moved_away: dict[str, OnDisk] = {}
        self.model: dict[str, Expected] = {}
        self.jobs: dict[str, Job] = {}
        self.repository = Repository()
        self.scan_gen = 0
        self.counter = itertools.count(1)
        self.observed_since_cleaned: set[str] = set()
        # Another watch with files of the same names, which nothing done to this one may touch.
        for rel, state in zip(PATHS, ("seen", "quarantined", "complete"), strict=True):
            insert(self.conn, rel, state, watch_id=OTHER_WATCH)
        insert(self.conn, "gone.tif", "verified", asset=True, gone_at=START, watch_id=OTHER_WATCH)
        self.other_watch = rows_of(self.conn, OTHER_WATCH)

    def teardown(self) -> None:
        assert rows_of(self.conn, OTHER_WATCH) == self.other_watch  # pruning aside, no other watch's files
        self.connection.__exit__(None, None, None)

    @property
    def now(self) -> float:
        return self.clock.now

    def in_state(self, *states: str) -> list[str]:
        return sorted(rel for rel, row in self.model.items() if row.state in states)

    def due_in_model(self, state: str) -> list[tuple[float, float, float]]:
        """The ``(retry_at, seen_at)`` keys of the rows due in ``state``, in the order ``due`` gives them
        (SQLite puts a NULL ``retry_at``, due at once, first)."""
        keys = [(0.0 if r.retry_at is None else 1.0, r.retry_at or 0.0, r.seen_at)
                for r in self.model.values() if r.state == state and (r.retry_at is None or r.retry_at <= self.now)]
        return sorted(keys)

    def due(self, state: str, limit: int) -> list[dict[str, Any]]:
        rows = ledger.due(self.conn, WATCH, state, self.now, limit)
        keys = [(0.0 if r["retry_at"] is None else 1.0, r["retry_at"] or 0.0, r["seen_at"]) for r in rows]
        assert keys == self.due_in_model(state)[:limit]
        assert all(r["state"] == state and r["watch_id"] == WATCH for r in rows)
        return rows

    # --- the model's side of the rules ---------------------------------------------------------

    def forget(self, rel: str) -> None:
        del self.model[rel]
        self.repository.assets[rel] = set()

    def quarantined(self, rel: str, code: str) -> None:
        row = self.model[rel]
        if row.state == "quarantined":
            return
        self.expected_events.append((rel, "quarantined", row.state))
        row.state, row.error_code, row.retry_at = "quarantined", code, None

    def observed(self, rel: str, version: Version) -> bool:
        """``observe`` of one path; whether its row is ``seen`` with exactly ``version`` now."""
        self.observed_since_cleaned.add(rel)
        row = self.model.get(rel)
        if row is None:
            self.model[rel] = Expected("seen", version, seen_at=self.now, retry_at=self.now + WINDOW_S)
            return True
        if row.state != "queued" and (row.version != version or row.state == "ignored"):
            # A new version (or an ignored entry that is a regular file now): seen from scratch, same asset.
            self.model[rel] = Expected(
                "seen", version, seen_at=row.seen_at if row.state in PENDING else self.now,
                retry_at=self.now + WINDOW_S, asset_id=row.asset_id)
            return True
        # There as it was, or a job has it (whose end decides): a file found on disk is not gone.
        row.gone_at = None
        return row.state == "seen"

    def went_with_asset(self, row: Expected) -> None:
        """A newer version of an upload went before its own upload: the path keeps its asset."""
        row.state, row.error_code, row.version, row.retry_at, row.job_id, row.gone_at = \
            "ignored", "gone", None, None, None, self.now

    def went(self, rels: set[str]) -> None:
        """``gone``: what never reached the repository is forgotten, an upload's record is marked."""
        for rel in sorted(rels & set(self.model)):
            row = self.model[rel]
            if row.state in FORGOTTEN_WHEN_GONE and row.asset_id is not None:
                if row.gone_at is None:
                    self.went_with_asset(row)
            elif row.state in FORGOTTEN_WHEN_GONE:
                self.forget(rel)
            elif row.state in RECORDED and row.gone_at is None:
                row.gone_at = self.now

    # --- steps --------------------------------------------------------------------------------

    def change_disk(self, rel: str, change: str, size: int) -> None:
        old = self.disk.get(rel)
        mtime_ns = int(self.now * 1e9) + next(self.counter)
        if change == "delete":
            self.disk.pop(rel, None)
        elif change == "symlink":
            self.disk[rel] = OnDisk(0, 0, 0, symlink=True)
        elif old is None or old.symlink or change == "rename_over":
            self.disk[rel] = OnDisk(size, mtime_ns, 10_000 + next(self.counter))
        else:
            self.disk[rel] = OnDisk(size, mtime_ns, old.inode)

    def event(self, rel: str, closed: bool) -> None:
        """The watcher's news of one path: stat it, then observe it or mark it gone."""
        on_disk = self.disk.get(rel)
        if on_disk is not None and on_disk.symlink:
            return  # news leaves what is not a regular file to the next scan
        if on_disk is None:
            ledger.gone(self.conn, WATCH, [rel], self.now)
            self.went({rel})
            return
        obs = Observation(rel, on_disk.size, on_disk.mtime_ns, on_disk.inode, closed=closed)
        closed_seen = ledger.observe(self.conn, WATCH, [obs], WINDOW_S, self.now)
        seen_now = self.observed(rel, on_disk.version())
        assert closed_seen == ([rel] if closed and seen_now else [])

    def scan(self) -> None:
        """A full scan: every regular file observed, every symlink ignored, then what it did not find is gone."""
        self.scan_gen += 1
        gen = self.scan_gen
        files = [Observation(rel, d.size, d.mtime_ns, d.inode) for rel, d in sorted(self.disk.items())
                 if not d.symlink]
        links = [(rel, "symlink", "a symbolic link") for rel, d in sorted(self.disk.items()) if d.symlink]
        assert ledger.observe(self.conn, WATCH, files, WINDOW_S, self.now, gen) == []
        ledger.ignore(self.conn, WATCH, links, self.now, gen)
        ledger.gone(self.conn, WATCH, None, self.now, before_gen=gen)
        for obs in files:
            self.observed(obs.rel, obs.version())
        for rel, reason, _ in links:
            row = self.model.get(rel)
            if row is None:
                self.model[rel] = Expected("ignored", None, seen_at=self.now, retry_at=None, error_code=reason)
            elif row.state != "queued":
                row.gone_at = None
                if row.state != "ignored" or row.error_code != reason:
                    # What it was uploaded as is kept (asset, content), the version is not a file's.
                    row.state, row.error_code, row.version, row.retry_at, row.job_id = \
                        "ignored", reason, None, None, None
        self.went({rel for rel in self.model if rel not in self.disk})

    def judge(self, rel: str, complete: bool) -> None:
        """A completion check: stat the path now, and settle its row (only a ``seen`` one moves)."""
        on_disk = self.disk.get(rel)
        version = on_disk.version() if on_disk is not None and not on_disk.symlink else None
        got = ledger.judge(self.conn, WATCH, rel, self.now, version=version, complete=complete,
                           recheck_at=self.now + RECHECK_S)
        row = self.model.get(rel)
        if row is None or row.state != "seen":
            assert got == (row.state if row else "gone")
        elif version is None:
            if row.asset_id is not None:
                self.went_with_asset(row)
            else:
                self.forget(rel)
            assert got == "gone"
        elif version != row.version:
            row.version, row.retry_at, row.attempts = version, self.now + RECHECK_S, 0
            assert got == "seen"
        elif complete:
            row.state, row.retry_at = "complete", None
            assert got == "complete"
        else:
            row.retry_at = self.now + RECHECK_S
            assert got == "seen"

    def enqueue(self, limit: int, refuse_first: bool) -> None:
        """Complete files that are due become upload jobs (``mark_queued`` runs in the transaction that
        creates them); a file whose job cannot be made (its template refuses it) is quarantined."""
        rows = self.due("complete", limit)
        if rows and refuse_first:
            first = rows.pop(0)["rel"]
            ledger.quarantine(self.conn, self.emitted, WATCH, first, "template_mismatch", "no title")
            self.quarantined(first, "template_mismatch")
        taken = [(r["rel"], f"job_{next(self.counter)}") for r in rows]
        ledger.mark_queued(self.conn, WATCH, taken)
        for rel, job_id in taken:
            row = self.model[rel]
            assert row.version is not None
            self.jobs[job_id] = Job(job_id, rel, row.version, row.asset_id)
            row.state, row.job_id, row.retry_at, row.error_code = "queued", job_id, None, None

    def end_job(self, job: Job, state: str, code: str | None) -> None:
        """The job's end, as ``Jobs.transition`` hands it to the ledger inside the job's transaction."""
        job.ended = True
        asset_id = job.asset_id or f"ast_{next(self.counter)}"  # the repository makes an asset only if none given
        content_id, sha256 = f"cnt_{next(self.counter)}", f"{next(self.counter):064x}"
        done = state == "completed"
        job_row = {"job_id": job.job_id, "asset_id": asset_id if done else None,
                   "content_id": content_id if done else None, "sha256": sha256 if done else None,
                   "error_code": code, "error_message": f"{code} happened" if code else None}
        assert ledger.record_job_end(self.conn, self.emitted, job_row, state, {WATCH: WINDOW_S}) == WATCH
        row = self.model[job.rel]
        assert row.state == "queued" and row.job_id == job.job_id
        if done:
            self.repository.assets[job.rel].add(asset_id)
            row.state, row.asset_id, row.content_id, row.sha256 = "uploaded", asset_id, content_id, sha256
            row.error_code, row.retry_at = None, None
        elif state == "cancelled":
            self.quarantined(job.rel, "cancelled")
        elif code in MOVED_ON:
            row.state, row.job_id, row.retry_at, row.error_code = "seen", None, self.now + WINDOW_S, code
        else:
            row.attempts += 1
            if row.attempts >= MAX_ATTEMPTS:
                self.quarantined(job.rel, code or "internal")
            else:
                row.state, row.error_code = "complete", code
                row.retry_at = self.now + ledger.BACKOFF_S[row.attempts - 1]

    def verify(self, rel: str, outcome: str) -> None:
        """The repository is asked for an uploaded row's content: confirmed, mismatched, or unreachable."""
        row = self.model[rel]
        if outcome in ("verified", "verified_keep"):
            keep = outcome == "verified_keep"
            ledger.verified(self.conn, self.emitted, WATCH, rel, keep=keep)
            self.expected_events.append((rel, "verified", "uploaded"))
            row.state, row.error_code, row.retry_at = "verified", None, None if keep else self.now
        elif outcome == "checksum_mismatch":
            ledger.quarantine(self.conn, self.emitted, WATCH, rel, outcome, "not the bytes sent")
            self.quarantined(rel, outcome)
        else:
            ledger.clean_failed(self.conn, WATCH, rel, outcome, "try later", self.now + 60)
            row.error_code, row.retry_at = outcome, self.now + 60

    def clean(self, rel: str, outcome: str) -> None:
        """A verified file is moved or deleted, only if it is still the version uploaded."""
        row = self.model[rel]
        on_disk = self.disk.get(rel)
        if on_disk is None or on_disk.symlink or on_disk.version() != row.version:
            ledger.clean_failed(self.conn, WATCH, rel, "source_changed", "changed since its upload", None)
            row.error_code, row.retry_at = "source_changed", None
        elif outcome == "move_failed":
            ledger.clean_failed(self.conn, WATCH, rel, outcome, "the target exists", self.now + 60)
            row.error_code, row.retry_at = outcome, self.now + 60
        else:
            del self.disk[rel]
            if outcome == "move":
                self.moved_away[rel] = on_disk
            ledger.cleaned(self.conn, self.emitted, WATCH, rel)
            self.expected_events.append((rel, "cleaned", "verified"))
            self.observed_since_cleaned.discard(rel)
            row.state, row.error_code, row.retry_at, row.gone_at = "cleaned", None, None, self.now

    # --- rules --------------------------------------------------------------------------------

    @initialize(stages=st.tuples(*(st.sampled_from(STAGES) for _ in PATHS)), keep=st.booleans(),
                worn=st.sampled_from([None, *PATHS]))
    def start_with(self, stages: tuple[str, ...], keep: bool, worn: str | None) -> None:
        """Each path brought some way along (so that examples start deep): on disk, seen, ..., cleaned;
        and perhaps one (``worn``) whose uploads failed all but once of the attempts it has."""
        at = dict(zip(PATHS, (STAGES.index(stage) for stage in stages), strict=True))
        if worn is not None:
            at[worn] = STAGES.index("complete")
            self.change_disk(worn, "write", 1)
            self.event(worn, closed=True)
            self.judge(worn, complete=True)
            for attempt in range(1, MAX_ATTEMPTS):
                self.enqueue(1, refuse_first=False)
                self.end_job(self.jobs[self.model[worn].job_id or ""], "failed", "io_error")
                self.clock.now += ledger.backoff(attempt)
            assert self.model[worn].attempts == MAX_ATTEMPTS - 1

        def reached(stage: str) -> list[str]:
            return [rel for rel in PATHS if at[rel] >= STAGES.index(stage) and rel != worn]

        for rel in reached("on_disk"):
            self.change_disk(rel, "write", 1)
        for rel in reached("seen"):
            self.event(rel, closed=False)
        for rel in reached("queued"):
            self.judge(rel, complete=True)
        self.enqueue(len(PATHS), refuse_first=False)
        for job in list(self.jobs.values()):
            if at[job.rel] >= STAGES.index("uploaded") and not job.ended:
                self.end_job(job, "completed", None)
        for rel in reached("verified"):
            self.verify(rel, "verified_keep" if keep else "verified")
        for rel in reached("cleaned"):
            self.clean(rel, "move")
        for rel in reached("complete"):
            self.judge(rel, complete=True)

    @rule(rel=st.sampled_from(PATHS), change=st.sampled_from(["write", "rename_over", "delete", "symlink"]),
          size=st.integers(0, 3))
    def disk_changes(self, rel: str, change: str, size: int) -> None:
        """A file appears or is rewritten (in place, or written aside and renamed over), is deleted,
        or becomes a symbolic link."""
        self.change_disk(rel, change, size)

    @precondition(lambda self: any(rel not in self.disk for rel in self.moved_away))
    @rule(data=st.data())
    def move_back(self, data: st.DataObject) -> None:
        """Someone moves a cleaned file back where it was: the very version that was uploaded."""
        rel = data.draw(st.sampled_from(sorted(rel for rel in self.moved_away if rel not in self.disk)))
        self.disk[rel] = self.moved_away.pop(rel)

    @rule(seconds=st.sampled_from([1.0, 30.0, 600.0, 1800.0, FORGET_AFTER_S + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(rel=st.sampled_from(PATHS), closed=st.booleans())
    def file_event(self, rel: str, closed: bool) -> None:
        self.event(rel, closed)

    @rule()
    def full_scan(self) -> None:
        self.scan()

    @precondition(lambda self: self.in_state("seen"))
    @rule(data=st.data(), complete=st.booleans())
    def judge_seen(self, data: st.DataObject, complete: bool) -> None:
        self.judge(data.draw(st.sampled_from(self.in_state("seen"))), complete)

    @rule(rel=st.sampled_from(PATHS))
    def judge_any(self, rel: str) -> None:
        """The judge of a row that is not ``seen`` (or of no row) leaves it alone."""
        self.judge(rel, complete=True)

    @precondition(lambda self: self.due_in_model("complete"))
    @rule(limit=st.integers(1, 3), refuse_first=st.booleans())
    def queue_complete(self, limit: int, refuse_first: bool) -> None:
        self.enqueue(limit, refuse_first)

    @precondition(lambda self: any(not job.ended for job in self.jobs.values()))
    @rule(data=st.data(), end=st.sampled_from(JOB_ENDS))
    def job_ends(self, data: st.DataObject, end: tuple[str, str | None]) -> None:
        job_id = data.draw(st.sampled_from(sorted(j for j, job in self.jobs.items() if not job.ended)))
        self.end_job(self.jobs[job_id], *end)

    @precondition(lambda self: any(job.ended for job in self.jobs.values()))
    @rule(data=st.data(), end=st.sampled_from(JOB_ENDS))
    def stale_job_end(self, data: st.DataObject, end: tuple[str, str | None]) -> None:
        """The end of a job no row is queued with (ended already, or not the watch's) changes nothing.
        (A quarantined row, or a complete one waiting out its job's failure, takes the end of that job
        retried by hand: tests below.)"""
        quarantined_with = {row.job_id for row in self.model.values() if row.state in ("quarantined", "complete")}
        job_id = data.draw(st.sampled_from(["job_unknown", *sorted(
            j for j, job in self.jobs.items() if job.ended and j not in quarantined_with)]))
        before = rows_of(self.conn)
        job_row = {"job_id": job_id, "asset_id": "ast_stale", "content_id": "cnt_stale", "sha256": "0" * 64,
                   "error_code": end[1], "error_message": "stale"}
        assert ledger.record_job_end(self.conn, self.emitted, job_row, end[0], {WATCH: WINDOW_S}) is None
        assert rows_of(self.conn) == before

    @precondition(lambda self: self.due_in_model("uploaded"))
    @rule(outcome=st.sampled_from(["verified", "verified_keep", "checksum_mismatch", "unavailable"]))
    def verify_first_due(self, outcome: str) -> None:
        self.verify(self.due("uploaded", 10)[0]["rel"], outcome)

    @precondition(lambda self: self.due_in_model("verified"))
    @rule(outcome=st.sampled_from(["move", "delete", "move_failed"]))
    def clean_first_due(self, outcome: str) -> None:
        self.clean(self.due("verified", 10)[0]["rel"], outcome)

    @precondition(lambda self: self.in_state("quarantined"))
    @rule()
    def rescan_retries_quarantined(self) -> None:
        retried = ledger.retry_quarantined(self.conn, WATCH)
        assert retried == len(self.in_state("quarantined"))
        for row in self.model.values():
            if row.state == "quarantined":
                row.state, row.attempts, row.retry_at, row.job_id = "seen", 0, self.now, None

    @rule()
    def prune(self) -> None:
        older_than = self.now - FORGET_AFTER_S
        old = [rel for rel, row in self.model.items()
               if row.state != "queued" and row.gone_at is not None and row.gone_at < older_than]
        # Pruning is for every watch at once.
        old_elsewhere = [rel for rel, row in self.other_watch.items()
                         if row["state"] in RECORDED and row["gone_at"] is not None and row["gone_at"] < older_than]
        assert ledger.prune(self.conn, older_than) == len(old) + len(old_elsewhere)
        for rel in old:
            self.forget(rel)
        for rel in old_elsewhere:
            del self.other_watch[rel]

    # --- what must hold after every step ---------------------------------------------------------

    @invariant()
    def ledger_keeps_its_rules(self) -> None:
        rows = rows_of(self.conn)
        # Every row is what the rules made it.
        assert set(rows) == set(self.model)
        for rel, row in rows.items():
            got = Expected(row["state"], version_of(row), row["seen_at"], row["retry_at"], row["asset_id"],
                           row["content_id"], row["sha256"], row["job_id"], row["attempts"], row["error_code"],
                           row["gone_at"])
            assert got == self.model[rel], rel
        # And the promises hold, whatever the model says.
        live = {job.job_id: job for job in self.jobs.values() if not job.ended}
        for rel, row in rows.items():
            # Queued exactly while its job runs, with the version that job took.
            assert (row["state"] == "queued") == (row["job_id"] in live), rel
            if row["state"] == "queued":
                assert live[row["job_id"]].rel == rel and live[row["job_id"]].version == version_of(row)
            if row["state"] in RECORDED:
                assert row["asset_id"] and row["content_id"] and row["sha256"], rel
            if row["state"] == "cleaned" and rel not in self.observed_since_cleaned:
                assert row["gone_at"] is not None, rel
            # One asset per path, for as long as the ledger remembers the path.
            assert len(self.repository.assets[rel]) <= 1, rel
            if row["asset_id"] is not None:
                assert self.repository.assets[rel] == {row["asset_id"]}, rel
        assert sorted(job.rel for job in live.values()) == self.in_state("queued")
        # The events: one watch.file for each entry to quarantined, verified and cleaned, none else.
        assert self.emitted.take() == self.expected_events
        self.expected_events.clear()

    @invariant()
    def summaries_agree(self) -> None:
        counts = ledger.counts(self.conn, WATCH)
        # The counts the triggers keep are a full count of the rows, for this watch and the other.
        assert counts == ledger.count_rows(self.conn, WATCH)
        assert ledger.counts(self.conn, OTHER_WATCH) == ledger.count_rows(self.conn, OTHER_WATCH)
        assert sum(counts.values()) == len(self.model)
        assert counts == {s: len(self.in_state(s)) for s in contract.WATCH_FILE_STATES}
        oldest = ledger.oldest_pending(self.conn, WATCH)
        pending = [row.seen_at for row in self.model.values() if row.state in PENDING]
        if pending:
            assert oldest is not None and oldest[1] == min(pending)
            assert self.model[oldest[0]].seen_at == min(pending) and self.model[oldest[0]].state in PENDING
        else:
            assert oldest is None
        known = [row for row in self.model.values()
                 if row.state in ("seen", "complete", "queued", "uploaded", "verified") and row.gone_at is None]
        assert ledger.known_here(self.conn, WATCH) == len(known)
        states = ("seen", "complete", "uploaded", "verified")
        wakes = [row.retry_at for row in self.model.values() if row.state in states and row.retry_at is not None]
        assert ledger.next_due(self.conn, WATCH, states) == (min(wakes) if wakes else None)


def test_the_ledger_keeps_its_rules_whatever_happens(queue: Engine, clock: Clock) -> None:
    # Hypothesis takes any factory of machines; its annotation names only the class.
    run_state_machine_as_test(lambda: LedgerMachine(queue, clock),  # type: ignore[arg-type]
                              settings=settings(max_examples=100, stateful_step_count=40))


# --- the sharper edges -------------------------------------------------------------------------


def observe(conn: Connection, rel: str, version: Version, clock: Clock, *, closed: bool = False,
            scan_gen: int | None = None) -> list[str]:
    return ledger.observe(conn, WATCH, [Observation(rel, *version, closed=closed)], WINDOW_S, clock.now, scan_gen)


def take(conn: Connection, rel: str, job_id: str) -> None:
    """A complete row judged and queued, as the watcher does it."""
    row = rows_of(conn)[rel]
    assert ledger.judge(conn, WATCH, rel, 0.0, version=version_of(row), complete=True, recheck_at=0.0) in (
        "complete", row["state"])
    ledger.mark_queued(conn, WATCH, [(rel, job_id)])


def end(conn: Connection, emit: Emitted, job_id: str, state: str, code: str | None = None,
        asset_id: str | None = None) -> str | None:
    done = state == "completed"
    job = {"job_id": job_id, "asset_id": asset_id or ("ast_1" if done else None),
           "content_id": f"cnt_{job_id}" if done else None, "sha256": "ab" * 32 if done else None,
           "error_code": code, "error_message": f"{code}: it happened" if code else None}
    return ledger.record_job_end(conn, emit, job, state, {WATCH: WINDOW_S})


def uploaded(conn: Connection, clock: Clock, rel: str = "a.tif", version: Version = (1, 1, 1),
             job_id: str = "job_1") -> dict[str, Any]:
    observe(conn, rel, version, clock)
    take(conn, rel, job_id)
    assert end(conn, Emitted(), job_id, "completed") == WATCH
    return rows_of(conn)[rel]


def verified(conn: Connection, clock: Clock, rel: str = "a.tif", version: Version = (1, 1, 1),
             job_id: str = "job_1") -> dict[str, Any]:
    uploaded(conn, clock, rel, version, job_id)
    ledger.verified(conn, Emitted(), WATCH, rel, keep=True)
    return rows_of(conn)[rel]


def insert(conn: Connection, rel: str, state: str, *, retry_at: float | None = None, seen_at: float = START,
           asset: bool = False, gone_at: float | None = None, scan_gen: int = 0, watch_id: str = WATCH) -> None:
    conn.execute(ledger.W.insert().values(
        watch_id=watch_id, rel=rel, state=state, size=1, mtime_ns=1, inode=1, retry_at=retry_at,
        seen_at=seen_at, updated_at=seen_at, gone_at=gone_at, scan_gen=scan_gen,
        asset_id="ast_x" if asset else None, content_id="cnt_x" if asset else None,
        sha256="cd" * 32 if asset else None, job_id="job_x" if state == "queued" else None))


def test_a_new_version_of_a_verified_file_is_seen_again_as_a_new_content_of_its_asset(
        conn: Connection, clock: Clock) -> None:
    before = verified(conn, clock)
    assert (before["state"], before["asset_id"], before["content_id"]) == ("verified", "ast_1", "cnt_job_1")
    clock.now += 100
    assert observe(conn, "a.tif", (2, 2, 1), clock, closed=True) == ["a.tif"]
    row = rows_of(conn)["a.tif"]
    assert row["state"] == "seen" and version_of(row) == (2, 2, 1)
    assert row["asset_id"] == "ast_1"  # the next upload is a new content of the same asset
    assert (row["content_id"], row["sha256"], row["job_id"], row["attempts"]) == (None, None, None, 0)
    assert row["seen_at"] == clock.now  # pending again from now: the lag counts from here
    assert row["retry_at"] == clock.now + WINDOW_S


def test_an_ignored_entry_that_became_a_regular_file_is_seen(conn: Connection, clock: Clock) -> None:
    ledger.ignore(conn, WATCH, [("link.tif", "symlink", "a symbolic link")], clock.now)
    assert rows_of(conn)["link.tif"]["state"] == "ignored"
    clock.now += 5
    assert observe(conn, "link.tif", (3, 3, 3), clock, closed=True) == ["link.tif"]
    row = rows_of(conn)["link.tif"]
    assert (row["state"], version_of(row), row["error_code"], row["kind"]) == ("seen", (3, 3, 3), None, "file")
    assert row["seen_at"] == clock.now


def test_a_source_that_changed_under_its_upload_is_seen_again_without_counting_an_attempt(
        conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    emit = Emitted()
    assert end(conn, emit, "job_1", "failed", "io_error") == WATCH
    clock.now += ledger.backoff(1)
    take(conn, "a.tif", "job_2")
    for n, code in enumerate(MOVED_ON):
        job_id = f"job_{n + 2}"
        assert end(conn, emit, job_id, "failed", code) == WATCH
        row = rows_of(conn)["a.tif"]
        assert (row["state"], row["job_id"], row["error_code"]) == ("seen", None, code)
        assert row["attempts"] == 1  # the io_error counted; the file moving on does not
        assert row["retry_at"] == clock.now + WINDOW_S and row["stable_since"] == clock.now
        take(conn, "a.tif", f"job_{n + 3}")
    assert emit.take() == []


def test_a_cancelled_upload_quarantines_its_file(conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    emit = Emitted()
    assert end(conn, emit, "job_1", "cancelled", "cancelled") == WATCH
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["error_code"], row["attempts"]) == ("quarantined", "cancelled", 0)
    assert "job_1" in row["error_message"] and "rescan" in row["error_message"]
    assert emit.take() == [("a.tif", "quarantined", "queued")]
    # A rescan tries it again: seen, its failures forgotten.
    clock.now += 10
    assert ledger.retry_quarantined(conn, WATCH) == 1
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["attempts"], row["job_id"], row["retry_at"]) == ("seen", 0, None, clock.now)


def test_failed_uploads_wait_longer_each_time_then_the_file_is_quarantined(conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    emit = Emitted()
    for attempt in range(1, MAX_ATTEMPTS):
        take(conn, "a.tif", f"job_{attempt}")
        assert end(conn, emit, f"job_{attempt}", "failed", "permission_denied") == WATCH
        row = rows_of(conn)["a.tif"]
        assert (row["state"], row["attempts"], row["error_code"]) == ("complete", attempt, "permission_denied")
        assert row["retry_at"] == clock.now + ledger.BACKOFF_S[attempt - 1]
        # Not due before its time, due at it.
        assert ledger.due(conn, WATCH, "complete", row["retry_at"] - 1, 10) == []
        clock.now = row["retry_at"]
        assert [r["rel"] for r in ledger.due(conn, WATCH, "complete", clock.now, 10)] == ["a.tif"]
    assert ledger.BACKOFF_S == (30.0, 120.0, 600.0, 1800.0)  # docs/watch.md: 30 s, 2 min, 10 min, 30 min
    take(conn, "a.tif", "job_last")
    assert emit.take() == []
    assert end(conn, emit, "job_last", "failed", "permission_denied") == WATCH
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["attempts"], row["error_code"]) == ("quarantined", MAX_ATTEMPTS, "permission_denied")
    assert row["error_message"].startswith(f"{MAX_ATTEMPTS} uploads failed")
    assert emit.take() == [("a.tif", "quarantined", "queued")]


def test_a_job_end_the_ledger_has_no_row_for_changes_nothing(conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    emit = Emitted()
    assert end(conn, emit, "job_1", "failed", "io_error") == WATCH
    take(conn, "a.tif", "job_2")  # its backoff over, the file went again: job_1 is no longer its job
    before = rows_of(conn)
    for job_id, state, code in [("job_1", "completed", None), ("job_1", "failed", "io_error"),
                                ("job_1", "cancelled", "cancelled"), ("job_elsewhere", "completed", None)]:
        assert end(conn, emit, job_id, state, code) is None
    assert rows_of(conn) == before and emit.take() == []


def test_a_quarantined_file_takes_the_end_of_its_job_retried_by_hand(conn: Connection, clock: Clock) -> None:
    """``dataerai job retry`` of a watch's cancelled job: when it completes, the file is uploaded."""
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    assert end(conn, Emitted(), "job_1", "cancelled", "cancelled") == WATCH
    assert end(conn, Emitted(), "job_1", "completed") == WATCH
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["asset_id"], row["content_id"], row["error_code"]) == (
        "uploaded", "ast_1", "cnt_job_1", None)


def test_a_retried_job_that_completes_while_its_file_waits_out_a_backoff_is_recorded(
        conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    assert end(conn, Emitted(), "job_1", "failed", "io_error") == WATCH
    assert rows_of(conn)["a.tif"]["state"] == "complete"
    # By hand: `dataerai job retry job_1`, and this time it completes.
    assert end(conn, Emitted(), "job_1", "completed") == WATCH
    assert rows_of(conn)["a.tif"]["state"] == "uploaded"


@pytest.mark.parametrize("how", ["gone", "judge", "ignored_then_gone"])
def test_a_changed_upload_that_vanishes_before_its_next_upload_keeps_its_asset(
        conn: Connection, clock: Clock, how: str) -> None:
    verified(conn, clock)
    if how == "ignored_then_gone":
        ledger.ignore(conn, WATCH, [("a.tif", "symlink", "a symbolic link")], clock.now)
    else:
        observe(conn, "a.tif", (2, 2, 1), clock)  # modified: seen again, the same asset
    assert rows_of(conn)["a.tif"]["asset_id"] == "ast_1"
    if how == "judge":
        assert ledger.judge(conn, WATCH, "a.tif", clock.now, version=None, complete=True, recheck_at=0.0) == "gone"
    else:
        ledger.gone(conn, WATCH, ["a.tif"], clock.now)
    observe(conn, "a.tif", (3, 3, 9), clock)  # back, before any pruning
    assert rows_of(conn)["a.tif"]["asset_id"] == "ast_1"


def test_a_queued_file_keeps_the_version_its_job_took(conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    take(conn, "a.tif", "job_1")
    before = rows_of(conn)["a.tif"]
    observe(conn, "a.tif", (2, 2, 2), clock, closed=True)
    ledger.ignore(conn, WATCH, [("a.tif", "symlink", "now a link")], clock.now)
    ledger.gone(conn, WATCH, ["a.tif"], clock.now)
    assert ledger.judge(conn, WATCH, "a.tif", clock.now, version=None, complete=True, recheck_at=0.0) == "queued"
    assert rows_of(conn)["a.tif"] == before
    # Its job's end decides; a later look finds the new version.
    assert end(conn, Emitted(), "job_1", "completed") == WATCH
    observe(conn, "a.tif", (2, 2, 2), clock)
    row = rows_of(conn)["a.tif"]
    assert (row["state"], version_of(row), row["asset_id"]) == ("seen", (2, 2, 2), "ast_1")


def test_gone_forgets_what_never_reached_the_repository_and_marks_what_did(conn: Connection, clock: Clock) -> None:
    states = {"seen": "s", "complete": "c", "quarantined": "q", "ignored": "i", "queued": "qd",
              "uploaded": "u", "verified": "v", "cleaned": "cl"}
    for state, rel in states.items():
        insert(conn, rel, state, asset=state in RECORDED)
    insert(conn, "v_old", "verified", asset=True, gone_at=START - 5)
    clock.now += 100
    assert ledger.gone(conn, WATCH, [*states.values(), "v_old", "never_known"], clock.now) == 4 + 3
    rows = rows_of(conn)
    assert sorted(rows) == sorted(["qd", "u", "v", "cl", "v_old"])
    assert {rel: rows[rel]["gone_at"] for rel in rows} == {
        "qd": None, "u": clock.now, "v": clock.now, "cl": clock.now, "v_old": START - 5}
    assert ledger.gone(conn, WATCH, ["u", "v"], clock.now + 1) == 0  # marked once, from when it went


def test_a_full_scan_marks_gone_only_what_it_did_not_find(conn: Connection, clock: Clock) -> None:
    for rel in ("found", "missed"):
        observe(conn, rel, (1, 1, 1), clock, scan_gen=1)
    insert(conn, "missed_upload", "uploaded", asset=True, scan_gen=1)
    observe(conn, "found", (1, 1, 1), clock, scan_gen=2)
    assert ledger.gone(conn, WATCH, None, clock.now, before_gen=2) == 2
    rows = rows_of(conn)
    assert sorted(rows) == ["found", "missed_upload"]
    assert rows["missed_upload"]["gone_at"] == clock.now and rows["found"]["gone_at"] is None


def test_a_file_found_again_is_not_gone(conn: Connection, clock: Clock) -> None:
    """Regression: news of a file (not only a full scan) clears the gone_at an earlier deletion set, so
    its record is not pruned 30 days on while the file is there (and uploaded again as a new asset)."""
    verified(conn, clock)
    ledger.gone(conn, WATCH, ["a.tif"], clock.now)  # deleted...
    assert rows_of(conn)["a.tif"]["gone_at"] == clock.now
    observe(conn, "a.tif", (1, 1, 1), clock)  # ...and moved back, as it was
    assert rows_of(conn)["a.tif"]["gone_at"] is None
    ledger.gone(conn, WATCH, ["a.tif"], clock.now)  # deleted again...
    clock.now += 10
    observe(conn, "a.tif", (2, 2, 2), clock)  # ...and written anew: a new version, uploaded in a minute
    take(conn, "a.tif", "job_2")
    assert end(conn, Emitted(), "job_2", "completed", asset_id="ast_1") == WATCH
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["gone_at"]) == ("uploaded", None)
    clock.now += FORGET_AFTER_S + 1
    assert ledger.prune(conn, clock.now - FORGET_AFTER_S) == 0
    assert rows_of(conn)["a.tif"]["asset_id"] == "ast_1"


def test_prune_forgets_only_records_of_files_gone_long_ago(conn: Connection, clock: Clock) -> None:
    for state in RECORDED:
        insert(conn, f"{state}_old", state, asset=True, gone_at=START - FORGET_AFTER_S - 1)
        insert(conn, f"{state}_recent", state, asset=True, gone_at=START - 10)
        insert(conn, f"{state}_here", state, asset=True)
    insert(conn, "queued_old", "queued", gone_at=START - FORGET_AFTER_S - 1)
    assert ledger.prune(conn, START - FORGET_AFTER_S) == 3
    assert not any(rel.endswith("_old") and rel != "queued_old" for rel in rows_of(conn))
    assert len(rows_of(conn)) == 7


def test_prune_goes_in_batches_and_seeks_only_rows_that_went(conn: Connection, clock: Clock) -> None:
    for n in range(12):
        insert(conn, f"old_{n:02}", "cleaned", asset=True, gone_at=START - FORGET_AFTER_S - 1)
    insert(conn, "here", "verified", asset=True)
    older_than = START - FORGET_AFTER_S
    assert [ledger.prune(conn, older_than, limit=5) for _ in range(4)] == [5, 5, 2, 0]
    assert sorted(rows_of(conn)) == ["here"]
    # An hourly prune with nothing old reads nothing: a seek on the index of rows that went.
    sql = str(ledger.prunable(older_than).compile(conn, compile_kwargs={"literal_binds": True}))
    plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert "ix_watch_files_gone" in plan, plan


def test_verified_and_cleaned_say_so_once_each(conn: Connection, clock: Clock) -> None:
    emit = Emitted()
    uploaded(conn, clock, "kept.tif", job_id="job_1")
    uploaded(conn, clock, "moved.tif", version=(2, 2, 2), job_id="job_2")
    assert emit.take() == []
    ledger.verified(conn, emit, WATCH, "kept.tif", keep=True)
    ledger.verified(conn, emit, WATCH, "moved.tif", keep=False)
    rows = rows_of(conn)
    assert rows["kept.tif"]["retry_at"] is None  # kept: nothing more to do
    assert rows["moved.tif"]["retry_at"] == clock.now  # to be moved now
    clock.now += 1
    ledger.cleaned(conn, emit, WATCH, "moved.tif")
    row = rows_of(conn)["moved.tif"]
    assert (row["state"], row["gone_at"], row["retry_at"]) == ("cleaned", clock.now, None)
    assert emit.take() == [("kept.tif", "verified", "uploaded"), ("moved.tif", "verified", "uploaded"),
                           ("moved.tif", "cleaned", "verified")]


def test_judge_settles_only_seen_rows(conn: Connection, clock: Clock) -> None:
    observe(conn, "a.tif", (1, 1, 1), clock)
    judge = ledger.judge
    assert judge(conn, WATCH, "a.tif", clock.now, version=(1, 1, 1), complete=False, recheck_at=clock.now + 7) == "seen"
    assert rows_of(conn)["a.tif"]["retry_at"] == clock.now + 7
    clock.now += 1
    assert judge(conn, WATCH, "a.tif", clock.now, version=(5, 5, 1), complete=True, recheck_at=clock.now + 9) == "seen"
    row = rows_of(conn)["a.tif"]
    assert (version_of(row), row["stable_since"], row["retry_at"]) == ((5, 5, 1), clock.now, clock.now + 9)
    assert judge(conn, WATCH, "a.tif", clock.now, version=(5, 5, 1), complete=True, recheck_at=0.0) == "complete"
    assert judge(conn, WATCH, "a.tif", clock.now, version=None, complete=True, recheck_at=0.0) == "complete"
    assert judge(conn, WATCH, "nothing", clock.now, version=None, complete=True, recheck_at=0.0) == "gone"
    observe(conn, "b.tif", (1, 1, 1), clock)
    assert judge(conn, WATCH, "b.tif", clock.now, version=None, complete=True, recheck_at=0.0) == "gone"
    assert sorted(rows_of(conn)) == ["a.tif"]


def test_due_gives_rows_whose_time_came_earliest_first_and_no_more_than_asked(conn: Connection) -> None:
    now = START + 100
    insert(conn, "later", "seen", retry_at=now + 1)
    insert(conn, "at_now", "seen", retry_at=now, seen_at=START + 1)
    insert(conn, "tie_seen_first", "seen", retry_at=now, seen_at=START)
    insert(conn, "earliest", "seen", retry_at=START + 5, seen_at=START + 50)
    insert(conn, "no_time", "seen", retry_at=None, seen_at=START + 60)  # due at once
    insert(conn, "complete", "complete", retry_at=START)
    insert(conn, "elsewhere", "seen", retry_at=START, watch_id=OTHER_WATCH)
    order = ["no_time", "earliest", "tie_seen_first", "at_now"]
    assert [r["rel"] for r in ledger.due(conn, WATCH, "seen", now, 10)] == order
    for limit in (1, 2, 3):
        assert [r["rel"] for r in ledger.due(conn, WATCH, "seen", now, limit)] == order[:limit]
    assert [r["rel"] for r in ledger.due(conn, WATCH, "complete", now, 10)] == ["complete"]
    assert [r["rel"] for r in ledger.due(conn, OTHER_WATCH, "seen", now, 10)] == ["elsewhere"]


def test_next_due_is_the_earliest_time_among_the_states_asked(conn: Connection) -> None:
    assert ledger.next_due(conn, WATCH, ["seen", "complete"]) is None
    insert(conn, "no_time", "seen")  # due at once, but no time to wake for
    assert ledger.next_due(conn, WATCH, ["seen", "complete"]) is None
    insert(conn, "s", "seen", retry_at=START + 50)
    insert(conn, "c", "complete", retry_at=START + 20)
    insert(conn, "v", "verified", retry_at=START + 10)
    insert(conn, "other", "seen", retry_at=START + 1, watch_id=OTHER_WATCH)
    assert ledger.next_due(conn, WATCH, ["seen"]) == START + 50
    assert ledger.next_due(conn, WATCH, ["seen", "complete"]) == START + 20
    assert ledger.next_due(conn, WATCH, ["seen", "complete", "verified"]) == START + 10
    assert ledger.next_due(conn, WATCH, []) is None


def test_counts_and_the_oldest_pending_file(conn: Connection) -> None:
    assert ledger.oldest_pending(conn, WATCH) is None
    assert set(ledger.counts(conn, WATCH).values()) == {0}
    insert(conn, "v", "verified", seen_at=START - 100, asset=True)  # not pending: in the repository
    insert(conn, "q", "quarantined", seen_at=START - 90)
    insert(conn, "u", "uploaded", seen_at=START - 10, asset=True)
    insert(conn, "s", "seen", seen_at=START - 5)
    insert(conn, "other", "seen", seen_at=START - 1000, watch_id=OTHER_WATCH)
    assert ledger.oldest_pending(conn, WATCH) == ("u", START - 10)
    counts = ledger.counts(conn, WATCH)
    assert list(counts) == list(contract.WATCH_FILE_STATES)
    assert counts == {**dict.fromkeys(contract.WATCH_FILE_STATES, 0), "verified": 1, "quarantined": 1,
                      "uploaded": 1, "seen": 1}


def test_a_new_version_found_by_the_judge_starts_with_no_failures(conn: Connection, clock: Clock) -> None:
    """Regression: failures count per version; a file that failed before and then changed under its
    upload must not be quarantined at the new version's first failure."""
    observe(conn, "a.tif", (1, 1, 1), clock)
    for attempt in range(1, MAX_ATTEMPTS):
        take(conn, "a.tif", f"job_{attempt}")
        assert end(conn, Emitted(), f"job_{attempt}", "failed", "io_error") == WATCH
    take(conn, "a.tif", "job_changed")
    assert end(conn, Emitted(), "job_changed", "failed", "source_changed") == WATCH
    assert rows_of(conn)["a.tif"]["attempts"] == MAX_ATTEMPTS - 1  # the same version, maybe: not forgotten yet
    assert ledger.judge(conn, WATCH, "a.tif", clock.now, version=(2, 2, 2), complete=False,
                        recheck_at=clock.now + 1) == "seen"
    assert rows_of(conn)["a.tif"]["attempts"] == 0
    take(conn, "a.tif", "job_new")
    emit = Emitted()
    assert end(conn, emit, "job_new", "failed", "io_error") == WATCH
    row = rows_of(conn)["a.tif"]
    assert (row["state"], row["attempts"]) == ("complete", 1) and emit.take() == []


def test_a_clean_refused_for_a_changed_file_waits_for_the_change(conn: Connection, clock: Clock) -> None:
    """The watcher asks for verified rows to clean with ``unset=False``: a row whose move or delete was
    refused because the file changed (``retry_at`` cleared) waits for the change, not for the next step."""
    uploaded(conn, clock)
    ledger.verified(conn, Emitted(), WATCH, "a.tif", keep=False)
    assert [r["rel"] for r in ledger.due(conn, WATCH, "verified", clock.now, 10, unset=False)] == ["a.tif"]
    ledger.clean_failed(conn, WATCH, "a.tif", "source_changed", "changed since its upload; not cleaned", None)
    assert ledger.due(conn, WATCH, "verified", clock.now + 3600, 10, unset=False) == []


# --- the counts kept per state -----------------------------------------------------------------

COUNT_OPS = st.lists(st.tuples(st.sampled_from(["insert", "state", "move", "delete", "delete_state"]),
                               st.sampled_from((WATCH, OTHER_WATCH)), st.integers(0, 5),
                               st.sampled_from(contract.WATCH_FILE_STATES)), max_size=30)


def test_kept_counts_equal_a_full_count_after_any_writes(queue: Engine) -> None:
    """Whatever writes reach ``watch_files`` (one row, many at once, a row moved to another watch),
    the triggers keep ``ledger.counts`` equal to a count of the rows."""
    @given(ops=COUNT_OPS)
    @settings(max_examples=60, deadline=None)
    def play(ops: list[tuple[str, str, int, str]]) -> None:
        with fresh_connection(queue) as conn:
            for op, watch_id, n, state in ops:
                rel = f"f{n}"
                w = ledger.W
                if op == "insert":
                    conn.execute(sa.text(
                        "INSERT OR IGNORE INTO watch_files (watch_id, rel, state, seen_at, updated_at) "
                        "VALUES (:w, :r, :s, 0, 0)"), {"w": watch_id, "r": rel, "s": state})
                elif op == "state":
                    conn.execute(w.update().where(w.c.watch_id == watch_id, w.c.rel == rel).values(state=state))
                elif op == "move":
                    other = OTHER_WATCH if watch_id == WATCH else WATCH
                    conn.execute(sa.text("UPDATE OR IGNORE watch_files SET watch_id = :o WHERE watch_id = :w "
                                         "AND rel = :r"), {"o": other, "w": watch_id, "r": rel})
                elif op == "delete":
                    conn.execute(w.delete().where(w.c.watch_id == watch_id, w.c.rel == rel))
                else:
                    conn.execute(w.delete().where(w.c.watch_id == watch_id, w.c.state == state))
                for each in (WATCH, OTHER_WATCH):
                    assert ledger.counts(conn, each) == ledger.count_rows(conn, each), (op, each)
            # Removing a watch (its files go by cascade) leaves no count behind.
            conn.execute(ledger.WATCHES.delete().where(ledger.WATCHES.c.watch_id == WATCH))
            left = conn.execute(sa.select(ledger.COUNTS).where(ledger.COUNTS.c.watch_id == WATCH)).all()
            assert left == []

    play()
