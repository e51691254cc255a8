"""Collections: named groups of a project's assets, in a tree under the project's root collection.

Functions take a SQLAlchemy session and run inside the caller's transaction. A
collection is readable by the members of its project and created by its owners
and editors (see ``projects`` for the access model).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import projects
from .auth import Principal
from .clock import isoformat, new_id, utcnow
from .errors import ApiError
from .models import Collection, Project


def collection_view(collection: Collection) -> dict[str, Any]:
    return {
        "collection_id": collection.id,
        "project_id": collection.project_id,
        "parent_id": collection.parent_id,
        "name": collection.name,
        "created_at": isoformat(collection.created_at),
    }


def visible_collection(session: Session, who: Principal, collection_id: str) -> Collection:
    """The collection if the caller is a member of its project, else ``not_found``."""
    collection = session.get(Collection, collection_id)
    if collection is None or projects.member_role_or_none(session, who, collection.project_id) is None:
        raise ApiError("not_found", f"no collection {collection_id!r} visible to you", collection_id=collection_id)
    return collection


def create_collection(
    session: Session, who: Principal, project_id: str, name: str, parent_id: str | None
) -> dict[str, Any]:
    """A new collection under ``parent_id`` (default: the project's root collection); owners and editors only."""
    projects.require_role(session, who, project_id, projects.WRITER_ROLES)
    project = session.get(Project, project_id)
    assert project is not None  # a membership implies its project
    parent = session.get(Collection, parent_id or project.root_collection_id)
    if parent is None or parent.project_id != project_id:
        raise ApiError(
            "not_found", f"project {project_id!r} has no collection {parent_id!r}", field="parent_id"
        )
    collection = Collection(id=new_id("col"), project_id=project_id, parent_id=parent.id, name=name,
                            created_at=utcnow())
    session.add(collection)
    session.flush()
    return collection_view(collection)


def get_collection(session: Session, who: Principal, collection_id: str) -> dict[str, Any]:
    return collection_view(visible_collection(session, who, collection_id))


def list_collections(session: Session, who: Principal, project_id: str) -> list[dict[str, Any]]:
    """Every collection of the project, the root first, then oldest first."""
    projects.member_role(session, who, project_id)
    rows = session.scalars(
        select(Collection)
        .where(Collection.project_id == project_id)
        .order_by(Collection.parent_id.is_not(None), Collection.created_at, Collection.id)
    ).all()
    return [collection_view(collection) for collection in rows]
