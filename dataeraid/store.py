"""The transfer queue in SQLite: jobs, chunk checkpoints and durable events.

Every statement runs off the Trio thread, one at a time, on one connection
(SQLite has one writer anyway; serialising here keeps transactions simple and
keeps the event loop free). The database is in WAL mode with
``synchronous=FULL``: a commit that returned is on disk, so a job whose enqueue
was acknowledged survives a power cut.

Opening checks the file before anything runs on it (``open_queue``): a queue
that is not a SQLite database, is damaged, is a directory, cannot be read, or
comes from a newer dataerai stops the daemon with one ``DataeraiError`` that
names the file, what is wrong and the way out (``dataerai daemon
quarantine-queue``, which ``quarantine`` implements: the file is moved aside
and kept, never deleted).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
import trio
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dataerai.contract import ACTIVE_JOB_STATES, TERMINAL_JOB_STATES
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from dataeraid import log, schema
from dataeraid.errors import DataeraiError
from dataeraid.watch.mounts import network_filesystem

T = TypeVar("T")
_log = log.get("dataeraid.store")

Row = dict[str, Any]

#: The digest cache keeps the sources used most recently, at most this many.
DIGEST_CACHE_ROWS = 10_000

#: States a job is in only while a daemon works on it; after a crash they mean "queued".
INTERRUPTIBLE_STATES = ACTIVE_JOB_STATES
#: A watched file in these states may still act on its job's end (``ledger.record_job_end``, the
#: watcher's retry of the same failed job): that job is never pruned.
KEEP_FOR_WATCH_STATES = ("queued", "complete", "quarantined")
#: Settings rows: the newest ``created_at`` of a pruned job, and how many were pruned in all.
PRUNED_BEFORE_KEY = "jobs_pruned_created_before"
PRUNED_COUNT_KEY = "jobs_pruned"


def migrations_dir() -> Path:
    """Alembic's script directory: inside the wheel, or the repository's ``migrations/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "_migrations"
    return packaged if packaged.is_dir() else here.parent / "migrations"


#: Bytes the queue's WAL file keeps after a checkpoint (``PRAGMA journal_size_limit``).
WAL_SIZE_LIMIT = 64 << 20


#: Rows one pruning transaction deletes at most (jobs, events), as the ledger's ``PRUNE_BATCH``:
#: the store's one thread is free again between batches (docs/benchmarks.md, tools/bench_queue.py).
PRUNE_BATCH = 1000
#: Free pages one ``PRAGMA incremental_vacuum`` step gives back to the filesystem (4 MiB of 4 KiB
#: pages): each step is a short transaction, so a big prune's pages go back without holding the thread.
VACUUM_STEP_PAGES = 1024
#: An existing queue without incremental vacuum is converted (one ``VACUUM``) at start when it holds at
#: most this many bytes of live pages: a VACUUM copies only live pages, about 60 MiB/s here, so a few
#: seconds. A bigger one waits, with a warning each start, until pruning brought it under.
VACUUM_AT_START_MAX = 256 << 20


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Before anything creates a table: a new queue gives pages it frees back to the filesystem when
    # the housekeeping asks (``incremental_vacuum``); an older one is converted by ``_convert_vacuum``.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # After a checkpoint the WAL shrinks back to this: a big batch (pruning, a catch-up)
    # must not leave the file at its high-water mark for as long as the daemon runs.
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.close()


def create_queue_engine(path: Path) -> Engine:
    engine = sa.create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False},
        poolclass=StaticPool,
    )
    sa.event.listen(engine, "connect", _on_connect)
    return engine


class NewerSchema(Exception):
    """The queue's schema revision is not one of this version's: a newer dataerai wrote it."""

    def __init__(self, revision: str, newest_known: str | None) -> None:
        super().__init__(revision)
        self.revision = revision
        self.newest_known = newest_known


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there).

    Raises ``NewerSchema`` for a revision this version does not know, before touching anything.
    """
    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
            raise NewerSchema(current, script.get_current_head())
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


QUARANTINE_COMMAND = "dataerai daemon quarantine-queue"
_WAY_OUT = (
    f"move it aside with `{QUARANTINE_COMMAND}` (it is kept for inspection; "
    "the daemon then starts on a new, empty queue)"
)
#: The files of one SQLite database in WAL mode, as suffixes of its path.
SQLITE_SUFFIXES = ("", "-wal", "-shm")


def _unusable(path: Path, what: str, code: str = "io_error") -> DataeraiError:
    return DataeraiError(code, f"the queue database {path} {what}; {_WAY_OUT}")


def _sqlite_problem(path: Path, exc: BaseException) -> DataeraiError:
    """The ``DataeraiError`` for what SQLite said about the queue file."""
    said = str(getattr(exc, "orig", None) or exc)
    if "file is not a database" in said:
        return _unusable(path, f"is not a SQLite database ({said})")
    if "malformed" in said or "corrupt" in said:
        return _unusable(path, f"is damaged ({said})")
    if "locked" in said or "busy" in said:
        return DataeraiError("conflict", f"the queue database {path} is locked by another process ({said}); "
                                         "close what has it open (an sqlite3 shell?) and start again")
    return _unusable(path, f"cannot be used ({said})")


def _check_access(path: Path) -> None:
    """Refuse a queue this user cannot read and write, before SQLite says only "unable to open"."""
    if not os.access(path, os.R_OK | os.W_OK):
        st = path.stat()
        raise DataeraiError(
            "permission_denied",
            f"the queue database {path} cannot be read and written by this user (mode "
            f"{stat.S_IMODE(st.st_mode):03o}, owner uid {st.st_uid}); give it back (chown it to this user, "
            f"chmod 600) or {_WAY_OUT}",
        )


def _make_private(path: Path) -> None:
    """The queue's files 0600 whatever the umask (SQLite gives -wal and -shm the database's mode)."""
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for suffix in SQLITE_SUFFIXES:
        part = Path(f"{path}{suffix}")
        try:
            st = part.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
                part.chmod(0o600)
        except FileNotFoundError:
            pass


def _pragma(conn: Connection, name: str) -> int:
    return int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())


def _convert_vacuum(engine: Engine, path: Path) -> None:
    """Switch a queue made before incremental vacuum to it: one ``VACUUM``, at start, logged before and after.

    Only when its live pages are at most ``VACUUM_AT_START_MAX`` (a few seconds); a bigger one is
    left as it is, with a warning, and converted at a later start once pruning made it smaller.
    """
    with engine.connect() as conn:
        if _pragma(conn, "auto_vacuum") == 2:  # INCREMENTAL
            return
        page_size = _pragma(conn, "page_size")
        live = (_pragma(conn, "page_count") - _pragma(conn, "freelist_count")) * page_size
        if live > VACUUM_AT_START_MAX:
            _log.warning("the queue database does not give freed space back yet; it is converted at a start "
                         "once pruning brought it under the limit", queue=str(path), live_mib=live >> 20,
                         limit_mib=VACUUM_AT_START_MAX >> 20)
            return
        _log.info("converting the queue database to incremental vacuum, once (a VACUUM)",
                  queue=str(path), live_mib=round(live / 2**20, 1))
        started = time.monotonic()
        conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        _log.info("the queue database uses incremental vacuum", queue=str(path),
                  seconds=round(time.monotonic() - started, 2), mode=_pragma(conn, "auto_vacuum"))


def warn_if_network_filesystem(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Log a warning when the queue is on a network filesystem, where SQLite's locks and WAL are not to
    be trusted (docs/configuration.md); its type, or None."""
    fs_type = network_filesystem(str(path.parent), mountinfo)
    if fs_type is not None:
        _log.warning("the queue database is on a network filesystem, where SQLite's locking is unreliable: "
                     "place the daemon's state on a local disk with XDG_STATE_HOME (docs/configuration.md)",
                     queue=str(path), filesystem=fs_type)
    return fs_type


def open_queue(path: Path) -> Engine:
    """The queue's engine, migrated to the newest schema; a ``DataeraiError`` if the file cannot be the queue.

    Blocking. Every page is read once (SQLite's ``quick_check``), so a damaged
    queue is found here, not halfway through a transfer.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        warn_if_network_filesystem(path)
        if path.is_dir():
            raise _unusable(path, "is a directory, not a file")
        if path.exists():
            _check_access(path)
        _make_private(path)
    except OSError as exc:
        raise _unusable(path, f"cannot be opened ({exc.strerror or exc})") from exc
    engine = create_queue_engine(path)
    try:
        with engine.connect() as conn:
            problems = conn.exec_driver_sql("PRAGMA quick_check").scalars().all()
        if problems != ["ok"]:
            raise _unusable(path, f"is damaged (SQLite's quick_check: {problems[0]})")
        migrate(engine)
        _convert_vacuum(engine, path)
    except NewerSchema as exc:
        engine.dispose()
        raise DataeraiError(
            "conflict",
            f"the queue database {path} was written by a newer dataerai (schema revision {exc.revision!r}; "
            f"this one knows up to {exc.newest_known!r}): run that newer dataerai, or {_WAY_OUT}",
        ) from exc
    except (sa.exc.DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
        raise _sqlite_problem(path, exc) from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def quarantine(path: Path, now: datetime) -> list[tuple[Path, Path]]:
    """Move the queue at ``path`` (a file, or whatever is in its place) and its -wal and -shm aside.

    Each goes to ``<name>.broken-<UTC time>`` in the same directory (with its
    suffix after that, so SQLite still finds the -wal beside the moved file);
    nothing is deleted. The caller holds the queue's lock. Returns (from, to)
    for each file moved; empty when there was none.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    base = Path(f"{path}.broken-{stamp}")
    attempt = 1
    while any(os.path.lexists(f"{base}{suffix}") for suffix in SQLITE_SUFFIXES):
        attempt += 1
        base = Path(f"{path}.broken-{stamp}-{attempt}")
    moved = []
    # The -wal before the database: a new database must never find the old one's log beside it.
    for suffix in reversed(SQLITE_SUFFIXES):
        source, target = Path(f"{path}{suffix}"), Path(f"{base}{suffix}")
        if os.path.lexists(source):
            os.rename(source, target)
            moved.append((source, target))
    if moved:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the renames survive a power cut
        finally:
            os.close(fd)
    return moved


#: A job row's columns but ``params``. The engines alone read ``params`` (an upload's holds its
#: manifest: 620 KB of JSON for 10,000 files), once, when the job starts (:meth:`Store.job_params`);
#: the queue's other reads (states, events, the scheduler's picks) leave it undecoded.
JOB_COLUMNS: Final = tuple(c for c in schema.jobs.c if c.name != "params")


def runnable(conn: Connection, exclude: Iterable[str], per_client: int) -> list[Row]:
    """The queued jobs (but ``exclude``) that the scheduler may start next: each client's
    first ``per_client`` in its own order (priority first, then enqueue order), all in
    that order.

    ``scheduler.pick`` only ever starts a client's jobs from the front of its own
    order, so filling ``per_client`` free slots needs no more of them than this. Both
    steps are index seeks on ``ix_jobs_runnable`` (state, client, priority DESC, seq):
    the clients with queued jobs one seek each (a loose index scan: the next client
    after the last), then each client's front. So a queue of a hundred thousand jobs
    costs the scheduler a few rows per client each time it wakes, never a pass over
    the queue (tools/bench_queue.py measures it).
    """
    jobs = schema.jobs
    skip = list(exclude)
    clients: list[str] = []
    after: str | None = None
    while True:
        nxt = sa.select(sa.func.min(jobs.c.client)).where(jobs.c.state == "queued")
        if after is not None:
            nxt = nxt.where(jobs.c.client > after)
        after = conn.execute(nxt).scalar()
        if after is None:
            break
        clients.append(after)
    found: list[Row] = []
    for client in clients:
        query = (sa.select(*JOB_COLUMNS).where(jobs.c.state == "queued", jobs.c.client == client)
                 .order_by(jobs.c.priority.desc(), jobs.c.seq).limit(per_client))
        if skip:
            query = query.where(jobs.c.job_id.not_in(skip))
        found.extend(dict(r) for r in conn.execute(query).mappings())
    return sorted(found, key=lambda r: (-r["priority"], r["seq"]))


@dataclass(frozen=True)
class SourceIdentity:
    """What a cached digest is valid for: a source at ``path`` that still has this identity.

    For a file its size, ``mtime_ns`` and inode, ``manifest`` empty (as DANDI keys its
    digest cache); for a directory its total size, ``mtime_ns`` and ``inode`` 0 and
    ``manifest`` the SHA-256 of its files' paths, sizes, mtimes and inodes.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    manifest: str


@dataclass(frozen=True)
class CachedDigest:
    sha256: str
    #: One per file in stream order, for a directory; None for a file.
    file_sha256: list[str] | None


class Store:
    """The queue. Methods are coroutines that run their SQL in the store's thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection = engine.connect()
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> Store:
        """The queue at ``path``, checked and migrated; ``DataeraiError`` when it cannot be used (``open_queue``)."""
        return cls(await trio.to_thread.run_sync(open_queue, path))

    async def close(self) -> None:
        await self._run(self._close_sync)

    def _close_sync(self) -> None:
        self._conn.close()
        self._engine.dispose()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one transaction: all of it is committed, or none."""

        def work() -> T:
            with self._conn.begin():
                return fn(self._conn)

        return await self._run(work)

    # --- jobs ---------------------------------------------------------------

    @staticmethod
    def insert_job(conn: Connection, row: Row) -> None:
        next_seq = conn.execute(sa.select(sa.func.coalesce(sa.func.max(schema.jobs.c.seq), 0) + 1)).scalar_one()
        conn.execute(schema.jobs.insert().values(**row, seq=next_seq))

    @staticmethod
    def update_job(conn: Connection, job_id: str, fields: Row) -> None:
        conn.execute(
            schema.jobs.update().where(schema.jobs.c.job_id == job_id).values(**fields, updated_at=time.time())
        )

    @staticmethod
    def fetch_job(conn: Connection, job_id: str, *, params: bool = False) -> Row | None:
        """The job's row; with its ``params`` only if asked (:data:`JOB_COLUMNS`)."""
        columns = schema.jobs.c if params else JOB_COLUMNS
        row = conn.execute(sa.select(*columns).where(schema.jobs.c.job_id == job_id)).mappings().first()
        return dict(row) if row else None

    async def get_job(self, job_id: str) -> Row | None:
        """The job's whole row, ``params`` included."""
        return await self.transaction(lambda conn: self.fetch_job(conn, job_id, params=True))

    async def job_params(self, job_id: str) -> dict[str, Any] | None:
        """The job's ``params`` (what its engine needs, read when it starts), or None if there is no such job."""
        query = sa.select(schema.jobs.c.params).where(schema.jobs.c.job_id == job_id)
        return await self.transaction(lambda conn: conn.execute(query).scalar())

    async def list_jobs(self, states: Sequence[str] | None = None) -> list[Row]:
        """The jobs' rows without ``params``, in enqueue order."""
        query = sa.select(*JOB_COLUMNS).order_by(schema.jobs.c.seq)
        if states:
            query = query.where(schema.jobs.c.state.in_(list(states)))
        return await self.transaction(lambda conn: [dict(r) for r in conn.execute(query).mappings()])

    async def runnable_jobs(self, exclude: Iterable[str], per_client: int) -> list[Row]:
        """The queued jobs (but ``exclude``) the scheduler may start next (:func:`runnable`)."""
        return await self.transaction(lambda conn: runnable(conn, exclude, per_client))

    # --- checkpoints ----------------------------------------------------------

    async def checkpoint(self, job_id: str, idx: int, size: int, sha256: str | None) -> None:
        def work(conn: Connection) -> None:
            table = schema.chunks
            conn.execute(table.delete().where(table.c.job_id == job_id, table.c.idx == idx))
            conn.execute(table.insert().values(job_id=job_id, idx=idx, size=size, sha256=sha256))

        await self.transaction(work)

    async def checkpoint_many(self, job_id: str, chunks: list[tuple[int, int, str | None]]) -> None:
        """Checkpoint several chunks ``(idx, size, sha256)`` in one transaction."""

        def work(conn: Connection) -> None:
            table = schema.chunks
            for idx, size, sha256 in chunks:
                conn.execute(table.delete().where(table.c.job_id == job_id, table.c.idx == idx))
                conn.execute(table.insert().values(job_id=job_id, idx=idx, size=size, sha256=sha256))

        await self.transaction(work)

    async def checkpoints(self, job_id: str) -> dict[int, Row]:
        query = sa.select(schema.chunks).where(schema.chunks.c.job_id == job_id)
        return await self.transaction(lambda conn: {r["idx"]: dict(r) for r in conn.execute(query).mappings()})

    async def clear_checkpoints(self, job_id: str) -> None:
        await self.transaction(
            lambda conn: conn.execute(schema.chunks.delete().where(schema.chunks.c.job_id == job_id))
        )

    # --- the digest cache --------------------------------------------------------

    async def cached_digest(self, source: SourceIdentity) -> CachedDigest | None:
        """The digest recorded for ``source``, if it was recorded for exactly this identity."""
        table = schema.digest_cache

        def read(conn: Connection) -> CachedDigest | None:
            row = conn.execute(sa.select(table).where(table.c.path == source.path)).mappings().first()
            if row is None or (row["size"], row["mtime_ns"], row["inode"], row["manifest"]) != (
                    source.size, source.mtime_ns, source.inode, source.manifest):
                return None
            conn.execute(table.update().where(table.c.path == source.path).values(used_at=time.time()))
            return CachedDigest(row["sha256"], row["file_sha256"])

        return await self.transaction(read)

    async def remember_digest(self, source: SourceIdentity, digest: CachedDigest) -> None:
        """Record ``digest`` for ``source`` (replacing what ``source.path`` had); the oldest
        rows beyond :data:`DIGEST_CACHE_ROWS` go."""
        table = schema.digest_cache

        def write(conn: Connection) -> None:
            conn.execute(table.delete().where(table.c.path == source.path))
            conn.execute(table.insert().values(
                path=source.path, size=source.size, mtime_ns=source.mtime_ns, inode=source.inode,
                manifest=source.manifest, sha256=digest.sha256, file_sha256=digest.file_sha256, used_at=time.time()))
            newest = sa.select(table.c.path).order_by(table.c.used_at.desc()).limit(DIGEST_CACHE_ROWS)
            conn.execute(table.delete().where(table.c.path.not_in(newest.scalar_subquery())))

        await self.transaction(write)

    # --- events -------------------------------------------------------------

    @staticmethod
    def insert_events(conn: Connection, events: Sequence[Row]) -> None:
        """Store a transaction's events in one ``executemany``: a batch of 1,000 new jobs emits
        1,000 ``job.state`` events, and one statement each cost more than SQLite's own work."""
        if not events:
            return
        conn.execute(
            schema.events.insert(),
            [{"event_id": event["id"], "time": event["time"], "type": event["type"],
              "job_id": event.get("job_id"), "payload": event} for event in events],
        )

    async def events_since(self, since: int, jobs: Sequence[str] | None, limit: int = 1000,
                           types: Sequence[str] | None = None) -> list[Row]:
        query = (
            sa.select(schema.events.c.payload)
            .where(schema.events.c.event_id > since)
            .order_by(schema.events.c.event_id)
            .limit(limit)
        )
        if jobs:
            query = query.where(schema.events.c.job_id.in_(list(jobs)))
        if types:
            query = query.where(schema.events.c.type.in_(list(types)))
        return await self.transaction(lambda conn: [dict(r) for r in conn.execute(query).scalars()])

    @staticmethod
    def prune_events_batch(conn: Connection, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Forget the oldest ``limit`` stored events if they are from before ``older_than``; how many went.

        Reads at most ``limit`` rows, whatever the table holds: the first ones by id (ids
        grow with time), never a pass looking for old ones among the new.
        """
        events = schema.events
        oldest = sa.select(events.c.event_id).order_by(events.c.event_id).limit(limit).scalar_subquery()
        query = events.delete().where(events.c.event_id.in_(oldest), events.c.time < older_than)
        return int(conn.execute(query).rowcount)

    async def prune_events(self, older_than: float, limit: int = PRUNE_BATCH) -> int:
        """Forget stored events from before ``older_than`` (a Unix time), ``limit`` per transaction; how many went."""
        pruned = 0
        while True:
            batch = await self.transaction(lambda conn: self.prune_events_batch(conn, older_than, limit))
            pruned += batch
            if batch < limit:
                return pruned

    async def count_events(self) -> int:
        return await self.transaction(
            lambda conn: int(conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar_one()))

    # --- finished jobs ------------------------------------------------------------

    @staticmethod
    def prune_jobs_batch(conn: Connection, older_than: float, keep: Iterable[str] = (),
                         limit: int = PRUNE_BATCH) -> int:
        """Delete at most ``limit`` finished jobs a client saw end before ``older_than``, with their
        checkpoints (by cascade); how many went. Never one in ``keep``, nor one a watch's file still
        waits on (``KEEP_FOR_WATCH_STATES``). A seek on ``ix_jobs_acknowledged``."""
        jobs, files = schema.jobs, schema.watch_files
        held = sa.exists().where(files.c.job_id == jobs.c.job_id, files.c.state.in_(KEEP_FOR_WATCH_STATES))
        old = (sa.select(jobs.c.job_id, jobs.c.created_at)
               .where(jobs.c.acknowledged_at.is_not(None), jobs.c.acknowledged_at < older_than,
                      jobs.c.state.in_(list(TERMINAL_JOB_STATES)), ~held)
               .order_by(jobs.c.acknowledged_at).limit(limit))
        skip = list(keep)
        if skip:
            old = old.where(jobs.c.job_id.not_in(skip))
        found = conn.execute(old).all()
        if not found:
            return 0
        conn.execute(jobs.delete().where(jobs.c.job_id.in_([job_id for job_id, _ in found])))
        # What job.get of a pruned id can say (``pruned_before``): ids are time-ordered.
        newest = max(created for _, created in found)
        if newest > float(Store.read_setting(conn, PRUNED_BEFORE_KEY) or 0):
            Store.write_setting(conn, PRUNED_BEFORE_KEY, repr(newest))
        count = int(Store.read_setting(conn, PRUNED_COUNT_KEY) or 0) + len(found)
        Store.write_setting(conn, PRUNED_COUNT_KEY, str(count))
        return len(found)

    # --- giving space back --------------------------------------------------------------

    @staticmethod
    def space(conn: Connection) -> dict[str, int]:
        """The file's pages: ``page_size``, ``page_count``, ``freelist_count`` and ``auto_vacuum``."""
        return {name: _pragma(conn, name) for name in ("page_size", "page_count", "freelist_count", "auto_vacuum")}

    async def vacuum(self, step_pages: int = VACUUM_STEP_PAGES, max_steps: int = 1 << 20) -> int:
        """Give free pages back to the filesystem, ``step_pages`` per transaction, then checkpoint and
        truncate the WAL so the file shrinks now; how many pages went. Nothing for a queue that is not
        yet converted (``auto_vacuum`` not INCREMENTAL)."""

        def step(conn: Connection) -> tuple[int, int]:
            before = _pragma(conn, "freelist_count")
            if before == 0 or _pragma(conn, "auto_vacuum") != 2:
                return 0, 0
            conn.exec_driver_sql(f"PRAGMA incremental_vacuum({int(step_pages)})")
            after = _pragma(conn, "freelist_count")
            return before - after, after

        freed = 0
        for _ in range(max_steps):
            done, left = await self.transaction(step)
            freed += done
            if done == 0 or left == 0:
                break
        if freed:
            await self._run(self._checkpoint_sync)
        return freed

    def _checkpoint_sync(self) -> None:
        # On the DBAPI connection: outside any transaction, which a checkpoint must be.
        cursor = self._conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            cursor.close()

    # --- settings -----------------------------------------------------------

    @staticmethod
    def read_setting(conn: Connection, key: str) -> str | None:
        query = sa.select(schema.settings.c.value).where(schema.settings.c.key == key)
        value: str | None = conn.execute(query).scalar_one_or_none()
        return value

    @staticmethod
    def write_setting(conn: Connection, key: str, value: str) -> None:
        table = schema.settings
        conn.execute(table.delete().where(table.c.key == key))
        conn.execute(table.insert().values(key=key, value=value))
