"""The database: a synchronous SQLAlchemy engine used from worker threads only.

Every query runs in a worker thread (:mod:`.threads`) so the event loop never
waits on disk or locks. Reads run several at once (WAL lets them overlap a write).

Writes on SQLite are committed in groups: SQLite takes one writer at a time, and each
commit waits for an fsync (``synchronous=FULL``, 2 to 4 ms on the workplace disk), so one
transaction per request capped the whole server at a few hundred writes a second
whatever its CPU. The writes waiting when the writer slot frees run in one transaction,
each in its own savepoint (a write that raises rolls back only its own changes and gets
its own exception), and every caller is answered after the one commit: each write is as
durable when its caller hears of it as before, and one fsync serves them all
(:class:`_GroupWriter`). On PostgreSQL several writers run at once (its own row locks
order them, and it groups commits itself), as several server processes always could.

SQLite specifics live in :func:`_configure_sqlite` and nowhere else: WAL, a busy
timeout (another process, such as ``users add``, may hold the lock for a moment),
``synchronous=FULL`` (a commit the client was told about survives power loss),
foreign keys, and ``BEGIN IMMEDIATE`` for write transactions so a transaction that
reads and then writes cannot fail half-way on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar, cast

import anyio
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .threads import WorkerThreads

T = TypeVar("T")
Item = TypeVar("Item")

#: How long a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
#: The most SQLite writes one group commit takes: a bound on how long the last of them waits.
GROUP_COMMIT_MAX: Final = 64
#: Writers at once on a database that takes concurrent writers (PostgreSQL).
CONCURRENT_WRITERS: Final = 8
_IMMEDIATE: Final = "dataerai_begin_immediate"


def _enter_wal(cursor: Any, timeout_s: float) -> None:
    """Switch the database to WAL, waiting for other connections that hold a lock.

    SQLite takes the exclusive lock for this switch without calling the busy handler, so
    two servers opening one fresh database at once could see "database is locked" at
    once. Waiting here in short steps, up to the busy timeout, makes the switch behave
    like every other statement. On a database already in WAL the pragma needs no lock.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode in ("wal", "memory"):  # an in-memory database has no WAL to switch to
                return
            failure: Exception = sqlite3.OperationalError(f"database is locked (journal mode still {mode})")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            failure = exc
        if time.monotonic() >= deadline:
            raise failure
        time.sleep(0.005)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below own transaction starts (the pysqlite
        # driver would otherwise start them itself, always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enter_wal(cursor, SQLITE_BUSY_TIMEOUT_MS / 1000)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, *, connections: int = 5) -> Engine:
    """An engine for ``url``, with the SQLite setup above when it is SQLite.

    Its pool keeps ``connections`` open: as many as the threads that use it at once. With
    fewer kept, every connection beyond them was opened for one transaction and closed at
    its end, which under load was a new PostgreSQL backend (and on SQLite the pragmas and
    the WAL check) for most requests. Beyond ``connections`` the pool may open as many
    again for a moment (a migration, a command beside the server's threads).
    """
    parsed = make_url(url)
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    pool: dict[str, Any] = {} if in_memory else {"pool_size": connections, "max_overflow": connections}
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), **pool)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


@dataclass(eq=False)
class Pending(Generic[Item, T]):
    """One caller's item, waiting for or taken into a batch; the batch's runner settles it."""

    item: Item
    taken: bool = False
    settled: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: BaseException | None = None

    def answer(self, value: T) -> None:
        self.value, self.error, self.settled = value, None, True

    def fail(self, error: BaseException) -> None:
        self.value, self.error, self.settled = None, error, True

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[no-any-return]


class Batcher(Generic[Item, T]):
    """Calls that arrive while a batch runs are run together, as the next batch.

    A caller queues its item and waits for the slot (a FIFO ``anyio.Lock``). Whoever gets the
    slot while its own item is still queued takes every queued item (up to ``most``) and
    hands them to ``run``, which settles each (:meth:`Pending.answer` or
    :meth:`Pending.fail`); a caller whose item was taken by an earlier batch finds it settled
    when its turn comes. A caller cancelled while its item is still queued takes it back (it
    never runs); once taken, the item runs to its end and the caller waits for it, shielded,
    before the cancellation goes on. What ``run`` leaves unsettled fails with what ``run``
    raised. The caller that runs a batch is not cancelled before the batch is done (it is
    the others' work too): a cancellation reaches it afterwards, as it does a caller whose
    item was taken.

    So batches grow with the load and cost nothing when it is light: alone, a call is a
    batch of one, run at once.
    """

    def __init__(self, run: Callable[[list[Pending[Item, T]]], Awaitable[None]], *, most: int) -> None:
        self._run = run
        self._most = most
        self._slot = anyio.Lock()
        self._queued: list[Pending[Item, T]] = []

    async def __call__(self, item: Item) -> T:
        mine: Pending[Item, T] = Pending(item)
        self._queued.append(mine)
        try:
            async with self._slot:
                if not mine.taken:
                    batch, self._queued = self._queued[: self._most], self._queued[self._most :]
                    for pending in batch:
                        pending.taken = True
                    try:
                        # The batch is the others' work as much as this caller's: its own
                        # cancellation (a client gone) waits until the batch is done.
                        with anyio.CancelScope(shield=True):
                            await self._run(batch)
                    except BaseException as exc:
                        for pending in batch:
                            if not pending.settled:
                                pending.fail(exc)
                        raise
                    finally:
                        for pending in batch:
                            if not pending.settled:
                                pending.fail(RuntimeError("the batch left this item unanswered"))
                            pending.done.set()
        except BaseException:
            if not mine.taken:
                self._queued.remove(mine)
                raise
            with anyio.CancelScope(shield=True):
                await mine.done.wait()
            raise
        await mine.done.wait()
        return mine.outcome()


class Together(Generic[Item, T]):
    """The calls that arrive at the same moment, run in one transaction and one thread hop: a
    :class:`Batcher` over ``transact`` (:meth:`Database.read` or :meth:`Database.write`).

    Under load a transaction and its hop to a worker thread cost more than a small request's
    own statements (on PostgreSQL a ping, ``BEGIN`` and ``COMMIT``, each a round trip; the
    hop a few thread switches under the GIL), and the calls waiting share them.

    ``run(session, items)`` gives each item's outcome, in order: its value, or the exception
    that is its own (a check's ``ApiError``), raised before it wrote anything. It may serve
    all the items with one statement where they ask alike (:meth:`one_by_one` makes a
    ``run`` of a function of one item). A database error may have left the transaction
    unusable (PostgreSQL refuses every statement after a failed one), and the commit may
    fail: then nothing of the batch was written, and each of its calls runs again alone, so
    that one call's failure stays its own.
    """

    def __init__(self, transact: Callable[[Callable[[Session], Any]], Awaitable[Any]],
                 run: Callable[[Session, list[Item]], list[T | Exception]], *, most: int) -> None:
        self._transact = transact
        self._run_items = run
        self._batcher: Batcher[Item, T] = Batcher(self._run, most=most)

    @staticmethod
    def one_by_one(each: Callable[[Session, Item], T]) -> Callable[[Session, list[Item]], list[T | Exception]]:
        """A ``run`` that calls ``each(session, item)`` for each item in turn."""

        def run(session: Session, items: list[Item]) -> list[T | Exception]:
            outcomes: list[T | Exception] = []
            for item in items:
                try:
                    outcomes.append(each(session, item))
                except SQLAlchemyError:
                    raise  # the transaction may be unusable: the batch goes again, call by call
                except Exception as exc:
                    outcomes.append(exc)
            return outcomes

        return run

    async def __call__(self, item: Item) -> T:
        return await self._batcher(item)

    @staticmethod
    def _settle(batch: list[Pending[Item, T]], outcomes: list[T | Exception]) -> None:
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                pending.fail(outcome)
            else:
                pending.answer(outcome)

    async def _alone(self, pending: Pending[Item, T]) -> None:
        items = [pending.item]
        try:
            self._settle([pending], await self._transact(lambda session: self._run_items(session, items)))
        except Exception as exc:
            pending.fail(exc)

    async def _run(self, batch: list[Pending[Item, T]]) -> None:
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        items = [pending.item for pending in batch]
        try:
            outcomes = await self._transact(lambda session: self._run_items(session, items))
        except Exception:
            for pending in batch:
                await self._alone(pending)
            return
        self._settle(batch, outcomes)


class _GroupWriter:
    """Group commit for SQLite (see the module docstring): a :class:`Batcher` of writes.

    Each batch runs in one transaction in a worker thread, each write in its own savepoint.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.write: Batcher[Callable[[Session], Any], Any] = Batcher(self._run_in_thread, most=GROUP_COMMIT_MAX)
        self._thread = WorkerThreads(1, "dataerai-group-commit")  # one group at a time (the batcher's slot)

    async def _run_in_thread(self, group: list[Pending[Callable[[Session], Any], Any]]) -> None:
        await self._thread.run(self._run, group)

    def close(self) -> None:
        self._thread.close()

    def _run(self, group: list[Pending[Callable[[Session], Any], Any]]) -> None:
        if len(group) == 1:
            # Alone, a write needs no savepoint: its own failure rolls back the transaction,
            # which holds nothing else. (SAVEPOINT and RELEASE were a fifth of a part
            # target's statements at the rates where groups are mostly of one.)
            try:
                with Session(self._engine, expire_on_commit=False) as session, session.begin():
                    value = group[0].item(session)
            except BaseException as exc:
                group[0].fail(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                group[0].answer(value)
            return
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                for write in group:
                    savepoint = session.begin_nested()
                    try:
                        value = write.item(session)
                        savepoint.commit()  # flushes: a constraint fails here, for this write only
                    except Exception as exc:
                        savepoint.rollback()
                        write.fail(exc)
                    else:
                        write.answer(value)
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the group was written
            for write in group:
                write.fail(exc)
            if not isinstance(exc, Exception):
                raise


class Database:
    """The engine plus the two ways to use it: :meth:`read` and :meth:`write`.

    Each call runs ``fn(session)`` in a worker thread inside one transaction: committed
    when ``fn`` returns, rolled back when it raises (the exception propagates). The session
    is closed afterwards: return plain values, or ORM rows whose columns are loaded
    (objects are not expired on commit), never anything that would load lazily.
    """

    def __init__(self, url: str, *, readers: int = 8) -> None:
        self.url = url
        # Each reader and each writer holds a connection for its transaction; two more
        # for the work that runs beside them (the expiry sweep, a command).
        self.engine = make_engine(url, connections=readers + CONCURRENT_WRITERS + 2)
        self._write_engine = self.engine.execution_options(**{_IMMEDIATE: True})
        self._group: _GroupWriter | None = None
        if self.engine.dialect.name == "sqlite":
            self._group = _GroupWriter(self._write_engine)
        self._writers = WorkerThreads(CONCURRENT_WRITERS, "dataerai-db-write")
        self._readers = WorkerThreads(readers, "dataerai-db-read")

    @property
    def write_engine(self) -> Engine:
        """The engine whose transactions take the write lock at BEGIN (used by migrations too)."""
        return self._write_engine

    def read_sync(self, fn: Callable[[Session], T]) -> T:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            return fn(session)

    def write_sync(self, fn: Callable[[Session], T]) -> T:
        with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            return fn(session)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a read transaction, off the event loop."""
        return await self._readers.run(self.read_sync, fn)

    async def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a write transaction, off the event loop; committed before this returns.

        On SQLite the transaction may be shared with other writes (group commit); ``fn``
        runs in its own savepoint there, so what it raises undoes only its own changes.
        """
        if self._group is not None:
            return cast(T, await self._group.write(fn))
        return await self._writers.run(self.write_sync, fn)

    def dispose(self) -> None:
        self.engine.dispose()
        self._readers.close()
        self._writers.close()
        if self._group is not None:
            self._group.close()
