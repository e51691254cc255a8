"""API tokens: issuing (``users add``), listing and revoking them (``tokens list``,
``tokens revoke``), and turning a bearer header into a :class:`Principal`.

A token is ``dtk_`` + ``secrets.token_urlsafe(32)`` (256 random bits). The database keeps
only its SHA-256 and its first 8 characters, so neither a database copy nor a log line
can be replayed as a token. Nothing here logs a token or an ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .clock import isoformat, new_id, utcnow
from .errors import ApiError
from .models import Token, User

TOKEN_PREFIX: Final = "dtk_"
#: How much of a token ``tokens list`` shows: ``dtk_`` and 4 of its 43 random characters
#: (24 of 256 bits), enough to tell one's own tokens apart.
PREFIX_LENGTH: Final = len(TOKEN_PREFIX) + 4
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
            prefix=token[:PREFIX_LENGTH],
        )
    )
    return token


def token_rows(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Every token, oldest first, as ``tokens list`` shows it: never the token or its hash."""
    rows = session.execute(select(Token, User).join(User, Token.user_id == User.id).order_by(Token.created_at))
    return [
        {
            "id": tok.id,
            "prefix": tok.prefix,
            "user_id": user.id,
            "email": user.email,
            "scopes": list(tok.scopes),
            "created_at": isoformat(tok.created_at),
            "expires_at": isoformat(tok.expires_at),
            "revoked_at": isoformat(tok.revoked_at),
            "state": _state(tok, now),
        }
        for tok, user in rows
    ]


def _state(tok: Token, now: datetime) -> str:
    if tok.revoked_at is not None:
        return "revoked"
    if tok.expires_at is not None and tok.expires_at <= now:
        return "expired"
    return "active"


def revoke_token(session: Session, id_or_token: str, now: datetime) -> tuple[str, datetime | None]:
    """Revoke a token given by its id (``tok_…``) or as the token itself (``dtk_…``).

    Returns its id and, if it was revoked already, when (it stays revoked as it was).
    Raises LookupError if there is no such token.
    """
    if id_or_token.startswith(TOKEN_PREFIX):
        tok = session.scalars(select(Token).where(Token.token_hash == token_hash(id_or_token))).one_or_none()
    else:
        tok = session.get(Token, id_or_token)
    if tok is None:
        raise LookupError(id_or_token)
    earlier = tok.revoked_at
    if earlier is None:
        tok.revoked_at = now
    return tok.id, earlier


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


_TOKENS, _USERS = Token.__table__, User.__table__
#: What a request's token stands for, and the tables it is read from: a query that needs
#: more (the part target's, with its session) selects these columns first, from this join
#: (or one built on it), and hands its row to :meth:`Bearer.principal`.
PRINCIPAL_COLUMNS: Final = (_TOKENS.c.revoked_at, _TOKENS.c.expires_at, _TOKENS.c.scopes, _USERS.c.id, _USERS.c.email)
PRINCIPAL_JOIN: Final = _TOKENS.join(_USERS, _TOKENS.c.user_id == _USERS.c.id)
#: Which token: its hash, bound as ``token_hash``.
PRINCIPAL_WHERE: Final = _TOKENS.c.token_hash == bindparam("token_hash")
#: The one query every authenticated request makes: Core on the tables, not the ORM, which
#: cost about three times as much per request (docs/server.md, "Requests per CPU second").
_PRINCIPAL = select(*PRINCIPAL_COLUMNS).select_from(PRINCIPAL_JOIN).where(PRINCIPAL_WHERE)
#: The tokens of several requests in one statement (a batch of part targets): each row is
#: :data:`PRINCIPAL_COLUMNS`, then the token's hash.
_PRINCIPALS = (
    select(*PRINCIPAL_COLUMNS, _TOKENS.c.token_hash)
    .select_from(PRINCIPAL_JOIN)
    .where(_TOKENS.c.token_hash.in_(bindparam("token_hashes", expanding=True)))
)


def lookup_principal(session: Session, token: str, now: datetime) -> Principal:
    """The principal a token stands for. ``auth_required`` if unknown, ``auth_expired`` if expired."""
    row = session.connection().execute(_PRINCIPAL, {"token_hash": token_hash(token)}).one_or_none()
    return principal_from_row(row, now)


def principal_rows(session: Session, hashes: Iterable[str]) -> dict[str, Sequence[Any]]:
    """The rows of :meth:`Bearer.principal` for the tokens of these hashes, by hash (an
    unknown token has none)."""
    rows = session.connection().execute(_PRINCIPALS, {"token_hashes": sorted(set(hashes))})
    return {row[-1]: row for row in rows}


def callers(session: Session, bearers: Sequence[Bearer]) -> list[Principal | ApiError]:
    """Who each bearer is, with its scope required, or the ``ApiError`` that is its own: all
    their tokens read in one statement (requests that share a transaction)."""
    principals = principal_rows(session, [bearer.token_hash for bearer in bearers])
    found: list[Principal | ApiError] = []
    for bearer in bearers:
        try:
            found.append(bearer.principal(principals.get(bearer.token_hash)))
        except ApiError as exc:
            found.append(exc)
    return found


def principal_from_row(row: Sequence[Any] | None, now: datetime) -> Principal:
    """The principal of a row that starts with :data:`PRINCIPAL_COLUMNS` (None: no such token).
    ``auth_required`` if unknown, ``auth_expired`` if revoked or expired."""
    if row is None:
        raise ApiError("auth_required", "unknown token; create one with `dataerai-server users add`")
    revoked_at, expires_at, scopes, user_id, email = row[:len(PRINCIPAL_COLUMNS)]
    # Read from the database on every request (nothing caches a principal), so a revocation
    # by another process holds from the next request on.
    if revoked_at is not None:
        raise ApiError("auth_expired", "this token was revoked; ask for a new one")
    if expires_at is not None and expires_at <= now:
        raise ApiError("auth_expired", "this token has expired; ask for a new one")
    return Principal(user_id=user_id, email=email, scopes=tuple(scopes), token_expires_at=expires_at)


@dataclass(frozen=True)
class Bearer:
    """A request's bearer token, not looked up yet, and the scope its operation needs.

    A handler looks it up inside its own transaction, so the token costs no transaction of
    its own: :meth:`principal` on the row of a query that read the token together with what
    the request is about, or with the tokens of the requests that share the transaction
    (:func:`principal_rows`).
    """

    token: str
    scope: str

    @property
    def token_hash(self) -> str:
        return token_hash(self.token)

    def principal(self, row: Sequence[Any] | None) -> Principal:
        """The caller from a row that starts with :data:`PRINCIPAL_COLUMNS`, with the scope required."""
        principal = principal_from_row(row, utcnow())
        principal.require(self.scope)
        return principal
