"""Assets and their content versions: access, reading, listing, metadata changes, deletion, files.

Functions take a SQLAlchemy session and run inside the caller's transaction.

Access: an asset owned by a project or by one of its collections is read by the
project's members and changed by its owners and editors; a user-owned asset is read
and changed by that user alone. An asset the caller may not read is ``not_found``
(its existence is not leaked); one they may read but not change is ``permission_denied``.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from . import deletions, paths, project_collections, projects
from .auth import Principal
from .clock import isoformat, utcnow
from .errors import ApiError
from .models import Asset, Content, ContentFile, Relationship
from .schemas import DEFAULT_LIMIT

OWNER_PROJECT = "project"
OWNER_USER = "user"
OWNER_COLLECTION = "collection"



# --- access -------------------------------------------------------------------------


def can_read(session: Session, who: Principal, asset: Asset) -> bool:
    if asset.owner_type == OWNER_USER:
        return asset.owner_id == who.user_id
    return asset.project_id is not None and projects.member_role_or_none(session, who, asset.project_id) is not None


def readable_asset(session: Session, who: Principal, asset_id: str) -> Asset:
    """The asset if the caller may read it, else ``not_found``."""
    asset = session.get(Asset, asset_id)
    if asset is None or not can_read(session, who, asset):
        raise ApiError("not_found", f"no asset {asset_id!r} visible to you", asset_id=asset_id)
    return asset


def writable_asset(session: Session, who: Principal, asset_id: str) -> Asset:
    """The asset if the caller may change it: ``not_found`` if they cannot even read it,
    ``permission_denied`` if they only read it (a project ``viewer``)."""
    asset = readable_asset(session, who, asset_id)
    if asset.owner_type != OWNER_USER:
        assert asset.project_id is not None
        role = projects.member_role(session, who, asset.project_id)
        if role not in projects.WRITER_ROLES:
            raise ApiError(
                "permission_denied",
                f"you are a {role} of project {asset.project_id!r}; changing asset {asset_id!r} "
                f"needs {' or '.join(projects.WRITER_ROLES)}",
                asset_id=asset_id,
                role=role,
            )
    return asset


# --- views --------------------------------------------------------------------------


def latest_content(session: Session, asset_id: str) -> Content | None:
    return session.scalars(
        select(Content)
        .where(Content.asset_id == asset_id)
        .order_by(Content.created_at.desc(), Content.id.desc())
        .limit(1)
    ).first()


def file_view(row: ContentFile) -> dict[str, Any]:
    return {"path": row.path, "offset": row.offset, "size": row.size, "sha256": row.sha256}


def content_files(session: Session, content_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The manifests of these contents, each in stream order."""
    found: dict[str, list[dict[str, Any]]] = {content_id: [] for content_id in content_ids}
    if content_ids:
        rows = session.scalars(
            select(ContentFile)
            .where(ContentFile.content_id.in_(content_ids))
            .order_by(ContentFile.content_id, ContentFile.index)
        )
        for row in rows:
            found[row.content_id].append(file_view(row))
    return found


def content_view(content: Content, files: list[dict[str, Any]] | int) -> dict[str, Any]:
    """A content's view: with its manifest (``files``), or only how many files it has."""
    view: dict[str, Any] = {
        "content_id": content.id,
        "size": content.size,
        "sha256": content.sha256,
        "file_name": content.file_name,
        "file_count": files if isinstance(files, int) else len(files),
        "created_at": isoformat(content.created_at),
    }
    if not isinstance(files, int):
        view["files"] = files
    return view


def _file_counts(session: Session, content_ids: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(content_ids, 0)
    if content_ids:
        query = (
            select(ContentFile.content_id, func.count())
            .where(ContentFile.content_id.in_(content_ids))
            .group_by(ContentFile.content_id)
        )
        counts.update({content_id: count for content_id, count in session.execute(query).tuples()})
    return counts


def asset_views(session: Session, assets: list[Asset], *, manifests: bool = True) -> list[dict[str, Any]]:
    """The API views of ``assets``, with a fixed number of queries however many there are.

    Without ``manifests`` (listings) each latest content tells how many files it has,
    not which: a page of assets stays small even when each holds 100,000 files, whose
    manifests ``GET /assets/{id}/files`` pages through.
    """
    ids = [asset.id for asset in assets]
    latest: dict[str, Content] = {}
    if ids:
        for content in session.scalars(select(Content).where(Content.asset_id.in_(ids))):
            best = latest.get(content.asset_id)
            if best is None or (content.created_at, content.id) > (best.created_at, best.id):
                latest[content.asset_id] = content
    content_ids = [content.id for content in latest.values()]
    files = content_files(session, content_ids) if manifests else _file_counts(session, content_ids)
    return [_asset_view(asset, latest.get(asset.id), files) for asset in assets]


def _asset_view(asset: Asset, latest: Content | None, files: Mapping[str, list[dict[str, Any]]] | Mapping[str, int]
                ) -> dict[str, Any]:
    return {
        "asset_id": asset.id,
        "title": asset.title,
        "description": asset.description,
        "alias": asset.alias,
        "path": asset.path,
        "tags": list(asset.tags),
        "metadata": dict(asset.meta),
        "owner_type": asset.owner_type,
        "owner_id": asset.owner_id,
        "project_id": asset.project_id,
        "collection_id": asset.collection_id,
        "created_by": asset.created_by,
        "created_at": isoformat(asset.created_at),
        "updated_at": isoformat(asset.updated_at),
        "latest_content": None if latest is None else content_view(latest, files[latest.id]),
    }


def asset_view(session: Session, asset: Asset) -> dict[str, Any]:
    return asset_views(session, [asset])[0]


def get_asset(session: Session, who: Principal, asset_id: str) -> dict[str, Any]:
    return asset_view(session, readable_asset(session, who, asset_id))


def patch_asset(session: Session, who: Principal, asset_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply already-validated ``changes`` (API field names, see ``schemas.AssetPatch``)."""
    asset = writable_asset(session, who, asset_id)
    for name, value in changes.items():
        setattr(asset, "meta" if name == "metadata" else name, value)
    asset.updated_at = utcnow()
    session.flush()
    return asset_view(session, asset)


def default_file_path(file_name: str | None, asset_path: str) -> str:
    """The path of a one-file content's file: its ``file_name``, else the last segment of the asset's path."""
    return file_name if file_name is not None else posixpath.basename(asset_path)


# --- contents -------------------------------------------------------------------------


def content_to_read(session: Session, who: Principal, asset_id: str, content_id: str | None) -> Content:
    """The content a download of the asset reads: ``content_id`` if given (it must be a version
    of this asset), else the latest. ``not_found`` if there is none."""
    asset = readable_asset(session, who, asset_id)
    if content_id is not None:
        content = session.get(Content, content_id)
        if content is None or content.asset_id != asset.id:
            raise ApiError("not_found", f"asset {asset_id!r} has no content {content_id!r}", content_id=content_id)
        return content
    latest = latest_content(session, asset.id)
    if latest is None:
        raise ApiError("not_found", f"asset {asset_id!r} has no content yet", asset_id=asset_id)
    return latest


def download_source(
    session: Session, who: Principal, asset_id: str, content_id: str | None
) -> tuple[Content, list[dict[str, Any]]]:
    """:func:`content_to_read` and that content's files, read in one transaction."""
    content = content_to_read(session, who, asset_id, content_id)
    return content, content_files(session, [content.id])[content.id]


def file_info(session: Session, who: Principal, asset_id: str, content_id: str | None, path: str) -> dict[str, Any]:
    """The file at exactly ``path`` in the content (default: the latest), else ``not_found``."""
    content = content_to_read(session, who, asset_id, content_id)
    row = session.scalars(
        select(ContentFile).where(ContentFile.content_id == content.id, ContentFile.path == path)
    ).one_or_none()
    if row is None:
        raise ApiError("not_found", f"content {content.id!r} has no file {path!r}", path=path, content_id=content.id)
    return {**file_view(row), "content_id": content.id}


def list_files(
    session: Session,
    who: Principal,
    asset_id: str,
    content_id: str | None,
    prefix: str | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """A page of the content's files (default: the latest content) in stream order, optionally
    only those whose path starts with ``prefix``."""
    content = content_to_read(session, who, asset_id, content_id)
    after = -1 if cursor is None else _decode_cursor(cursor, 1)[0]
    if not isinstance(after, int):
        raise _bad_cursor()
    query = select(ContentFile).where(ContentFile.content_id == content.id, ContentFile.index > after)
    if prefix:
        query = query.where(_starts_with(ContentFile.path, prefix))
    rows = session.scalars(query.order_by(ContentFile.index).limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "content_id": content.id,
        "files": [{**file_view(row), "content_id": content.id} for row in page],
        "next_cursor": _encode_cursor([page[-1].index]) if len(rows) > limit else None,
    }


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetQuery:
    """A validated ``GET /assets`` query: exactly one of ``project_id`` and ``collection_id``."""

    project_id: str | None
    collection_id: str | None
    path_prefix: str | None = None
    glob: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def _encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _bad_cursor() -> ApiError:
    return ApiError("invalid_argument", "`cursor` is not one this server handed out", field="cursor")


def _decode_cursor(cursor: str, length: int) -> list[Any]:
    """The key a cursor from :func:`_encode_cursor` holds; ``invalid_argument`` if it is not one."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise _bad_cursor() from None
    if not isinstance(key, list) or len(key) != length:
        raise _bad_cursor()
    return key


def _starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    # Not LIKE: SQLite's is case-insensitive and `%`/`_` would need escaping.
    return func.substr(column, 1, len(prefix)) == prefix


def list_assets(session: Session, who: Principal, query: AssetQuery) -> dict[str, Any]:
    """A page of a project's (or a collection's own) assets, ordered by path, then id.

    Paths may be narrowed by ``path_prefix`` (a plain string prefix) and ``glob`` (see
    ``paths.glob_regex``). ``next_cursor`` is set when more assets match.
    """
    if query.collection_id is not None:
        collection = project_collections.visible_collection(session, who, query.collection_id)
        scope: ColumnElement[bool] = Asset.collection_id == collection.id
    else:
        assert query.project_id is not None
        projects.member_role(session, who, query.project_id)
        scope = Asset.project_id == query.project_id
    base = select(Asset).where(scope)
    for prefix in (query.path_prefix, None if query.glob is None else paths.literal_prefix(query.glob)):
        if prefix:
            base = base.where(_starts_with(Asset.path, prefix))
    pattern = None if query.glob is None else paths.glob_regex(query.glob)
    after = None if query.cursor is None else _decode_cursor(query.cursor, 2)
    # Rows are filtered by the glob here, so read in batches until the page (and one
    # more, to know whether there is a next page) is full.
    batch = query.limit + 1 if pattern is None else max(query.limit + 1, 500)
    matched: list[Asset] = []
    while len(matched) <= query.limit:
        page = base
        if after is not None:
            path, asset_id = after
            page = page.where(or_(Asset.path > path, and_(Asset.path == path, Asset.id > asset_id)))
        rows = session.scalars(page.order_by(Asset.path, Asset.id).limit(batch)).all()
        matched.extend(row for row in rows if pattern is None or pattern.fullmatch(row.path))
        if len(rows) < batch:
            break
        after = [rows[-1].path, rows[-1].id]
    shown = matched[: query.limit]
    more = len(matched) > query.limit
    return {
        "assets": asset_views(session, shown, manifests=False),
        "next_cursor": _encode_cursor([shown[-1].path, shown[-1].id]) if more else None,
    }


# --- deletion -------------------------------------------------------------------------------


def delete_asset(session: Session, who: Principal, asset_id: str) -> list[str]:
    """Delete the asset, its contents' rows and every relationship from or to it.

    Returns the storage keys of its contents that no content uses any more, queued for
    deletion in this transaction (:mod:`deletions`): the caller deletes them from storage
    after it commits, and a failure or a crash in between leaves them queued for the
    server's sweep, never a row pointing at missing bytes. A deduplicated content
    shares its storage key with the content it matched, so a key another content still
    uses is kept: the bytes go with the last content that uses them.
    """
    asset = writable_asset(session, who, asset_id)
    contents = session.scalars(select(Content).where(Content.asset_id == asset.id)).all()
    content_ids = [content.id for content in contents]
    if content_ids:
        session.execute(delete(ContentFile).where(ContentFile.content_id.in_(content_ids)))
    session.execute(
        delete(Relationship).where(or_(Relationship.from_asset_id == asset.id, Relationship.to_asset_id == asset.id))
    )
    session.execute(delete(Content).where(Content.asset_id == asset.id))
    session.execute(delete(Asset).where(Asset.id == asset.id))
    usage = projects.UsageChanges()
    usage.remove(asset.project_id, sum(content.size for content in contents))
    usage.apply(session)
    unused = deletions.unreferenced_keys(session, [content.storage_key for content in contents])
    deletions.queue(session, unused)
    return unused
