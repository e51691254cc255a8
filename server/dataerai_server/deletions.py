"""Deleting stored bytes that no content uses any more, durably.

Rows go first, bytes after: the transaction that deletes a content's last row also
records its storage key here (:func:`queue`); once it has committed, the bytes are
deleted (:func:`delete_queued`) and the record with them. A storage that fails, or
a server that stops in between, leaves the record, and the server's sweep
(:func:`retry_queued`) tries again until the bytes are gone. So a failure leaves
bytes for a while, never for good, and never a row that points at missing bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Final

import structlog
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .clock import utcnow
from .db import Database
from .models import Content, StorageDeletion
from .storage.base import Storage

#: How many queued deletions one sweep takes on, oldest first.
SWEEP_BATCH: Final = 100

_log = structlog.get_logger(__name__)


def unreferenced_keys(session: Session, keys: list[str]) -> list[str]:
    """Those of ``keys`` (in order, once each) that no content row uses.

    Called in the transaction that deleted the rows, after the deletes: on PostgreSQL a
    deduplicating completion locks the content it shares a key with (``FOR UPDATE``), so
    either it waits for this deletion and finds the content gone, or this query (a new
    statement, so a new snapshot under READ COMMITTED) sees the content it added. SQLite
    runs write transactions one at a time.
    """
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return []
    used = set(session.scalars(select(Content.storage_key).where(Content.storage_key.in_(wanted))).all())
    return [key for key in wanted if key not in used]


def queue(session: Session, keys: Sequence[str]) -> None:
    """Record ``keys`` for deletion, in the transaction that made them unused."""
    queued = set(session.scalars(select(StorageDeletion.storage_key).where(StorageDeletion.storage_key.in_(keys))))
    now = utcnow()
    for key in dict.fromkeys(keys):
        if key not in queued:
            session.add(StorageDeletion(storage_key=key, created_at=now, attempts=0))


async def delete_queued(db: Database, storage: Storage, keys: Sequence[str]) -> int:
    """Delete the bytes of queued ``keys`` and their records; how many are gone.

    A key some content uses again is not deleted (only its record is). A failure is
    recorded on the key's record and logged, and the next sweep tries again.
    """
    gone = 0
    for key in keys:
        try:
            if await db.read(partial(unreferenced_keys, keys=[key])):
                await storage.delete_content(key)
        except Exception as exc:  # any storage failure: kept for the next sweep
            await db.write(partial(_failed, key=key, error=repr(exc)))
            _log.warning("storage.delete_failed", storage_key=key, error=repr(exc))
            continue
        await db.write(partial(_done, key=key))
        gone += 1
    return gone


async def retry_queued(db: Database, storage: Storage) -> int:
    """One sweep: try the oldest queued deletions again; how many are gone."""
    keys = await db.read(
        lambda s: list(s.scalars(select(StorageDeletion.storage_key).order_by(StorageDeletion.created_at)
                                 .limit(SWEEP_BATCH)))
    )
    gone = await delete_queued(db, storage, keys)
    if gone:
        _log.info("storage.deleted_late", count=gone)
    return gone


def _done(session: Session, key: str) -> None:
    session.execute(delete(StorageDeletion).where(StorageDeletion.storage_key == key))


def _failed(session: Session, key: str, error: str) -> None:
    row = session.get(StorageDeletion, key)
    if row is not None:
        row.attempts += 1
        row.last_error = error[:1000]
