"""Resumable upload sessions: create, mint part targets, take parts, complete, abort.

The database is the truth about a session and the parts it holds; storage holds
the bytes. The order of steps is chosen so that a crash anywhere leaves something
a retry can finish:

- a part is recorded only after storage made it durable (an unrecorded part file
  is simply overwritten by the re-send);
- completion has storage make the content (the local storage links the part files, it
  does not copy them) under a key derived from the session, so a completion repeated
  after a crash finds or replaces the same object, and only then records asset, content
  and result in one transaction; parts are dropped after that commit;
- the completion's idempotency key is unique per user in the database, so two racing
  completions (in one process or in several) still make exactly one asset.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, cast

import anyio
import structlog
from sqlalchemy import Table, bindparam, delete, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import assets, deletions, project_collections, projects
from .auth import PRINCIPAL_COLUMNS, PRINCIPAL_JOIN, PRINCIPAL_WHERE, Bearer, Principal, callers
from .clock import isoformat, new_id, utcnow
from .config import (
    DEDUP_CHALLENGE_TTL_SECONDS,
    DEDUP_RANGE_COUNT,
    DEDUP_RANGE_LENGTH,
    DEDUP_REFUSAL_FLOOR_SECONDS,
    MAX_PART_COUNT,
    Settings,
)
from .db import Batcher, Database, Pending, Together
from .errors import ApiError, storage_failure
from .models import (
    Asset,
    Collection,
    Content,
    ContentFile,
    DedupChallenge,
    Project,
    UploadCompletion,
    UploadPart,
    UploadPartTarget,
    UploadSession,
)
from .storage import ChecksumMismatch, PresignedRequest, Storage, StorageError, StoredContent, StoredPart
from .storage.base import StoreError

log = structlog.get_logger(__name__)

#: How long removing an expired session's parts may hold up a shutdown.
ABORT_GRACE_SECONDS = 30.0

OPEN = "open"
COMPLETED = "completed"
ABORTED = "aborted"


@dataclass(frozen=True)
class NewUpload:
    """A validated ``POST /uploads`` body."""

    owner_type: str | None
    owner_id: str | None
    file_name: str | None
    size: int
    part_size: int
    sha256: str | None
    idempotency_key: str | None
    asset_id: str | None = None
    collection_id: str | None = None
    title: str | None = None
    description: str | None = None
    alias: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The asset path to set (None: keep it, or for a new asset ``file_name``, else the asset id).
    path: str | None = None
    #: ``[{"path", "size"}, ...]`` in stream order, already checked; None: one file, ``file_name``.
    files: list[dict[str, Any]] | None = None

    @property
    def part_count(self) -> int:
        """A 0-byte file still has one (empty) part."""
        return max(1, -(-self.size // self.part_size))


def expected_part_size(size: int, part_size: int, part_count: int, number: int) -> int:
    """Every part is ``part_size`` bytes except the last, which holds the rest."""
    return part_size if number < part_count else size - part_size * (part_count - 1)


# --- views ------------------------------------------------------------------------


def result_view(upload: UploadSession) -> dict[str, Any] | None:
    if upload.state != COMPLETED:
        return None
    return {
        "asset_id": upload.result_asset_id,
        "content_id": upload.result_content_id,
        "size": upload.size,
        "sha256": upload.sha256,
    }


def _part_view(part: UploadPart) -> dict[str, Any]:
    """A held part: its own digest and its prefix digest, as far as the server knows them
    (part 1's own digest is its prefix digest)."""
    own = None if part.prefix else part.sha256
    prefix = part.sha256 if part.prefix or part.number == 1 else None
    return {"number": part.number, "size": part.size, "sha256": own, "prefix_sha256": prefix, "writes": part.writes}


def session_view(session: Session, upload: UploadSession) -> dict[str, Any]:
    parts = session.scalars(
        select(UploadPart).where(UploadPart.upload_id == upload.id).order_by(UploadPart.number)
    ).all()
    return _view(upload.id, upload.state, {key: getattr(upload, key) for key in _VIEW_COLUMNS},
                 [_part_view(p) for p in parts], result_view(upload))


#: The session's columns its view shows as they are stored (the same names in the table and the view).
_VIEW_COLUMNS = ("size", "part_size", "part_count", "sha256", "file_name", "path", "files", "bytes_received",
                 "created_at", "expires_at")


def _view(upload_id: str, state: str, columns: Mapping[str, Any], parts: list[dict[str, Any]],
          result: dict[str, Any] | None) -> dict[str, Any]:
    """The upload session object of docs/http-api.md, from its row's ``columns`` (the one
    definition, for a session read back and for one just inserted)."""
    return {
        "upload_id": upload_id,
        "state": state,
        "size": columns["size"],
        "part_size": columns["part_size"],
        "part_count": columns["part_count"],
        "sha256": columns["sha256"],
        "file_name": columns["file_name"],
        "path": columns["path"],
        "files": columns["files"],
        "parts": parts,
        "bytes_received": columns["bytes_received"],
        "created_at": isoformat(columns["created_at"]),
        "expires_at": isoformat(columns["expires_at"]),
        "result": result,
    }


# --- transactions (run in a worker thread via Database.read/write) --------------------


def _own_session(session: Session, who: Principal, upload_id: str, *, lock: bool = False) -> UploadSession:
    """The caller's session, else ``not_found`` (sessions are private to whoever created them)."""
    query = select(UploadSession).where(UploadSession.id == upload_id)
    if lock:
        query = query.with_for_update()
    upload = session.scalars(query).one_or_none()
    if upload is None or upload.user_id != who.user_id:
        raise ApiError("not_found", f"no upload session {upload_id!r}", upload_id=upload_id)
    return upload


def _by_idempotency_key(session: Session, who: Principal, key: str | None) -> UploadSession | None:
    if key is None:
        return None
    # Through Core first: a new session (the usual case) finds nothing, and a miss through
    # the ORM costs several times as much (docs/server.md, "Requests per CPU second").
    found = session.connection().execute(_SESSION_BY_KEY, {"user_id": who.user_id, "key": key}).one_or_none()
    return None if found is None else session.get(UploadSession, found.id)


_SESSIONS, _TARGETS = cast(Table, UploadSession.__table__), cast(Table, UploadPartTarget.__table__)
_SESSION_BY_KEY = select(_SESSIONS.c.id).where(
    _SESSIONS.c.user_id == bindparam("user_id"), _SESSIONS.c.idempotency_key == bindparam("key")
)
#: The sessions under several (user, idempotency key) pairs, in one statement (the UNIQUE index's order).
_SESSIONS_BY_KEYS = select(_SESSIONS.c.id, _SESSIONS.c.user_id, _SESSIONS.c.idempotency_key).where(
    tuple_(_SESSIONS.c.user_id, _SESSIONS.c.idempotency_key).in_(bindparam("keys", expanding=True))
)


@dataclass(frozen=True)
class _Placement:
    """Where a new upload's content will go, once checked."""

    owner_type: str
    owner_id: str
    project_id: str | None
    collection_id: str | None


def _check_new_upload(session: Session, who: Principal, new: NewUpload) -> _Placement:
    """Ownership, access and quota checks for a new session; raises the API error that applies.

    The caller needs write access to where the content goes: the asset (a new version),
    or the owning project or collection (``owner`` or ``editor``), or their own user.
    """
    if new.asset_id is not None:
        asset = assets.writable_asset(session, who, new.asset_id)
        if (new.owner_type, new.owner_id) not in ((None, None), (asset.owner_type, asset.owner_id)):
            raise ApiError(
                "invalid_argument",
                f"`owner_type`/`owner_id` must match asset {asset.id!r} ({asset.owner_type} {asset.owner_id})",
                field="owner_id",
            )
        placement = _Placement(asset.owner_type, asset.owner_id, asset.project_id, asset.collection_id)
    elif new.owner_type == assets.OWNER_PROJECT:
        assert new.owner_id is not None
        projects.require_role(session, who, new.owner_id, projects.WRITER_ROLES)
        project = session.get(Project, new.owner_id)
        assert project is not None
        collection_id = new.collection_id or project.root_collection_id
        collection = session.get(Collection, collection_id)
        if collection is None or collection.project_id != project.id:
            raise ApiError(
                "not_found", f"project {project.id!r} has no collection {collection_id!r}", field="collection_id"
            )
        placement = _Placement(assets.OWNER_PROJECT, project.id, project.id, collection_id)
    elif new.owner_type == assets.OWNER_COLLECTION:
        assert new.owner_id is not None
        collection = project_collections.visible_collection(session, who, new.owner_id)
        if new.collection_id not in (None, collection.id):
            raise ApiError(
                "invalid_argument",
                "`collection_id` must be null or the owning collection's id for a collection-owned upload",
                field="collection_id",
            )
        projects.require_role(session, who, collection.project_id, projects.WRITER_ROLES)
        placement = _Placement(assets.OWNER_COLLECTION, collection.id, collection.project_id, collection.id)
    elif new.owner_type == assets.OWNER_USER:
        if new.owner_id != who.user_id:
            raise ApiError(
                "permission_denied", "`owner_id` of a user-owned upload must be your own user_id", field="owner_id"
            )
        if new.collection_id is not None:
            raise ApiError("invalid_argument", "a user-owned asset is in no collection", field="collection_id")
        placement = _Placement(assets.OWNER_USER, who.user_id, None, None)
    else:
        raise ApiError(
            "invalid_argument", "`owner_type` must be `project`, `collection` or `user`", field="owner_type"
        )

    if placement.project_id is not None:
        project = session.get(Project, placement.project_id)
        assert project is not None
        used = project.used_bytes
        if used + new.size > project.allocation_bytes:
            raise ApiError(
                "quota_exceeded",
                f"{new.size} bytes do not fit: project {project.id!r} uses {used} of {project.allocation_bytes} bytes",
                project_id=project.id,
                allocation_bytes=project.allocation_bytes,
                used_bytes=used,
                requested_bytes=new.size,
            )
    return placement


@dataclass(frozen=True)
class _NewSessionAsk:
    """A request for a new session: who asks (their token, looked up in the check's
    transaction), and what."""

    bearer: Bearer
    new: NewUpload


@dataclass(frozen=True)
class _NewSessionRow:
    """A new session, checked, whose store upload is made: what its insert needs."""

    who: Principal
    new: NewUpload
    placement: _Placement
    upload_id: str
    handle: str
    session_ttl: int


def _insert_sessions(session: Session, sessions: list[_NewSessionRow]) -> list[dict[str, Any] | Exception]:
    """Insert the sessions checked in the transaction before, each to go where its placement says.

    The checks are not made again here: they read what creating a session does not change
    (access, and the bytes a project holds, which count completed content only), so two
    sessions created at once pass or fail them alike either way, and the completion checks
    the caller may still write there. The one thing another request can change meanwhile is
    the idempotency key's session: its ``UNIQUE`` constraint refuses a second one (the
    caller then answers with the first).

    One Core ``INSERT`` for all of them, and the views made from the values inserted (a new
    session holds no parts), where the ORM's unit of work and a query for the parts cost
    about twice as much.
    """
    rows = [_session_row(checked) for checked in sessions]
    session.connection().execute(insert(_SESSIONS), rows)
    return [_view(row["id"], OPEN, row, [], None) for row in rows]


def _session_row(checked: _NewSessionRow) -> dict[str, Any]:
    who, new, placement, upload_id = checked.who, checked.new, checked.placement, checked.upload_id
    now = utcnow()
    return {
        "id": upload_id,
        "user_id": who.user_id,
        "state": OPEN,
        "owner_type": placement.owner_type,
        "owner_id": placement.owner_id,
        "project_id": placement.project_id,
        "collection_id": placement.collection_id,
        "asset_id": new.asset_id,
        "title": new.title,
        "description": new.description,
        "alias": new.alias,
        "tags": new.tags,
        "metadata": new.metadata,
        "file_name": new.file_name,
        "path": new.path,
        "files": new.files,
        "size": new.size,
        "part_size": new.part_size,
        "part_count": new.part_count,
        "sha256": new.sha256,
        "idempotency_key": new.idempotency_key,
        "storage_handle": checked.handle,
        "bytes_received": 0,
        "created_at": now,
        "updated_at": now,
        "expires_at": now + timedelta(seconds=checked.session_ttl),
        "completed_at": None,
        "result_asset_id": None,
        "result_content_id": None,
    }


def _made_meanwhile(session: Session, who: Principal, key: str | None) -> dict[str, Any] | None:
    """The session another request made under ``key`` since this one checked, if any."""
    existing = _by_idempotency_key(session, who, key)
    return None if existing is None else session_view(session, existing)


def _open_part_slot(upload: UploadSession | _Slot, number: int, size: int) -> None:
    """Check the session takes part ``number`` of ``size`` bytes."""
    if upload.state != OPEN:
        raise ApiError(
            "conflict", f"upload {upload.id!r} is {upload.state}; it takes no more parts", state=upload.state
        )
    if not 1 <= number <= upload.part_count:
        raise ApiError(
            "invalid_argument",
            f"part number must be from 1 to {upload.part_count}",
            field="number",
            part_count=upload.part_count,
        )
    expected = expected_part_size(upload.size, upload.part_size, upload.part_count, number)
    if size != expected:
        raise ApiError(
            "invalid_argument",
            f"part {number} must be {expected} bytes, not {size}",
            field="size",
            expected_size=expected,
        )


def _record_part(
    session: Session, upload_id: str, stored: StoredPart, received: int, session_ttl: int
) -> str | None:
    """Record an accepted part and the ``received`` body bytes read for it.

    Returns None, or the session's state if it stopped taking parts meanwhile (the bytes
    still count: they were received for this session).
    """
    upload = session.scalars(select(UploadSession).where(UploadSession.id == upload_id).with_for_update()).one()
    upload.bytes_received += received
    if upload.state != OPEN:
        return upload.state
    now = utcnow()
    assert stored.sha256 is not None
    part = session.get(UploadPart, (upload_id, stored.number))
    if part is None:
        part = UploadPart(upload_id=upload_id, number=stored.number, writes=0)
        session.add(part)
    part.size, part.sha256, part.prefix = stored.size, stored.sha256, stored.prefix
    part.writes, part.updated_at = part.writes + 1, now
    upload.updated_at = now
    upload.expires_at = now + timedelta(seconds=session_ttl)
    return None


#: What a part target needs: its caller (the token) and its session, in one statement. The
#: part target is the request a fleet makes most (one per part), so it reads and writes
#: through Core, not the ORM, which cost about three times as much (docs/server.md,
#: "Requests per CPU second"); the token and the session are read together, a statement
#: (on PostgreSQL a round trip) fewer than one for each ("Third pass"). The session is
#: outer-joined: a row with no session still tells the token's errors first.
_PART_SLOT = (
    select(
        *PRINCIPAL_COLUMNS, _SESSIONS.c.id, _SESSIONS.c.user_id, _SESSIONS.c.state, _SESSIONS.c.size,
        _SESSIONS.c.part_size, _SESSIONS.c.part_count, _SESSIONS.c.storage_handle,
    )
    .select_from(PRINCIPAL_JOIN.outerjoin(_SESSIONS, _SESSIONS.c.id == bindparam("upload_id")))
    .where(PRINCIPAL_WHERE)
)


@dataclass(frozen=True)
class _Slot:
    """The columns of a session that :func:`_open_part_slot` checks."""

    id: str
    user_id: str
    state: str
    size: int
    part_size: int
    part_count: int
    storage_handle: str


def _part_slot(session: Session, bearer: Bearer, upload_id: str, number: int, size: int) -> str:
    """Check the caller (by its token) and that its session takes part ``number`` of ``size``
    bytes; the session's storage handle. The token's errors come first, as for any request."""
    row = session.connection().execute(
        _PART_SLOT, {"token_hash": bearer.token_hash, "upload_id": upload_id}
    ).one_or_none()
    who = bearer.principal(row)
    assert row is not None
    return _slot_handle(who, _Slot(*row[len(PRINCIPAL_COLUMNS):]), upload_id, number, size)


def _slot_handle(who: Principal, slot: _Slot | None, upload_id: str, number: int, size: int) -> str:
    if slot is None or slot.id is None or slot.user_id != who.user_id:
        raise ApiError("not_found", f"no upload session {upload_id!r}", upload_id=upload_id)
    _open_part_slot(slot, number, size)
    return slot.storage_handle


#: The sessions of several part targets in one statement (:func:`_part_slots`).
_SLOTS = select(
    _SESSIONS.c.id, _SESSIONS.c.user_id, _SESSIONS.c.state, _SESSIONS.c.size, _SESSIONS.c.part_size,
    _SESSIONS.c.part_count, _SESSIONS.c.storage_handle,
).where(_SESSIONS.c.id.in_(bindparam("upload_ids", expanding=True)))


def _part_slots(session: Session, asks: Sequence[_TargetAsk]) -> list[str | ApiError]:
    """What :func:`_part_slot` says of each ask (its session's handle, or the error it
    raises, in the same order of checks), in two statements for all of them: their tokens,
    then their sessions."""
    found = callers(session, [ask.bearer for ask in asks])
    slots = {
        row.id: _Slot(*row)
        for row in session.connection().execute(_SLOTS, {"upload_ids": sorted({ask.upload_id for ask in asks})})
    }
    handles: list[str | ApiError] = []
    for ask, who in zip(asks, found, strict=True):
        if isinstance(who, ApiError):
            handles.append(who)
            continue
        try:
            handles.append(_slot_handle(who, slots.get(ask.upload_id), ask.upload_id, ask.number, ask.size))
        except ApiError as exc:
            handles.append(exc)
    return handles


def _upsert_target(insert_: Callable[[Table], Any]) -> Any:
    statement = insert_(_TARGETS)
    return statement.on_conflict_do_update(
        index_elements=[_TARGETS.c.upload_id, _TARGETS.c.number],
        set_={"size": statement.excluded.size, "sha256": statement.excluded.sha256,
              "minted_at": statement.excluded.minted_at},
    )


#: The target's upsert, built once per dialect: building it per request (and so computing
#: its cache key afresh) cost about 0.3 ms of CPU, ten times its execution (docs/server.md,
#: "Third pass").
_UPSERT_TARGET: dict[str, Any] = {
    "postgresql": _upsert_target(postgresql.insert), "sqlite": _upsert_target(sqlite.insert),
}


#: The most part targets one transaction takes (:meth:`Uploads._mint_together`): a bound on
#: how long the last ask of a batch waits for the others' statements.
PART_TARGETS_PER_TRANSACTION: Final = 64
#: The most new sessions whose checks (and whose inserts) share a transaction.
NEW_SESSIONS_PER_TRANSACTION: Final = 32
#: The most completions whose plans (and whose records) share a transaction.
COMPLETIONS_PER_TRANSACTION: Final = 16


@dataclass(frozen=True)
class _TargetAsk:
    """One part target asked for: by whom, for which part, of what size and digest."""

    bearer: Bearer
    upload_id: str
    number: int
    size: int
    sha256: str


def _record_targets(session: Session, asks: Sequence[_TargetAsk]) -> None:
    """Insert or replace the parts' targets (one statement, ``ON CONFLICT DO UPDATE``, run
    for every row). A part asked for twice in one batch keeps the later ask. The rows go in
    key order, so that two server processes' batches lock the rows they share in the same
    order and never deadlock."""
    connection = session.connection()
    now = utcnow()
    rows = {
        (ask.upload_id, ask.number): {
            "upload_id": ask.upload_id, "number": ask.number, "size": ask.size, "sha256": ask.sha256, "minted_at": now,
        }
        for ask in asks
    }
    connection.execute(_UPSERT_TARGET[connection.dialect.name], [rows[key] for key in sorted(rows)])


def _expired_sessions(session: Session, now: datetime, limit: int) -> list[str]:
    query = (
        select(UploadSession.id)
        .where(UploadSession.state == OPEN, UploadSession.expires_at <= now)
        .order_by(UploadSession.expires_at)
        .limit(limit)
    )
    return list(session.scalars(query).all())


def _abort_if_expired(session: Session, upload_id: str, now: datetime) -> tuple[str, int] | None:
    """Abort an open session whose time ran out (checked again under its row lock: a part may
    have pushed its expiry meanwhile); its storage handle and bytes received, or None."""
    upload = session.scalars(select(UploadSession).where(UploadSession.id == upload_id).with_for_update()).one()
    if upload.state != OPEN or upload.expires_at > now:
        return None
    upload.state = ABORTED
    upload.updated_at = now
    session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
    session.execute(delete(UploadPartTarget).where(UploadPartTarget.upload_id == upload_id))
    return upload.storage_handle, upload.bytes_received


def _has_targets(session: Session, upload_id: str) -> bool:
    query = select(UploadPartTarget.number).where(UploadPartTarget.upload_id == upload_id).limit(1)
    return session.scalars(query).first() is not None


def _adopt_listed_parts(session: Session, upload_id: str, listed: Sequence[StoredPart]) -> None:
    """Record as held each part storage lists with the size of its newest direct target."""
    upload = session.scalars(select(UploadSession).where(UploadSession.id == upload_id).with_for_update()).one()
    if upload.state != OPEN:
        return
    targets = {t.number: t for t in session.scalars(
        select(UploadPartTarget).where(UploadPartTarget.upload_id == upload_id)).all()}
    now = utcnow()
    for stored in listed:
        target = targets.get(stored.number)
        if target is None or target.size != stored.size:
            continue
        part = session.get(UploadPart, (upload_id, stored.number))
        if part is None:
            session.add(UploadPart(upload_id=upload_id, number=stored.number, size=stored.size, sha256=target.sha256,
                                   writes=1, updated_at=now))
            upload.bytes_received += stored.size
        elif part.sha256 != target.sha256 and part.updated_at <= target.minted_at:
            part.size, part.sha256, part.writes, part.updated_at = stored.size, target.sha256, part.writes + 1, now
            upload.bytes_received += stored.size


def _count_received(session: Session, upload_id: str, received: int) -> None:
    """Add body bytes that were read for a part but not accepted (cut off, or refused)."""
    session.execute(
        update(UploadSession)
        .where(UploadSession.id == upload_id)
        .values(bytes_received=UploadSession.bytes_received + received)
    )


@dataclass(frozen=True)
class _Assembly:
    """What completion must assemble, found by :func:`_plan_completion`. ``told``: the parts
    are the direct targets with the ETags the client told of, not what the store listed."""

    handle: str
    parts: list[StoredPart]
    sha256: str
    told: bool = False


def _stored_completion(session: Session, who: Principal, key: str | None) -> UploadCompletion | None:
    if key is None:
        return None
    return session.scalars(
        select(UploadCompletion).where(UploadCompletion.user_id == who.user_id, UploadCompletion.idempotency_key == key)
    ).one_or_none()


def _adopt_result(upload: UploadSession, done: UploadCompletion) -> None:
    """Close ``upload`` with the result already stored under its completion key."""
    upload.state = COMPLETED
    upload.completed_at = upload.updated_at = utcnow()
    upload.result_asset_id, upload.result_content_id = done.asset_id, done.content_id
    upload.size, upload.sha256 = done.size, done.sha256


@dataclass(frozen=True)
class _Done:
    """A completion's stored result; the session's parts (if any are left) can go."""

    result: dict[str, Any]
    handle: str


@dataclass(frozen=True)
class _ListFirst:
    """The open session had parts sent straight to the store: list them before planning."""

    handle: str


@dataclass(frozen=True)
class _CompletionAsk:
    """A completion asked for: by whom (their token, looked up in the plan's transaction), of
    which session, under which key, with which digests."""

    bearer: Bearer
    upload_id: str
    key: str | None
    sha256: str | None
    file_sha256: list[str] | None
    etags: Mapping[int, str] | None = None
    #: The storage may have had parts sent straight to it (``Storage.direct_parts``).
    direct: bool = True


def _plan_completions(
    session: Session, asks: list[_CompletionAsk]
) -> list[tuple[Principal, _Done | _Assembly | _ListFirst] | Exception]:
    """Each ask's caller and plan (:func:`_plan_completion`), or the ``ApiError`` that is its
    own: their tokens in one statement, then each session locked and planned in turn, in the
    order of their ids (so that two server processes' batches never deadlock on the
    sessions they both lock, as the part targets' upserts go in key order)."""
    found = callers(session, [ask.bearer for ask in asks])
    planned: dict[int, tuple[Principal, _Done | _Assembly | _ListFirst] | Exception] = {}
    for i in sorted(range(len(asks)), key=lambda i: asks[i].upload_id):
        ask, who = asks[i], found[i]
        if isinstance(who, ApiError):
            planned[i] = who
            continue
        try:
            planned[i] = (who, _plan_completion(session, who, ask.upload_id, ask.key, ask.sha256, ask.file_sha256,
                                                etags=ask.etags, direct=ask.direct))
        except ApiError as exc:  # raised before the plan wrote anything
            planned[i] = exc
    return [planned[i] for i in range(len(asks))]


@dataclass(frozen=True)
class _ListedCompletion:
    """A completion whose session had parts sent straight to the store, with what the store
    listed: the parts to record as held before it is planned again."""

    who: Principal
    ask: _CompletionAsk
    listed: list[StoredPart]


def _plan_listed(session: Session, done: _ListedCompletion) -> _Done | _Assembly | _ListFirst:
    """Record the parts the store holds, then plan again. What is adopted stays whatever the
    plan answers (a part missing, a role lowered): it is what the store holds."""
    ask = done.ask
    _adopt_listed_parts(session, ask.upload_id, done.listed)
    return _plan_completion(session, done.who, ask.upload_id, ask.key, ask.sha256, ask.file_sha256,
                            direct_listed=True)


def _plan_listed_completions(
    session: Session, asks: list[_ListedCompletion]
) -> list[_Done | _Assembly | _ListFirst | Exception]:
    """:func:`_plan_listed` for each, in the order of the sessions' ids (as :func:`_plan_completions`)."""
    order = sorted(range(len(asks)), key=lambda i: asks[i].ask.upload_id)
    planned = dict(zip(order, Together.one_by_one(_plan_listed)(session, [asks[i] for i in order]), strict=True))
    return [planned[i] for i in range(len(asks))]


@dataclass(frozen=True)
class _CompletionRecord:
    """A completion's content, stored and verified: what its rows need."""

    who: Principal
    upload_id: str
    key: str | None
    size: int
    sha256: str
    storage_key: str
    file_sha256: list[str] | None
    #: Bytes of parts the client told of (sent straight to the store), counted as received now.
    told_bytes: int = 0


def _record_one(session: Session, done: _CompletionRecord, usage: projects.UsageChanges) -> tuple[dict[str, Any], bool]:
    return _record_completion(session, done.who, done.upload_id, done.key, done.size, done.sha256,
                              done.storage_key, done.file_sha256, usage, done.told_bytes)


def _record_alone(session: Session, done: _CompletionRecord) -> tuple[dict[str, Any], bool]:
    """One completion's record, its project's bytes counted in the same transaction."""
    usage = projects.UsageChanges()
    recorded = _record_one(session, done, usage)
    usage.apply(session)
    return recorded


def _record_completions(
    session: Session, records: list[_CompletionRecord]
) -> list[tuple[dict[str, Any], bool] | Exception]:
    """Each completion's record (:func:`_record_completion`), in the order of the sessions'
    ids, whose rows each locks (as :func:`_plan_completions`); then the projects' bytes, each
    project's row once, after every session's (:class:`~.projects.UsageChanges`)."""
    order = sorted(range(len(records)), key=lambda i: records[i].upload_id)
    usage = projects.UsageChanges()

    def record(s: Session, done: _CompletionRecord) -> tuple[dict[str, Any], bool]:
        return _record_one(s, done, usage)

    done = dict(zip(order, Together.one_by_one(record)(session, [records[i] for i in order]), strict=True))
    usage.apply(session)
    return [done[i] for i in range(len(records))]


def _plan_completion(
    session: Session,
    who: Principal,
    upload_id: str,
    key: str | None,
    sha256: str | None,
    file_sha256: list[str] | None,
    *,
    direct_listed: bool = False,
    etags: Mapping[int, str] | None = None,
    direct: bool = True,
) -> _Done | _Assembly | _ListFirst:
    """Either the stored result (already completed, or the key was used) or what to assemble;
    or, for an open session that had direct part targets and whose store was not asked yet
    (``direct_listed``), :class:`_ListFirst`, unless the client told the ETag of every part
    (``etags``) and each has a direct target: then those targets are what to assemble.
    Where the storage takes no parts straight (``direct`` false), there is nothing to ask."""
    upload = _own_session(session, who, upload_id, lock=True)
    told: dict[int, UploadPartTarget] | None = None
    if upload.state == OPEN and not direct_listed and direct:
        # Told parts: the targets are read anyway (none: nothing went straight to the store).
        targets = _targets(session, upload_id) if etags is not None else None
        if targets or (targets is None and _has_targets(session, upload_id)):
            told = _told_targets(session, upload, etags, targets or {})
            if told is None:
                return _ListFirst(upload.storage_handle)
    if upload.state == COMPLETED:
        result = result_view(upload)
        assert result is not None
        return _Done(result, upload.storage_handle)
    if upload.state == ABORTED:
        raise ApiError("conflict", f"upload {upload_id!r} was aborted", state=upload.state)
    done = _stored_completion(session, who, key)
    if done is not None:
        _adopt_result(upload, done)
        result = result_view(upload)
        assert result is not None
        return _Done(result, upload.storage_handle)
    if sha256 is not None and upload.sha256 is not None and sha256 != upload.sha256:
        raise ApiError("invalid_argument", "`sha256` differs from the one the session was created with", field="sha256")
    whole = sha256 or upload.sha256
    if whole is None:
        raise ApiError("invalid_argument", "`sha256` is required: the session was created without it", field="sha256")
    _check_file_digests(upload, whole, file_sha256)
    _check_still_writable(session, who, upload)
    if told is not None and etags is not None:
        parts = [StoredPart(number=n, size=t.size, sha256=t.sha256, etag=etags[n]) for n, t in sorted(told.items())]
        return _Assembly(handle=upload.storage_handle, parts=parts, sha256=whole, told=True)
    held = {p.number: p for p in session.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id)).all()}
    missing = [n for n in range(1, upload.part_count + 1) if n not in held]
    if missing:
        raise ApiError(
            "conflict", f"{len(missing)} part(s) missing; send them and complete again", missing_parts=missing
        )
    parts = [
        StoredPart(number=n, size=held[n].size, sha256=held[n].sha256, prefix=held[n].prefix)
        for n in range(1, upload.part_count + 1)
    ]
    return _Assembly(handle=upload.storage_handle, parts=parts, sha256=whole)


def _targets(session: Session, upload_id: str) -> dict[int, UploadPartTarget]:
    """The session's direct part targets (the newest of each part), by number."""
    return {t.number: t for t in session.scalars(
        select(UploadPartTarget).where(UploadPartTarget.upload_id == upload_id)).all()}


def _told_targets(
    session: Session, upload: UploadSession, etags: Mapping[int, str] | None, targets: dict[int, UploadPartTarget]
) -> dict[int, UploadPartTarget] | None:
    """Each part's newest direct target (of ``targets``), if the client told an ETag for every
    part (and no other) and each has one; else None (the store is to be asked which parts
    it holds).

    A part that went through the server since its target was minted is not the target's
    any more: the store holds what the server sent (None, then, too). No byte of a part
    reached the server (``bytes_received``, which a listed part adds to as well) where none
    did: then there is nothing to look for."""
    if etags is None or len(etags) != upload.part_count or not all(1 <= n <= upload.part_count for n in etags):
        return None
    if len(targets) != upload.part_count:
        return None
    if upload.bytes_received:
        sent_here = session.execute(
            select(UploadPart.number, UploadPart.updated_at).where(UploadPart.upload_id == upload.id)).all()
        if any(updated > targets[number].minted_at for number, updated in sent_here if number in targets):
            return None
    return targets


def _check_still_writable(session: Session, who: Principal, upload: UploadSession) -> None:
    """The caller must still be allowed to write where the content goes (a role may have
    been lowered while the parts were being sent)."""
    if upload.asset_id is not None:
        assets.writable_asset(session, who, upload.asset_id)
    elif upload.project_id is not None:
        projects.require_role(session, who, upload.project_id, projects.WRITER_ROLES)


def _check_file_digests(upload: UploadSession, whole: str, file_sha256: list[str] | None) -> None:
    """``file_sha256`` must have one digest per file; a one-file content's must be the whole digest."""
    if file_sha256 is None:
        return
    count = 1 if upload.files is None else len(upload.files)
    if len(file_sha256) != count:
        raise ApiError(
            "invalid_argument",
            f"`file_sha256` must list {count} digest(s), one per file in stream order, not {len(file_sha256)}",
            field="file_sha256",
        )
    if count == 1 and file_sha256[0] != whole:
        raise ApiError(
            "invalid_argument", "the one file's `file_sha256` must be the whole `sha256`", field="file_sha256"
        )


def _manifest_rows(
    upload: UploadSession, asset_path: str, content_id: str, sha256: str, file_sha256: list[str] | None
) -> list[dict[str, Any]]:
    """The content's ``content_files`` rows: the session's ``files``, or one file for the whole stream."""
    if upload.files is None:
        path = assets.default_file_path(upload.file_name, asset_path)
        return [{"content_id": content_id, "index": 0, "path": path, "offset": 0, "size": upload.size,
                 "sha256": sha256}]
    rows, offset = [], 0
    for index, entry in enumerate(upload.files):
        digest = None if file_sha256 is None else file_sha256[index]
        rows.append({"content_id": content_id, "index": index, "path": entry["path"], "offset": offset,
                     "size": entry["size"], "sha256": digest})
        offset += entry["size"]
    return rows


_ASSETS, _CONTENTS, _CONTENT_FILES, _COMPLETIONS = (
    cast(Table, model.__table__) for model in (Asset, Content, ContentFile, UploadCompletion)
)


def _record_completion(
    session: Session,
    who: Principal,
    upload_id: str,
    key: str | None,
    size: int,
    sha256: str,
    storage_key: str,
    file_sha256: list[str] | None,
    usage: projects.UsageChanges,
    told_bytes: int = 0,
) -> tuple[dict[str, Any], bool]:
    """Make the asset (or the new version) and store the result. Returns (result, whether this call made it).

    ``told_bytes``: the parts the client told of were never listed, so never counted in the
    session's ``bytes_received``; they are now.

    The content's bytes are added to its project's count in ``usage``, which the caller
    applies once its records are written (:class:`~.projects.UsageChanges`).

    The rows are written through Core, one statement each (the asset, the content, its
    manifest in one ``executemany``, the session, the completion record), not through the
    ORM's unit of work, which cost about as much again as the statements themselves
    (docs/server.md, "Requests per CPU second"). The session's row is locked first, as before.
    """
    upload = _own_session(session, who, upload_id, lock=True)
    if upload.state == COMPLETED:
        result = result_view(upload)
        assert result is not None
        return result, False
    if upload.state == ABORTED:
        raise ApiError("conflict", f"upload {upload_id!r} was aborted", state=upload.state)
    done = _stored_completion(session, who, key)
    if done is not None:
        _adopt_result(upload, done)
        result = result_view(upload)
        assert result is not None
        return result, False

    _check_still_writable(session, who, upload)
    connection = session.connection()
    now = utcnow()
    if upload.asset_id is not None:
        asset = assets.writable_asset(session, who, upload.asset_id)
        asset_id, project_id = asset.id, asset.project_id
        asset_path = upload.path if upload.path is not None else asset.path
        changes: dict[str, Any] = {"updated_at": now, "path": asset_path}
        connection.execute(update(_ASSETS).where(_ASSETS.c.id == asset_id).values(changes))
        # The asset's loaded row is not written again by the session (the statement did it).
        session.expunge(asset)
    else:
        asset_id, project_id = new_id("ast"), upload.project_id
        asset_path = upload.path or upload.file_name or asset_id
        connection.execute(
            insert(_ASSETS),
            {
                "id": asset_id,
                "title": upload.title if upload.title is not None else upload.file_name,
                "description": upload.description,
                "alias": upload.alias,
                "tags": list(upload.tags),
                "metadata": dict(upload.meta),
                "owner_type": upload.owner_type,
                "owner_id": upload.owner_id,
                "project_id": upload.project_id,
                "collection_id": upload.collection_id,
                "path": asset_path,
                "created_by": who.user_id,
                "created_at": now,
                "updated_at": now,
            },
        )
    content_id = new_id("cnt")
    connection.execute(
        insert(_CONTENTS),
        {
            "id": content_id,
            "asset_id": asset_id,
            "upload_id": upload.id,
            "size": size,
            "sha256": sha256,
            "file_name": upload.file_name,
            "storage_key": storage_key,
            "created_at": now,
        },
    )
    # One executemany, however many files (up to paths.MAX_FILES).
    connection.execute(insert(_CONTENT_FILES), _manifest_rows(upload, asset_path, content_id, sha256, file_sha256))
    usage.add(project_id, size)
    connection.execute(
        update(_SESSIONS)
        .where(_SESSIONS.c.id == upload.id)
        .values(state=COMPLETED, sha256=sha256, completed_at=now, updated_at=now, result_asset_id=asset_id,
                result_content_id=content_id, bytes_received=_SESSIONS.c.bytes_received + told_bytes)
    )
    # The loaded session is done with: nothing of it is to be flushed, and it must not be
    # mistaken for the row as it now is.
    session.expunge(upload)
    if key is not None:
        connection.execute(
            insert(_COMPLETIONS),
            {
                "id": new_id("cmp"),
                "user_id": who.user_id,
                "idempotency_key": key,
                "upload_id": upload.id,
                "asset_id": asset_id,
                "content_id": content_id,
                "size": size,
                "sha256": sha256,
                "created_at": now,
            },
        )
    return {"asset_id": asset_id, "content_id": content_id, "size": upload.size, "sha256": sha256}, True


# --- deduplication (proof of possession) ---------------------------------------------


def challenge_ranges(size: int) -> list[list[int]]:
    """Random ``[offset, length]`` ranges of a ``size``-byte content to prove possession with.

    :data:`DEDUP_RANGE_COUNT` ranges of :data:`DEDUP_RANGE_LENGTH` bytes (they may overlap),
    chosen with :mod:`secrets`, in offset order; for a small content shorter: at most half
    of it, so that no range is the whole content and its digest is never the content's own.
    An empty content needs no proof: no ranges. A content of one byte can only be asked for
    that byte (whose digest is the content's), once: nothing to protect there, since anyone
    can try all 256.
    """
    if size == 0:
        return []
    length = max(1, min(DEDUP_RANGE_LENGTH, size // 2))
    count = DEDUP_RANGE_COUNT if size > 1 else 1
    ranges = [[secrets.randbelow(size - length + 1), length] for _ in range(count)]
    return sorted(ranges)


def _insert_challenge(session: Session, who: Principal, upload_id: str, sha256: str) -> dict[str, Any]:
    """A new challenge for the caller's open session, whatever the repository holds."""
    upload = _own_session(session, who, upload_id)
    if upload.state != OPEN:
        raise ApiError(
            "conflict", f"upload {upload_id!r} is {upload.state}; it cannot be deduplicated", state=upload.state
        )
    if upload.sha256 is not None and upload.sha256 != sha256:
        raise ApiError("invalid_argument", "`sha256` differs from the one the session was created with", field="sha256")
    now = utcnow()
    challenge = DedupChallenge(
        id=new_id("chl"),
        upload_id=upload_id,
        sha256=sha256,
        ranges=challenge_ranges(upload.size),
        created_at=now,
        expires_at=now + timedelta(seconds=DEDUP_CHALLENGE_TTL_SECONDS),
        answered_at=None,
    )
    session.add(challenge)
    session.flush()
    return {
        "challenge_id": challenge.id,
        "ranges": [{"offset": offset, "length": length} for offset, length in challenge.ranges],
        "expires_at": isoformat(challenge.expires_at),
    }


@dataclass(frozen=True)
class _Claim:
    """A challenge answered (and used up): what to check the digests against.

    ``storage_key`` is a held content with the claimed digest and size, or None; nobody
    outside learns which.
    """

    handle: str
    sha256: str
    size: int
    ranges: list[list[int]]
    storage_key: str | None


def _no_match() -> ApiError:
    return ApiError(
        "conflict",
        "the proof does not match a content this repository holds; send the parts and complete as usual",
        reason="no_match",
    )


def _take_challenge(
    session: Session,
    who: Principal,
    upload_id: str,
    challenge_id: str,
    digests: list[str],
    key: str | None,
    file_sha256: list[str] | None,
) -> _Done | _Claim:
    """Use up the challenge (committed, whatever the outcome: a challenge answers once) and
    find the held content to check the answer against; or the stored result of a session
    already completed (a retry), as :func:`_plan_completion` does."""
    upload = _own_session(session, who, upload_id, lock=True)
    if upload.state == COMPLETED:
        return _Done(_deduplicated_result(session, upload), upload.storage_handle)
    if upload.state == ABORTED:
        raise ApiError("conflict", f"upload {upload_id!r} was aborted", state=upload.state)
    done = _stored_completion(session, who, key)
    if done is not None:
        _adopt_result(upload, done)
        return _Done(_deduplicated_result(session, upload), upload.storage_handle)
    challenge = session.scalars(
        select(DedupChallenge).where(DedupChallenge.id == challenge_id).with_for_update()
    ).one_or_none()
    if challenge is None or challenge.upload_id != upload_id:
        raise ApiError("not_found", f"upload {upload_id!r} has no challenge {challenge_id!r}", field="challenge_id")
    if challenge.answered_at is not None:
        raise ApiError("conflict", "this challenge was answered already; ask for a new one", reason="challenge_used")
    now = utcnow()
    if challenge.expires_at <= now:
        raise ApiError("conflict", "this challenge expired; ask for a new one", reason="challenge_expired")
    if len(digests) != len(challenge.ranges):
        raise ApiError(
            "invalid_argument",
            f"`digests` must list {len(challenge.ranges)} SHA-256, one per range in order",
            field="digests",
        )
    _check_file_digests(upload, challenge.sha256, file_sha256)
    _check_still_writable(session, who, upload)
    challenge.answered_at = now
    held = session.scalars(
        select(Content.storage_key)
        .where(Content.sha256 == challenge.sha256, Content.size == upload.size)
        .order_by(Content.created_at)
        .limit(1)
    ).first()
    return _Claim(upload.storage_handle, challenge.sha256, upload.size, list(challenge.ranges), held)


def _deduplicated_result(session: Session, upload: UploadSession) -> dict[str, Any]:
    """A completed session's result, saying whether its content shares another's bytes."""
    result = result_view(upload)
    assert result is not None
    content = session.get(Content, upload.result_content_id)
    return {**result, "deduplicated": content is not None and content.storage_key != upload.id}


def _record_deduplicated(
    session: Session,
    who: Principal,
    upload_id: str,
    key: str | None,
    claim: _Claim,
    file_sha256: list[str] | None,
) -> tuple[dict[str, Any], bool] | None:
    """Complete the session with a content sharing ``claim.storage_key``; None if no content
    uses that key any more (deleted since the challenge was taken).

    The content kept is locked first (``FOR UPDATE`` on PostgreSQL), so a deletion running
    at the same time either finishes before (and this finds nothing) or sees the new
    content and keeps the bytes (:func:`deletions.unreferenced_keys`).
    """
    assert claim.storage_key is not None
    kept = session.scalars(
        select(Content.id).where(Content.storage_key == claim.storage_key).limit(1).with_for_update()
    ).first()
    if kept is None:
        return None
    usage = projects.UsageChanges()
    recorded = _record_completion(
        session, who, upload_id, key, claim.size, claim.sha256, claim.storage_key, file_sha256, usage
    )
    usage.apply(session)
    return recorded


def _storage_key_of(session: Session, content_id: str | None) -> str | None:
    content = session.get(Content, content_id) if content_id is not None else None
    return None if content is None else content.storage_key


# --- the service ----------------------------------------------------------------------


class _KeyedLocks:
    """One ``anyio.Lock`` per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _CountingBody:
    """A request body that counts the bytes read from it (``received``), however far it gets."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._chunks = body.__aiter__()
        self.received = 0

    def __aiter__(self) -> _CountingBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self.received += len(chunk)
        return chunk


def _storage_failure(exc: OSError | StoreError, what: str) -> ApiError:
    """Log a storage operation's OS or store error for the operator and return what the client is told."""
    error = storage_failure(exc, what)
    cause = {"store_code": exc.code} if isinstance(exc, StoreError) else {"errno": exc.errno}
    log.warning("storage.failed", what=what, error=str(exc), code=error.code, **cause)
    return error


def _checksum_error(exc: ChecksumMismatch, **extra: Any) -> ApiError:
    return ApiError(
        "checksum_mismatch",
        str(exc),
        expected_size=exc.expected_size,
        actual_size=exc.actual_size,
        expected_sha256=exc.expected_sha256,
        actual_sha256=exc.actual_sha256,
        **extra,
    )


class Uploads:
    """The upload operations the routes call; each checks access and raises :class:`ApiError`."""

    def __init__(self, db: Database, storage: Storage, settings: Settings) -> None:
        self._db = db
        self._storage = storage
        self._settings = settings
        # Within one process, completions and aborts of one session take turns, so a
        # retried completion waits for the first instead of verifying the file twice.
        self._session_locks = _KeyedLocks()
        self._targets: Batcher[_TargetAsk, PresignedRequest | None] = Batcher(
            self._mint_together, most=PART_TARGETS_PER_TRANSACTION
        )
        # New sessions asked at the same moment share the check's transaction, and the insert's.
        self._new_session_checks: Together[_NewSessionAsk, tuple[Principal, dict[str, Any] | _Placement]] = (
            Together(db.read, self._check_new_sessions, most=NEW_SESSIONS_PER_TRANSACTION))
        self._new_session_inserts: Together[_NewSessionRow, dict[str, Any]] = Together(
            db.write, _insert_sessions, most=NEW_SESSIONS_PER_TRANSACTION)
        # Completions asked at the same moment share the plan's transaction, and the record's.
        self._completion_plans: Together[_CompletionAsk, tuple[Principal, _Done | _Assembly | _ListFirst]] = (
            Together(db.write, _plan_completions, most=COMPLETIONS_PER_TRANSACTION))
        # (and, for sessions whose parts went straight to the store, the plan after the listing)
        self._listed_plans: Together[_ListedCompletion, _Done | _Assembly | _ListFirst] = Together(
            db.write, _plan_listed_completions, most=COMPLETIONS_PER_TRANSACTION)
        self._completion_records: Together[_CompletionRecord, tuple[dict[str, Any], bool]] = Together(
            db.write, _record_completions, most=COMPLETIONS_PER_TRANSACTION)

    async def create(self, bearer: Bearer, new: NewUpload) -> tuple[dict[str, Any], bool]:
        """Open a session, or return the one made earlier with the same idempotency key.

        Returns the session and whether it was created now. ``bearer``'s token is looked up
        within the first transaction, so that a new session takes two: the token with the
        checks, then the insert after the storage made its upload, which needs no
        transaction open. Each is shared with the sessions asked at the same moment
        (:class:`~.db.Together`).
        """
        who, checked = await self._new_session_checks(_NewSessionAsk(bearer, new))
        if not isinstance(checked, _Placement):
            return self._with_part_digests(checked), False
        upload_id = new_id("upl")
        try:
            handle = await self._storage.create_upload(upload_id)
        except (OSError, StoreError) as exc:
            raise _storage_failure(exc, f"creating upload {upload_id}") from None
        ttl = self._settings.session_ttl_seconds
        created = False
        try:
            try:
                view = await self._new_session_inserts(_NewSessionRow(who, new, checked, upload_id, handle, ttl))
                created = True
            except IntegrityError:
                # Another request (perhaps in another process) made a session under the same
                # idempotency key since the check: that one is the answer.
                made = await self._db.read(lambda s: _made_meanwhile(s, who, new.idempotency_key))
                if made is None:
                    raise
                view = made
        finally:
            if not created:
                with anyio.CancelScope(shield=True):
                    await self._storage.abort(handle)
        return self._with_part_digests(view), created

    def _check_new_sessions(
        self, session: Session, asks: list[_NewSessionAsk]
    ) -> list[tuple[Principal, dict[str, Any] | _Placement] | Exception]:
        """For each ask: who asks, and the session made before under its idempotency key, else
        where the new one goes; or the ``ApiError`` that applies. The tokens are read in one
        statement, and so are the sessions already under the asks' keys."""
        found = callers(session, [ask.bearer for ask in asks])
        keys = sorted({(who.user_id, ask.new.idempotency_key) for who, ask in zip(found, asks, strict=True)
                       if isinstance(who, Principal) and ask.new.idempotency_key is not None})
        made = {(row.user_id, row.idempotency_key): row.id
                for row in session.connection().execute(_SESSIONS_BY_KEYS, {"keys": keys})} if keys else {}
        outcomes: list[tuple[Principal, dict[str, Any] | _Placement] | Exception] = []
        for who, ask in zip(found, asks, strict=True):
            if isinstance(who, ApiError):
                outcomes.append(who)
                continue
            try:
                self._check_part_sizes(ask.new)
                existing = made.get((who.user_id, ask.new.idempotency_key))
                if existing is not None:
                    upload = session.get(UploadSession, existing)
                    assert upload is not None
                    outcomes.append((who, session_view(session, upload)))
                else:
                    outcomes.append((who, _check_new_upload(session, who, ask.new)))
            except ApiError as exc:
                outcomes.append(exc)
        return outcomes

    def _check_part_sizes(self, new: NewUpload) -> None:
        """The part count and size this repository takes (after the token: errors keep their order)."""
        if new.part_count > MAX_PART_COUNT:
            raise ApiError(
                "invalid_argument",
                f"{new.part_count} parts is more than {MAX_PART_COUNT}: use parts of at least "
                f"{-(-new.size // MAX_PART_COUNT)} bytes",
                field="part_size",
            )
        smallest = self._storage.min_part_size
        if new.part_count > 1 and new.part_size < smallest:
            raise ApiError(
                "invalid_argument",
                f"this repository's storage takes parts of at least {smallest} bytes (all but the last)",
                field="part_size",
            )

    async def get(self, who: Principal, upload_id: str) -> dict[str, Any]:
        handle = await self._db.read(lambda s: _own_session(s, who, upload_id).storage_handle)
        await self._learn_direct_parts(upload_id, handle)
        return self._with_part_digests(await self._db.read(lambda s: session_view(s, _own_session(s, who, upload_id))))

    def _with_part_digests(self, view: dict[str, Any]) -> dict[str, Any]:
        """Add what a part target takes: a part's own digest, and perhaps its prefix digest
        (docs/http-api.md, "Prefix digests")."""
        view["part_digests"] = ["sha256", "prefix_sha256"] if self._storage.prefix_digests else ["sha256"]
        return view

    async def _learn_direct_parts(self, upload_id: str, handle: str) -> None:
        """Ask storage which parts sent straight to it (S3) it holds, and record them.

        The server never sees those bodies; the store verified each against the digest
        signed into its URL. Nothing to do for uploads that had no direct targets.
        """
        if not self._storage.direct_parts or not await self._db.read(lambda s: _has_targets(s, upload_id)):
            return
        listed = await self._stored_parts(upload_id, handle)
        await self._db.write(lambda s: _adopt_listed_parts(s, upload_id, listed))

    async def _stored_parts(self, upload_id: str, handle: str) -> list[StoredPart]:
        """The parts storage holds for the session; the store's own failure is ``unavailable``."""
        try:
            return await self._storage.list_parts(handle)
        except StoreError as exc:
            raise _storage_failure(exc, f"listing the parts of {upload_id}") from None

    async def part_target(
        self,
        bearer: Bearer,
        upload_id: str,
        number: int,
        size: int,
        sha256: str,
        *,
        prefix: bool = False,
    ) -> PresignedRequest | None:
        """Check the caller may send this part now; return where storage wants it, or None for the server itself.

        ``bearer`` is the caller's token, looked up within the check's transaction, in the
        same statement as the session. ``prefix``: ``sha256`` is the part's prefix digest, which
        only some storage takes.
        """
        if prefix and not self._storage.prefix_digests:
            raise ApiError(
                "invalid_argument",
                "this repository's storage checks each part against its own `sha256`; send that instead",
                field="prefix_sha256",
            )

        return await self._targets(_TargetAsk(bearer, upload_id, number, size, sha256))

    def _mint_batch(self, session: Session, batch: list[Pending[_TargetAsk, PresignedRequest | None]]) -> None:
        """Every ask of ``batch`` in one transaction: each checked and signed, answered or
        refused alone, then the targets of all the signed ones recorded in one upsert. The
        checks read the batch's tokens and sessions in two statements, where asks one by
        one would take a statement each (on PostgreSQL a round trip each)."""
        if len(batch) == 1:
            try:
                batch[0].answer(self._mint_alone(session, batch[0].item))
            except ApiError as exc:  # raised before any write: the transaction holds nothing
                batch[0].fail(exc)
            return
        ttl = self._settings.url_ttl_seconds
        signed: list[_TargetAsk] = []
        for pending, handle in zip(batch, _part_slots(session, [p.item for p in batch]), strict=True):
            if isinstance(handle, ApiError):  # raised before any write: the transaction goes on
                pending.fail(handle)
                continue
            ask = pending.item
            direct = self._storage.part_url(handle, ask.number, ask.size, ask.sha256, ttl)
            pending.answer(direct)
            if direct is not None:
                signed.append(ask)
        if signed:
            _record_targets(session, signed)

    async def _mint_together(self, batch: list[Pending[_TargetAsk, PresignedRequest | None]]) -> None:
        """Part targets asked at the same moment share a transaction and a thread hop.

        A fleet asks for a part target per part, more than for anything else: at a few
        hundred a second the transaction (on PostgreSQL a ping, BEGIN and COMMIT, each a
        round trip) and the hop to a worker thread cost more than the target's own
        statements (docs/server.md, "Fifth pass"). The URLs are handed out after the
        commit, as before. If the batch's write fails as a whole (its upsert, or the
        commit), nothing of it was written, and each ask is made again alone, so that
        one ask's failure stays its own.
        """
        try:
            await self._db.write(partial(self._mint_batch, batch=batch))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].fail(exc)
                return
            for pending in batch:
                try:
                    pending.answer(await self._db.write(partial(self._mint_alone, ask=pending.item)))
                except Exception as alone:
                    pending.fail(alone)

    def _mint_alone(self, session: Session, ask: _TargetAsk) -> PresignedRequest | None:
        """Check the caller and the part (in one statement), sign the part's URL and record its target."""
        handle = _part_slot(session, ask.bearer, ask.upload_id, ask.number, ask.size)
        direct = self._storage.part_url(handle, ask.number, ask.size, ask.sha256, self._settings.url_ttl_seconds)
        if direct is not None:
            _record_targets(session, [ask])
        return direct

    async def put_part(
        self, upload_id: str, number: int, size: int, sha256: str, body: AsyncIterable[bytes], *, prefix: bool = False
    ) -> dict[str, Any]:
        """Take a part's bytes from a (signed, already verified) part URL.

        The answer carries the digests the part was stored with (:func:`_part_view`): with
        ``prefix``, ``prefix_sha256`` if the prefix digest was checked, else only the part's
        own ``sha256``, which the client compares with its own bytes (docs/http-api.md).
        """

        def check(session: Session) -> str:
            upload = session.get(UploadSession, upload_id)
            if upload is None:
                raise ApiError("not_found", f"no upload session {upload_id!r}", upload_id=upload_id)
            _open_part_slot(upload, number, size)
            return upload.storage_handle

        handle = await self._db.read(check)
        counted = _CountingBody(body)
        try:
            stored = await self._storage.put_part(handle, number, counted, size, sha256, prefix=prefix)
        except ChecksumMismatch as exc:
            await self._count_unaccepted(upload_id, counted.received)
            raise _checksum_error(exc, number=number) from None
        except OSError as exc:
            # A full or failing disk: the storage removed what it had begun, and the part is
            # not recorded. The rest of the body is not read (bodies.py answers at once).
            await self._count_unaccepted(upload_id, counted.received)
            raise _storage_failure(exc, f"storing part {number} of {upload_id}") from None
        except BaseException:
            # Mostly the client went away mid-body (or was killed): what it sent still counts.
            await self._count_unaccepted(upload_id, counted.received)
            raise
        ttl = self._settings.session_ttl_seconds
        if stored.sha256 is None:
            stored = StoredPart(number=number, size=stored.size, sha256=sha256, prefix=prefix)
        stopped = await self._db.write(lambda s: _record_part(s, upload_id, stored, counted.received, ttl))
        if stopped is not None:
            # Completed or aborted while the bytes were arriving: this part is not wanted.
            await self._storage.release_parts(handle)
            raise ApiError("conflict", f"upload {upload_id!r} is {stopped}; it takes no more parts", state=stopped)
        own = None if stored.prefix else stored.sha256
        prefix_sha256 = stored.sha256 if stored.prefix or number == 1 else None
        return {"number": number, "size": stored.size, "sha256": own, "prefix_sha256": prefix_sha256}

    async def _count_unaccepted(self, upload_id: str, received: int) -> None:
        """Add the bytes of a part body that was not accepted to the session's ``bytes_received``.

        Best effort, and never in the way of the error being reported: it runs shielded
        (a request being cancelled still counts its bytes) and a failure is only logged.
        """
        if received == 0:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._db.write(lambda s: _count_received(s, upload_id, received))
            except Exception as exc:
                log.warning("upload.count_failed", upload_id=upload_id, received=received, error=repr(exc))

    async def complete(
        self,
        bearer: Bearer,
        upload_id: str,
        key: str | None,
        sha256: str | None,
        file_sha256: list[str] | None = None,
        etags: Mapping[int, str] | None = None,
    ) -> dict[str, Any]:
        """Turn the parts into a new asset (or version) exactly once; see the module docstring.

        ``file_sha256`` (one per file, in stream order) is stored as the uploader reports it.
        ``etags``: the ETag the store answered for each part sent straight to it, by number,
        as the client tells them; with every part's, the store is not asked which it holds.
        ``bearer``'s token is looked up within the first transaction: a completion takes two,
        the plan and the record, besides the storage's work, each shared with the
        completions asked at the same moment (:class:`~.db.Together`).
        """
        async with self._session_locks.hold(upload_id):
            # One transaction for the token, the session's lock and the plan (it was four:
            # the token, the session, its direct targets, the plan).
            ask = _CompletionAsk(bearer, upload_id, key, sha256, file_sha256, etags, self._storage.direct_parts)
            who, plan = await self._completion_plans(ask)
            content = None
            if isinstance(plan, _Assembly) and plan.told:
                try:
                    content = await self._assemble(upload_id, plan)
                except StorageError as exc:
                    # Not the parts the store holds (an ETag wrong, a part never sent): ask it.
                    log.info("upload.told_parts_refused", upload_id=upload_id, error=str(exc))
                    plan = _ListFirst(plan.handle)
            if isinstance(plan, _ListFirst):
                # Parts sent straight to the store (S3): ask it which it holds, outside any
                # transaction, then record them and plan again in one (shared as the plan's).
                listed = await self._stored_parts(upload_id, plan.handle)
                plan = await self._listed_plans(_ListedCompletion(who, ask, listed))
            assert not isinstance(plan, _ListFirst)
            if isinstance(plan, _Done):
                await self._storage.release_parts(plan.handle)
                return plan.result
            storage_key = upload_id  # the same key on every attempt: a retry overwrites, never duplicates
            if content is None:
                try:
                    content = await self._assemble(upload_id, plan)
                except StorageError as exc:
                    # What is stored is not what was recorded: the server's fault, not a passing one.
                    log.error("upload.assemble_failed", upload_id=upload_id, error=str(exc))
                    raise
            told_bytes = sum(p.size for p in plan.parts) if plan.told else 0
            record = _CompletionRecord(who, upload_id, key, content.size, content.sha256, storage_key, file_sha256,
                                       told_bytes)
            try:
                result, made = await self._completion_records(record)
            except IntegrityError:
                # Another process stored a result under this key first: adopt it.
                result, made = await self._db.write(lambda s: _record_alone(s, record))
            if not made:
                # Someone else's completion won: our object goes, the way every unused one does
                # (queued, then deleted unless a content uses it; a failure is swept later).
                winner_key = await self._db.read(lambda s: _storage_key_of(s, result["content_id"]))
                if winner_key != storage_key:
                    await self._db.write(lambda s: deletions.queue(s, [storage_key]))
                    await deletions.delete_queued(self._db, self._storage, [storage_key])
            if content.parts_left:
                await self._storage.release_parts(plan.handle)
            log.info("upload.completed", upload_id=upload_id, asset_id=result["asset_id"], size=content.size)
            return result

    async def _assemble(self, upload_id: str, plan: _Assembly) -> StoredContent:
        """The content ``plan``'s parts make, stored under the session's id (the same key on
        every attempt: a retry overwrites, never duplicates). Raises :class:`StorageError`
        where the parts are not what the store holds."""
        try:
            return await self._storage.complete(plan.handle, plan.parts, upload_id, plan.sha256)
        except ChecksumMismatch as exc:
            await self._forget_lost_parts(upload_id, plan.handle)
            raise _checksum_error(exc) from None
        except (OSError, StoreError) as exc:
            # The file system's or the store's own failure (the store refused, or did not
            # answer): the condition may pass, and the client may ask again.
            raise _storage_failure(exc, f"completing {upload_id}") from None

    async def dedup_challenge(self, who: Principal, upload_id: str, sha256: str) -> dict[str, Any]:
        """A proof-of-possession challenge for completing ``upload_id`` with held content ``sha256``.

        Made whether or not the repository holds such a content, so the answer tells nothing.
        """
        return await self._db.write(lambda s: _insert_challenge(s, who, upload_id, sha256))

    async def dedup_prove(
        self,
        who: Principal,
        upload_id: str,
        challenge_id: str,
        digests: list[str],
        key: str | None,
        file_sha256: list[str] | None = None,
    ) -> dict[str, Any]:
        """Complete the session with the held content the challenge's answer proves possession of.

        The new content (its own id, asset or version, manifest) shares the held content's
        storage key: no bytes are copied. ``conflict`` with ``reason: no_match`` when no
        content with that digest and size is held or a digest differs (the same answer for
        both), and the session stays open. A completed session (or a used completion key)
        returns the stored result, as :meth:`complete` does.
        """
        arrived = anyio.current_time()
        async with self._session_locks.hold(upload_id):
            claim = await self._db.write(
                lambda s: _take_challenge(s, who, upload_id, challenge_id, digests, key, file_sha256)
            )
            if isinstance(claim, _Done):
                return claim.result
            if claim.storage_key is None or not await self._ranges_match(claim.storage_key, claim.ranges, digests):
                log.info("upload.dedup_refused", upload_id=upload_id)
                # Held or not, a refusal takes (at least) the same time.
                await anyio.sleep_until(arrived + DEDUP_REFUSAL_FLOOR_SECONDS)
                raise _no_match()
            try:
                recorded = await self._db.write(
                    lambda s: _record_deduplicated(s, who, upload_id, key, claim, file_sha256)
                )
            except IntegrityError:
                # Another process stored a result under this key first: adopt it.
                recorded = await self._db.write(
                    lambda s: _record_deduplicated(s, who, upload_id, key, claim, file_sha256)
                )
            if recorded is None:
                raise _no_match()
            result, made = recorded
            # Parts sent before the proof are not needed: the content is the held one.
            await self._storage.abort(claim.handle)
            deduplicated = await self._db.read(lambda s: _deduplicated_result(s, _own_session(s, who, upload_id)))
            log.info("upload.deduplicated", upload_id=upload_id, asset_id=result["asset_id"], size=claim.size,
                     made=made)
            return deduplicated

    async def _ranges_match(self, key: str, ranges: list[list[int]], digests: list[str]) -> bool:
        """Whether each range of stored content ``key`` has its digest (every range is read)."""
        matched = True
        for (offset, length), expected in zip(ranges, digests, strict=True):
            digest = hashlib.sha256()
            try:
                async with aclosing(self._storage.read_range(key, offset, length)) as blocks:
                    async for block in blocks:
                        digest.update(block)
            except StorageError as exc:
                log.warning("upload.dedup_read_failed", storage_key=key, error=str(exc))
                return False
            # Bytes: compare_digest refuses str with non-ASCII characters (these are checked hex, but
            # a check elsewhere must not be what keeps this from answering 500).
            matched = hmac.compare_digest(digest.hexdigest().encode(), expected.encode()) and matched
        return matched

    async def _forget_lost_parts(self, upload_id: str, handle: str) -> None:
        """After a failed assembly, drop records of parts the storage no longer holds (a store
        such as S3 may consume parts on completion), so the session says what to re-send."""
        held = {p.number for p in await self._storage.list_parts(handle)}

        def forget(session: Session) -> None:
            session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id, UploadPart.number.not_in(held)))

        await self._db.write(forget)

    async def abort_expired(self, batch: int = 100) -> int:
        """Abort the open sessions past their ``expires_at`` and drop their parts; how many.

        A client that comes back later finds its session ``aborted`` and starts a new one
        (the daemon does). Safe beside other server processes on the same database: each
        session is checked again under its row lock, and aborting storage twice is harmless.
        """
        aborted = 0
        while True:
            now = utcnow()
            expired = await self._db.read(partial(_expired_sessions, now=now, limit=batch))
            for upload_id in expired:
                async with self._session_locks.hold(upload_id):
                    found = await self._db.write(partial(_abort_if_expired, upload_id=upload_id, now=now))
                    if found is None:
                        continue
                    handle, received = found
                    # Once aborted in the database, the parts must go too, even at shutdown.
                    with anyio.move_on_after(ABORT_GRACE_SECONDS) as removing:
                        removing.shield = True
                        await self._storage.abort(handle)
                aborted += 1
                log.info("upload.expired", upload_id=upload_id, bytes_received=received)
            if len(expired) < batch:
                return aborted

    async def abort(self, who: Principal, upload_id: str) -> None:
        """Abort an open session and drop its parts. Aborting twice is fine; a completed one is ``conflict``."""
        async with self._session_locks.hold(upload_id):

            def mark(session: Session) -> str:
                upload = _own_session(session, who, upload_id, lock=True)
                if upload.state == COMPLETED:
                    raise ApiError(
                        "conflict", f"upload {upload_id!r} is completed; it cannot be aborted", state=upload.state
                    )
                upload.state = ABORTED
                upload.updated_at = utcnow()
                session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
                session.execute(delete(UploadPartTarget).where(UploadPartTarget.upload_id == upload_id))
                return upload.storage_handle

            handle = await self._db.write(mark)
            await self._storage.abort(handle)
