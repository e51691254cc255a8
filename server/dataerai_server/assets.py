"""Assets and their content versions: visibility, reading, metadata changes.

Functions take a SQLAlchemy session and run inside the caller's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .auth import Principal
from .clock import isoformat, utcnow
from .errors import ApiError
from .models import Asset, Content, Membership

OWNER_PROJECT = "project"
OWNER_USER = "user"


def visible_asset(session: Session, who: Principal, asset_id: str) -> Asset:
    """The asset if the caller may see it, else ``not_found``.

    A project's asset is visible to the project's members; a user's asset only to that user.
    """
    asset = session.get(Asset, asset_id)
    if asset is not None:
        if asset.owner_type == OWNER_USER and asset.owner_id == who.user_id:
            return asset
        if asset.project_id is not None and session.get(Membership, (asset.project_id, who.user_id)) is not None:
            return asset
    raise ApiError("not_found", f"no asset {asset_id!r} visible to you", asset_id=asset_id)


def latest_content(session: Session, asset_id: str) -> Content | None:
    return session.scalars(
        select(Content)
        .where(Content.asset_id == asset_id)
        .order_by(Content.created_at.desc(), Content.id.desc())
        .limit(1)
    ).first()


def content_view(content: Content) -> dict[str, Any]:
    return {
        "content_id": content.id,
        "size": content.size,
        "sha256": content.sha256,
        "file_name": content.file_name,
        "created_at": isoformat(content.created_at),
    }


def asset_view(session: Session, asset: Asset) -> dict[str, Any]:
    latest = latest_content(session, asset.id)
    return {
        "asset_id": asset.id,
        "title": asset.title,
        "description": asset.description,
        "alias": asset.alias,
        "tags": list(asset.tags),
        "metadata": dict(asset.meta),
        "owner_type": asset.owner_type,
        "owner_id": asset.owner_id,
        "project_id": asset.project_id,
        "collection_id": asset.collection_id,
        "created_by": asset.created_by,
        "created_at": isoformat(asset.created_at),
        "updated_at": isoformat(asset.updated_at),
        "latest_content": None if latest is None else content_view(latest),
    }


def get_asset(session: Session, who: Principal, asset_id: str) -> dict[str, Any]:
    return asset_view(session, visible_asset(session, who, asset_id))


#: The fields PATCH may change, by their API names.
PATCHABLE = ("title", "description", "alias", "tags", "metadata")


def patch_asset(session: Session, who: Principal, asset_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply already-validated ``changes`` (API field names, see :data:`PATCHABLE`)."""
    asset = visible_asset(session, who, asset_id)
    for name, value in changes.items():
        setattr(asset, "meta" if name == "metadata" else name, value)
    asset.updated_at = utcnow()
    session.flush()
    return asset_view(session, asset)


def content_to_read(session: Session, who: Principal, asset_id: str, content_id: str | None) -> Content:
    """The content a download of the asset reads: ``content_id`` if given (it must be a version
    of this asset), else the latest. ``not_found`` if there is none."""
    asset = visible_asset(session, who, asset_id)
    if content_id is not None:
        content = session.get(Content, content_id)
        if content is None or content.asset_id != asset.id:
            raise ApiError("not_found", f"asset {asset_id!r} has no content {content_id!r}", content_id=content_id)
        return content
    latest = latest_content(session, asset.id)
    if latest is None:
        raise ApiError("not_found", f"asset {asset_id!r} has no content yet", asset_id=asset_id)
    return latest
