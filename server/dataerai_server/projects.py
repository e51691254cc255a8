"""Projects: creation (with root collection, owner membership and allocation), reading, membership.

Functions take a SQLAlchemy session and run inside the caller's transaction
(see ``db.Database``); they return plain dicts shaped as in ``docs/http-api.md``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .auth import Principal
from .clock import isoformat, new_id, utcnow
from .errors import ApiError
from .models import Asset, Collection, Content, Membership, Project

OWNER = "owner"


def used_bytes(session: Session, project_id: str) -> int:
    """Bytes of stored content (every version of every asset) counted against the project."""
    total = session.scalar(
        select(func.coalesce(func.sum(Content.size), 0))
        .join(Asset, Content.asset_id == Asset.id)
        .where(Asset.project_id == project_id)
    )
    return int(total or 0)


def member_role(session: Session, who: Principal, project_id: str) -> str:
    """The caller's role in the project; ``not_found`` if there is no such project or they are not a member
    (a non-member cannot tell the two apart)."""
    membership = session.get(Membership, (project_id, who.user_id))
    if membership is None:
        raise ApiError("not_found", f"no project {project_id!r} visible to you", project_id=project_id)
    return membership.role


def project_view(session: Session, project: Project, role: str) -> dict[str, Any]:
    return {
        "project_id": project.id,
        "name": project.name,
        "description": project.description,
        "root_collection_id": project.root_collection_id,
        "allocation_bytes": project.allocation_bytes,
        "used_bytes": used_bytes(session, project.id),
        "role": role,
        "created_at": isoformat(project.created_at),
    }


def create_project(
    session: Session, who: Principal, name: str, description: str, allocation_bytes: int
) -> dict[str, Any]:
    """Create a project, its root collection, the caller's ``owner`` membership and its allocation."""
    now = utcnow()
    project = Project(
        id=new_id("prj"),
        name=name,
        description=description,
        root_collection_id=new_id("col"),
        allocation_bytes=allocation_bytes,
        created_by=who.user_id,
        created_at=now,
    )
    session.add(project)
    session.flush()
    session.add(
        Collection(id=project.root_collection_id, project_id=project.id, parent_id=None, name="", created_at=now)
    )
    session.add(Membership(project_id=project.id, user_id=who.user_id, role=OWNER, created_at=now))
    session.flush()
    return project_view(session, project, OWNER)


def get_project(session: Session, who: Principal, project_id: str) -> dict[str, Any]:
    role = member_role(session, who, project_id)
    project = session.get(Project, project_id)
    assert project is not None  # a membership implies its project (foreign key)
    return project_view(session, project, role)
