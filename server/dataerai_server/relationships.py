"""Relationships: directed provenance links between assets, with qualifiers.

A link goes from the dependent asset (``from_asset_id``, the source) to the one it
came from (``to_asset_id``, the target). Making one needs write access on the source
and read access on the target (see ``assets`` for the access model): ``not_found``
when the caller cannot see one of them, ``permission_denied`` when they see the
source but may not change it. Functions run inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from . import assets
from .auth import Principal
from .clock import isoformat, new_id, utcnow
from .errors import ApiError
from .models import Asset, Relationship

OUTGOING: Final = "outgoing"
INCOMING: Final = "incoming"


@dataclass(frozen=True)
class NewRelationship:
    """A validated ``POST /assets/{id}/relationships`` body (``qualifier_time`` already in UTC)."""

    to_asset_id: str
    rel_type: str
    analysis_mode: str | None = None
    qualifier_note: str | None = None
    qualifier_time: datetime | None = None
    qualifiers: dict[str, Any] | None = None


def _related(asset: Asset) -> dict[str, Any]:
    return {"id": asset.id, "title": asset.title, "owner_type": asset.owner_type, "owner_id": asset.owner_id}


def relationship_view(link: Relationship, related: Asset) -> dict[str, Any]:
    """The link as the API shows it; ``related_asset`` is the other end, seen from where it is read."""
    return {
        "relationship_id": link.id,
        "type": link.rel_type,
        "from_asset_id": link.from_asset_id,
        "to_asset_id": link.to_asset_id,
        "related_asset": _related(related),
        "analysis_mode": link.analysis_mode,
        "qualifier_note": link.qualifier_note,
        "qualifier_time": isoformat_precise(link.qualifier_time),
        "qualifiers": link.qualifiers,
        "created_by": link.created_by,
        "created_at": isoformat(link.created_at),
    }


def isoformat_precise(value: datetime | None) -> str | None:
    """Like ``clock.isoformat``, but keeping the microseconds a qualifier time was given with."""
    if value is None or value.microsecond == 0:
        return isoformat(value)
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def create_relationship(session: Session, who: Principal, from_asset_id: str, new: NewRelationship) -> dict[str, Any]:
    """Link ``from_asset_id`` to ``new.to_asset_id``; see the module docstring for the access checks."""
    if new.to_asset_id == from_asset_id:
        raise ApiError("invalid_argument", "an asset cannot be related to itself", field="to_asset_id")
    assets.readable_asset(session, who, from_asset_id)
    target = assets.readable_asset(session, who, new.to_asset_id)
    assets.writable_asset(session, who, from_asset_id)
    link = Relationship(
        id=new_id("rel"),
        from_asset_id=from_asset_id,
        to_asset_id=target.id,
        rel_type=new.rel_type,
        analysis_mode=new.analysis_mode,
        qualifier_note=new.qualifier_note,
        qualifier_time=new.qualifier_time,
        qualifiers=new.qualifiers,
        created_by=who.user_id,
        created_at=utcnow(),
    )
    session.add(link)
    session.flush()
    return relationship_view(link, target)


def list_relationships(session: Session, who: Principal, asset_id: str) -> list[dict[str, Any]]:
    """The asset's links, outgoing and incoming (``direction``), oldest first.

    A link whose other end the caller cannot read is left out: listing must not
    reveal assets the caller could not get by id.
    """
    asset = assets.readable_asset(session, who, asset_id)
    links = session.scalars(
        select(Relationship)
        .where(or_(Relationship.from_asset_id == asset.id, Relationship.to_asset_id == asset.id))
        .order_by(Relationship.created_at, Relationship.id)
    ).all()
    views = []
    for link in links:
        outgoing = link.from_asset_id == asset.id
        other = session.get(Asset, link.to_asset_id if outgoing else link.from_asset_id)
        if other is not None and assets.can_read(session, who, other):
            views.append({**relationship_view(link, other), "direction": OUTGOING if outgoing else INCOMING})
    return views
