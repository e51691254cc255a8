"""Stored bytes whose deletion failed are deleted by a later sweep, never left for good.

A real database (SQLite, migrated as the server does); the storage is a stand-in whose
deletions fail while told to, as an object store that is down would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dataerai_server import deletions, migrate
from dataerai_server.db import Database
from dataerai_server.models import StorageDeletion
from sqlalchemy import select


class _FlakyStorage:
    def __init__(self) -> None:
        self.held = {"k1", "k2", "k3"}
        self.down = True

    async def delete_content(self, key: str) -> None:
        if self.down:
            raise OSError("the store is down")
        self.held.discard(key)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    migrate.upgrade(database.write_engine)
    yield database
    database.dispose()


def _queued(db: Database) -> dict[str, tuple[int, str | None]]:
    rows = db.read_sync(lambda s: list(s.scalars(select(StorageDeletion))))
    return {r.storage_key: (r.attempts, r.last_error) for r in rows}


async def test_a_failed_deletion_stays_queued_and_a_sweep_finishes_it(db: Database) -> None:
    storage = _FlakyStorage()
    db.write_sync(lambda s: deletions.queue(s, ["k1", "k2", "k1"]))
    db.write_sync(lambda s: deletions.queue(s, ["k2"]))  # queued twice: one record

    assert await deletions.delete_queued(db, storage, ["k1", "k2"]) == 0  # type: ignore[arg-type]
    queued = _queued(db)
    assert set(queued) == {"k1", "k2"} and queued["k1"][0] == 1 and "the store is down" in (queued["k1"][1] or "")
    assert storage.held == {"k1", "k2", "k3"}

    assert await deletions.retry_queued(db, storage) == 0  # type: ignore[arg-type]
    assert _queued(db)["k2"][0] == 2

    storage.down = False
    assert await deletions.retry_queued(db, storage) == 2  # type: ignore[arg-type]
    assert _queued(db) == {} and storage.held == {"k3"}


async def test_the_normal_path_leaves_no_record(db: Database) -> None:
    storage = _FlakyStorage()
    storage.down = False
    db.write_sync(lambda s: deletions.queue(s, ["k3"]))
    assert await deletions.delete_queued(db, storage, ["k3"]) == 1  # type: ignore[arg-type]
    assert _queued(db) == {} and storage.held == {"k1", "k2"}
