"""API tokens: issuing them (``users add``) and turning a bearer header into a :class:`Principal`.

A token is ``dtk_`` + ``secrets.token_urlsafe(32)`` (256 random bits). The database keeps
only its SHA-256, so neither a database copy nor a log line can be replayed as a token.
Nothing here logs a token or an ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from .clock import new_id, utcnow
from .errors import ApiError
from .models import Token, User

TOKEN_PREFIX: Final = "dtk_"
READ: Final = "read"
WRITE: Final = "write"
#: ``--scope`` of ``users add`` → the scopes stored; ``write`` implies ``read``.
SCOPE_SETS: Final[dict[str, tuple[str, ...]]] = {READ: (READ,), WRITE: (READ, WRITE)}


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what the presented token allows."""

    user_id: str
    email: str
    scopes: tuple[str, ...]
    token_expires_at: datetime | None

    def require(self, scope: str) -> None:
        """Raise ``permission_denied`` unless the token has ``scope``."""
        if scope not in self.scopes:
            raise ApiError("permission_denied", f"this token lacks the `{scope}` scope", required_scope=scope)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, email: str, scopes: Sequence[str], expires_at: datetime | None) -> str:
    """Create a token for ``email`` (creating the user if new) and return it; only its hash is stored."""
    user = session.scalars(select(User).where(User.email == email)).one_or_none()
    now = utcnow()
    if user is None:
        user = User(id=new_id("usr"), email=email, created_at=now)
        session.add(user)
        session.flush()
    token = new_token()
    session.add(
        Token(
            id=new_id("tok"),
            user_id=user.id,
            token_hash=token_hash(token),
            scopes=list(scopes),
            expires_at=expires_at,
            created_at=now,
        )
    )
    return token


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer ...`` header; ``auth_required`` if there is none."""
    if not authorization:
        raise ApiError(
            "auth_required", "send `Authorization: Bearer <token>`; create one with `dataerai-server users add`"
        )
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise ApiError("auth_required", "the Authorization header must be `Bearer <token>`")
    return value


def lookup_principal(session: Session, token: str, now: datetime) -> Principal:
    """The principal a token stands for. ``auth_required`` if unknown, ``auth_expired`` if expired."""
    row = session.execute(
        select(Token, User).join(User, Token.user_id == User.id).where(Token.token_hash == token_hash(token))
    ).one_or_none()
    if row is None:
        raise ApiError("auth_required", "unknown token; create one with `dataerai-server users add`")
    tok, user = row
    if tok.expires_at is not None and tok.expires_at <= now:
        raise ApiError("auth_expired", "this token has expired; ask for a new one")
    return Principal(user_id=user.id, email=user.email, scopes=tuple(tok.scopes), token_expires_at=tok.expires_at)
