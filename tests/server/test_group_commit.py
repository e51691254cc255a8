"""SQLite group commit (``db._GroupWriter``): writes share a transaction, never each other's failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from dataerai_server.db import Database
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    with database.write_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    return database


def _rows(db: Database) -> dict[int, str]:
    return dict(db.read_sync(lambda s: s.execute(text("SELECT k, v FROM t")).all()))  # type: ignore[arg-type]


async def test_each_write_gets_its_own_outcome_and_only_its_own_changes_are_undone(db: Database) -> None:
    outcomes: dict[int, object] = {}

    async def write(i: int) -> None:
        def fn(session: Session) -> int:
            session.execute(text("INSERT INTO t VALUES (:k, :v)"), {"k": i % 20, "v": f"w{i}"})
            if i % 7 == 0:
                raise ValueError(i)
            return i

        try:
            outcomes[i] = await db.write(fn)
        except (ValueError, IntegrityError) as exc:
            outcomes[i] = type(exc)

    async with trio.open_nursery() as nursery:
        for i in range(60):
            nursery.start_soon(write, i)
    rows = _rows(db)
    # Every key was written by exactly one write that returned; the others failed alone.
    assert sorted(rows) == list(range(20))
    winners = {i for i, outcome in outcomes.items() if outcome == i}
    assert {int(v[1:]) for v in rows.values()} == winners
    # A write that raised left nothing behind, whatever it had inserted first.
    assert all(outcomes[i] in (ValueError, IntegrityError) for i in range(0, 60, 7))
    assert not any(int(v[1:]) % 7 == 0 for v in rows.values())
    assert all(outcomes[i] in (i, IntegrityError) for i in range(60) if i % 7)


async def test_a_write_cancelled_while_queued_never_runs(db: Database) -> None:
    ran: list[int] = []
    started = trio.Event()
    release = trio.Event()

    def slow(session: Session) -> None:
        trio.from_thread.run_sync(started.set)
        trio.from_thread.run(release.wait)
        ran.append(1)

    def queued(session: Session) -> None:
        ran.append(2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, slow)
        await started.wait()
        with trio.CancelScope() as scope:
            waiter = trio.Event()

            async def write_then_mark() -> None:
                try:
                    await db.write(queued)
                finally:
                    waiter.set()

            async with trio.open_nursery() as inner:
                inner.start_soon(write_then_mark)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        await waiter.wait()
        release.set()
    # The first write ran; the queued one was taken back when its caller was cancelled.
    assert ran == [1]
    # The writer slot is free again, and the next group does not run the taken-back write either.
    assert (await db.write(lambda session: 3)) == 3
    assert ran == [1]
