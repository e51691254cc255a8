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
    return dict(db.read_sync(lambda s: s.execute(text("SELECT k, v FROM t")).all()))


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


async def test_a_write_alone_runs_without_a_savepoint_and_its_failure_undoes_it(db: Database) -> None:
    def failing(session: Session) -> None:
        session.execute(text("INSERT INTO t VALUES (1, 'lost')"))
        raise ValueError("no")

    def fine(session: Session) -> int:
        session.execute(text("INSERT INTO t VALUES (2, 'kept')"))
        return 2

    # One after another, each write is a group of its own.
    with pytest.raises(ValueError, match="no"):
        await db.write(failing)
    assert await db.write(fine) == 2
    with pytest.raises(IntegrityError):
        await db.write(fine)
    assert _rows(db) == {2: "kept"}


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


def test_a_completion_written_through_core_is_seen_by_the_next_write_of_its_group(tmp_path: Path) -> None:
    """``_record_completion`` writes through Core, beside ORM rows the group's one Session may
    hold: a second completion of the same session later in the same group must find it
    completed (not a stale row still open) and make no second asset."""
    from datetime import timedelta

    from dataerai_server import migrate
    from dataerai_server.auth import issue_token, lookup_principal
    from dataerai_server.clock import utcnow
    from dataerai_server.models import Asset, UploadSession
    from dataerai_server.projects import UsageChanges
    from dataerai_server.uploads import _own_session, _record_completion
    from sqlalchemy import func, select

    db = Database(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    migrate.upgrade(db.write_engine)
    token = db.write_sync(lambda s: issue_token(s, "a@example.org", ["read", "write"], None))
    who = db.read_sync(lambda s: lookup_principal(s, token, utcnow()))
    now = utcnow()
    db.write_sync(lambda s: s.add(UploadSession(
        id="upl_1", user_id=who.user_id, state="open", owner_type="user", owner_id=who.user_id, project_id=None,
        collection_id=None, asset_id=None, title=None, description=None, alias=None, tags=[], meta={},
        file_name="f.bin", path=None, files=None, size=3, part_size=1 << 20, part_count=1, sha256=None,
        idempotency_key=None, storage_handle="upl_1", bytes_received=3, created_at=now, updated_at=now,
        expires_at=now + timedelta(days=1))))
    sha = "ab" * 32

    def one_group(session: Session) -> tuple[object, object, str]:
        # The session's row is loaded through the ORM first, and kept, as another write of the
        # group may do (the identity map holds rows only while something refers to them).
        held = _own_session(session, who, "upl_1")
        assert held.state == "open"
        first = _record_completion(session, who, "upl_1", "k1", 3, sha, "upl_1", None, UsageChanges())
        # A plain read (no row lock, which would refresh the row) sees the row as it now is.
        upload = session.get(UploadSession, "upl_1")
        assert upload is not None
        state = upload.state
        second = _record_completion(session, who, "upl_1", "k2", 3, sha, "upl_1", None, UsageChanges())
        del held
        return first, second, state

    first, second, state = db.write_sync(one_group)
    assert first[1] is True and second == (first[0], False)  # type: ignore[index]
    assert state == "completed"
    assert db.read_sync(lambda s: s.scalar(select(func.count()).select_from(Asset))) == 1
