"""Projects: creation (with root collection, owner membership and allocation), reading, membership.

Access is by membership: any member (``owner``, ``editor``, ``viewer``) reads the
project and everything in it; ``owner`` and ``editor`` change its assets and
collections; only an ``owner`` manages members. A non-member is told ``not_found``
(the project's existence is not leaked); a member without the role needed is told
``permission_denied``.

Functions take a SQLAlchemy session and run inside the caller's transaction
(see ``db.Database``); they return plain dicts shaped as in ``docs/http-api.md``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .auth import Principal
from .clock import isoformat, new_id, utcnow
from .errors import ApiError
from .models import Asset, Collection, Content, Membership, Project, User

OWNER = "owner"
EDITOR = "editor"
VIEWER = "viewer"
ROLES = (OWNER, EDITOR, VIEWER)
#: The roles that may change a project's assets and collections.
WRITER_ROLES = (OWNER, EDITOR)


def used_bytes(session: Session, project_id: str) -> int:
    """Bytes of stored content (every version of every asset) counted against the project."""
    return int(session.scalar(select(Project.used_bytes).where(Project.id == project_id)) or 0)


def counted_bytes(session: Session, project_id: str) -> int:
    """What :func:`used_bytes` must equal: the project's contents summed (for checks, not for requests)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Content.size), 0))
        .join(Asset, Content.asset_id == Asset.id)
        .where(Asset.project_id == project_id)
    )
    return int(total or 0)


class UsageChanges:
    """Contents added to and removed from projects in one transaction, to be counted at its end.

    :meth:`apply` updates each project's row once, in the order of their ids, after the
    transaction's other writes: on PostgreSQL the row stays locked only from there to the
    commit, and two transactions that both count bytes in several projects lock them in
    one order (no deadlock between them).
    """

    def __init__(self) -> None:
        self._bytes: dict[str, int] = {}

    def add(self, project_id: str | None, size: int) -> None:
        if project_id is not None:
            self._bytes[project_id] = self._bytes.get(project_id, 0) + size

    def remove(self, project_id: str | None, size: int) -> None:
        self.add(project_id, -size)

    def apply(self, session: Session) -> None:
        for project_id in sorted(self._bytes):
            if self._bytes[project_id]:
                session.execute(
                    update(Project)
                    .where(Project.id == project_id)
                    .values(used_bytes=Project.used_bytes + self._bytes[project_id])
                    .execution_options(synchronize_session=False)
                )
        self._bytes.clear()


def member_role_or_none(session: Session, who: Principal, project_id: str) -> str | None:
    """The caller's role in the project, or None if they are not a member."""
    membership = session.get(Membership, (project_id, who.user_id))
    return None if membership is None else membership.role


def member_role(session: Session, who: Principal, project_id: str) -> str:
    """The caller's role in the project; ``not_found`` if there is no such project or they are not a member
    (a non-member cannot tell the two apart)."""
    role = member_role_or_none(session, who, project_id)
    if role is None:
        raise ApiError("not_found", f"no project {project_id!r} visible to you", project_id=project_id)
    return role


def require_role(session: Session, who: Principal, project_id: str, roles: tuple[str, ...]) -> str:
    """The caller's role, which must be one of ``roles``: ``not_found`` for a non-member,
    ``permission_denied`` for a member with another role."""
    role = member_role(session, who, project_id)
    if role not in roles:
        raise ApiError(
            "permission_denied",
            f"your role in project {project_id!r} is {role}; this needs {' or '.join(roles)}",
            project_id=project_id,
            role=role,
        )
    return role


def project_view(session: Session, project: Project, role: str) -> dict[str, Any]:
    return {
        "project_id": project.id,
        "name": project.name,
        "description": project.description,
        "root_collection_id": project.root_collection_id,
        "allocation_bytes": project.allocation_bytes,
        "used_bytes": project.used_bytes,
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
        used_bytes=0,
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


def list_projects(session: Session, who: Principal) -> list[dict[str, Any]]:
    """The projects the caller is a member of, oldest first."""
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == who.user_id)
        .order_by(Project.created_at, Project.id)
    ).all()
    return [project_view(session, project, role) for project, role in rows]


def member_view(membership: Membership, user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "role": membership.role,
        "created_at": isoformat(membership.created_at),
    }


def list_members(session: Session, who: Principal, project_id: str) -> list[dict[str, Any]]:
    """The project's members (any member may read them), in the order they joined."""
    member_role(session, who, project_id)
    rows = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.project_id == project_id)
        .order_by(Membership.created_at, User.email)
    ).all()
    return [member_view(membership, user) for membership, user in rows]


def set_member(
    session: Session, who: Principal, project_id: str, email: str, role: str
) -> tuple[dict[str, Any], bool]:
    """Add the user with ``email`` to the project with ``role``, or change their role (owners only).

    Returns the member and whether they are new. ``not_found`` (``field: email``) if no
    user has that email; ``conflict`` if it would leave the project without an owner.
    """
    require_role(session, who, project_id, (OWNER,))
    user = session.scalars(select(User).where(User.email == email)).one_or_none()
    if user is None:
        raise ApiError("not_found", f"no user with email {email!r}; add one with `dataerai-server users add`",
                       field="email")
    membership = session.get(Membership, (project_id, user.id))
    if membership is None:
        membership = Membership(project_id=project_id, user_id=user.id, role=role, created_at=utcnow())
        session.add(membership)
        session.flush()
        return member_view(membership, user), True
    if membership.role == OWNER and role != OWNER:
        owners = session.scalar(
            select(func.count()).where(Membership.project_id == project_id, Membership.role == OWNER)
        )
        if owners == 1:
            raise ApiError("conflict", f"{email} is the project's last owner; make someone else owner first")
    membership.role = role
    session.flush()
    return member_view(membership, user), False
