"""The database: a synchronous SQLAlchemy engine used from worker threads only.

Every query runs in a thread (``trio.to_thread.run_sync``) so the event loop never
waits on disk or locks. Writes go through one in-process writer slot: SQLite takes
one writer at a time anyway, and queuing them here is cheaper than having threads
spin on the database lock. Reads run several at once (WAL lets them overlap a write).

SQLite specifics live in :func:`_configure_sqlite` and nowhere else: WAL, a busy
timeout (another process, such as ``users add``, may hold the lock for a moment),
``synchronous=FULL`` (a commit the client was told about survives power loss),
foreign keys, and ``BEGIN IMMEDIATE`` for write transactions so a transaction that
reads and then writes cannot fail half-way on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import trio
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

T = TypeVar("T")

#: How long a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
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


def make_engine(url: str) -> Engine:
    """An engine for ``url``, with the SQLite setup above when it is SQLite."""
    engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


class Database:
    """The engine plus the two ways to use it: :meth:`read` and :meth:`write`.

    Each call runs ``fn(session)`` in a worker thread inside one transaction: committed
    when ``fn`` returns, rolled back when it raises (the exception propagates). The session
    is closed afterwards: return plain values, or ORM rows whose columns are loaded
    (objects are not expired on commit), never anything that would load lazily.
    """

    def __init__(self, url: str, *, readers: int = 8) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write_engine = self.engine.execution_options(**{_IMMEDIATE: True})
        self._writer = trio.CapacityLimiter(1)
        self._readers = trio.CapacityLimiter(readers)

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
        return await trio.to_thread.run_sync(self.read_sync, fn, limiter=self._readers)

    async def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a write transaction, off the event loop, one writer at a time."""
        return await trio.to_thread.run_sync(self.write_sync, fn, limiter=self._writer)

    def dispose(self) -> None:
        self.engine.dispose()
