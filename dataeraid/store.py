"""The transfer queue in SQLite: jobs, chunk checkpoints and durable events.

Every statement runs off the Trio thread, one at a time, on one connection
(SQLite has one writer anyway; serialising here keeps transactions simple and
keeps the event loop free). The database is in WAL mode with
``synchronous=FULL``: a commit that returned is on disk, so a job whose enqueue
was acknowledged survives a power cut.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import trio
from alembic import command
from alembic.config import Config
from dataerai.contract import ACTIVE_JOB_STATES
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from dataeraid import schema

T = TypeVar("T")

Row = dict[str, Any]

#: The digest cache keeps the sources used most recently, at most this many.
DIGEST_CACHE_ROWS = 10_000

#: States a job is in only while a daemon works on it; after a crash they mean "queued".
INTERRUPTIBLE_STATES = ACTIVE_JOB_STATES


def migrations_dir() -> Path:
    """Alembic's script directory: inside the wheel, or the repository's ``migrations/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "_migrations"
    return packaged if packaged.is_dir() else here.parent / "migrations"


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_queue_engine(path: Path) -> Engine:
    engine = sa.create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False},
        poolclass=StaticPool,
    )
    sa.event.listen(engine, "connect", _on_connect)
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def runnable_query(exclude: Iterable[str], per_client: int) -> sa.Select[Any]:
    """The queued jobs (but ``exclude``) that the scheduler may start next: each client's
    first ``per_client`` in its own order (priority first, then enqueue order), all in
    that order.

    ``scheduler.pick`` only ever starts a client's jobs from the front of its own
    order, so filling ``per_client`` free slots needs no more of them than this: a
    queue of a hundred thousand jobs costs the scheduler a few rows per client, not
    the whole queue, each time it wakes.
    """
    jobs = schema.jobs
    order = (jobs.c.priority.desc(), jobs.c.seq)
    rank = sa.func.row_number().over(partition_by=jobs.c.client, order_by=order).label("rank")
    ranked = (
        sa.select(jobs.c.job_id, rank)
        .where(jobs.c.state == "queued")
        .where(jobs.c.job_id.not_in(list(exclude)))
        .subquery()
    )
    front = sa.select(ranked.c.job_id).where(ranked.c.rank <= per_client)
    return sa.select(jobs).where(jobs.c.job_id.in_(front)).order_by(*order)


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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        def setup() -> Engine:
            engine = create_queue_engine(path)
            migrate(engine)
            return engine

        engine = await trio.to_thread.run_sync(setup)
        return cls(engine)

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
    def fetch_job(conn: Connection, job_id: str) -> Row | None:
        row = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.job_id == job_id)).mappings().first()
        return dict(row) if row else None

    async def get_job(self, job_id: str) -> Row | None:
        return await self.transaction(lambda conn: self.fetch_job(conn, job_id))

    async def list_jobs(self, states: Sequence[str] | None = None) -> list[Row]:
        query = sa.select(schema.jobs).order_by(schema.jobs.c.seq)
        if states:
            query = query.where(schema.jobs.c.state.in_(list(states)))
        return await self.transaction(lambda conn: [dict(r) for r in conn.execute(query).mappings()])

    async def runnable_jobs(self, exclude: Iterable[str], per_client: int) -> list[Row]:
        """The queued jobs (but ``exclude``) the scheduler may start next (:func:`runnable_query`)."""
        query = runnable_query(exclude, per_client)
        return await self.transaction(lambda conn: [dict(r) for r in conn.execute(query).mappings()])

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
    def insert_event(conn: Connection, event: Row) -> None:
        conn.execute(
            schema.events.insert().values(
                event_id=event["id"],
                time=event["time"],
                type=event["type"],
                job_id=event.get("job_id"),
                payload=event,
            )
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

    async def prune_events(self, older_than: float) -> int:
        """Forget stored events from before ``older_than`` (a Unix time); how many went."""
        query = schema.events.delete().where(schema.events.c.time < older_than)
        return await self.transaction(lambda conn: conn.execute(query).rowcount)

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
