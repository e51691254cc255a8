"""The database schema as SQLAlchemy ORM classes.

The migrations in ``migrations/versions`` create exactly this schema (a test compares
them). Portable SQLAlchemy only: the same tables run on SQLite and PostgreSQL.
Sizes are ``BigInteger`` (files pass 2 GiB); times are stored as naive UTC and read
back timezone-aware; lists and objects are ``JSON``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(40)
SHA256 = String(64)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored naive so SQLite and PostgreSQL agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ServerSetting(Base):
    """Server-wide values every server process on this database shares (the URL-signing secret)."""

    __tablename__ = "server_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Token(Base):
    """An API token. Only ``sha256(token)`` is kept: a database leak yields no usable token."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(SHA256, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set by ``tokens revoke``; the token is refused from then on (migration 0007).
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: The token's first characters (``dtk_`` and 4 of its 43), so an administrator can tell
    #: which token is which; None for tokens issued before migration 0007.
    prefix: Mapped[str | None] = mapped_column(String(12), default=None)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    # Not a foreign key: the project and its root collection point at each other.
    root_collection_id: Mapped[str] = mapped_column(ID)
    allocation_bytes: Mapped[int] = mapped_column(BigInteger)
    # The sizes of its assets' contents (every version), kept in step with them in the
    # transaction that adds or removes one (``projects.UsageChanges``): the quota check at
    # each new session reads this row instead of summing the project's contents.
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Collection(Base):
    __tablename__ = "collections"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("collections.id"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    __tablename__ = "memberships"
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Asset(Base):
    __tablename__ = "assets"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    alias: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(JSON)
    # ``metadata`` is taken by the declarative base, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    owner_type: Mapped[str] = mapped_column(String(20))
    owner_id: Mapped[str] = mapped_column(ID)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)
    collection_id: Mapped[str | None] = mapped_column(ForeignKey("collections.id"))
    # A relative POSIX path (``paths.path_problem``), for listing by prefix or glob;
    # not unique: two assets may share one. The default only serves the migration.
    path: Mapped[str] = mapped_column(String(1024), server_default="")
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Content(Base):
    """One version of an asset's bytes, kept in storage under ``storage_key``."""

    __tablename__ = "contents"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id"), index=True)
    upload_id: Mapped[str | None] = mapped_column(ID)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(SHA256)
    file_name: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContentFile(Base):
    """One file of a content: the bytes ``[offset, offset + size)`` of its stream, at ``path``.

    Every content has at least one row (a single file is a manifest of one). ``sha256`` is
    what the uploader reported for the file (stored as given); the server verifies only
    the whole stream's digest, except for a one-file content, where the two are the same.
    """

    __tablename__ = "content_files"
    __table_args__ = (UniqueConstraint("content_id", "path"),)
    content_id: Mapped[str] = mapped_column(ForeignKey("contents.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(SHA256)


class Relationship(Base):
    """A directed provenance link: ``from_asset_id`` (the dependent) → ``to_asset_id`` (the origin)."""

    __tablename__ = "relationships"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    from_asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id"), index=True)
    to_asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id"), index=True)
    rel_type: Mapped[str] = mapped_column(String(255))
    analysis_mode: Mapped[str | None] = mapped_column(String(20))
    qualifier_note: Mapped[str | None] = mapped_column(Text)
    qualifier_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    qualifiers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UploadSession(Base):
    """A resumable upload: what will be made when it completes, and how far it got."""

    __tablename__ = "upload_sessions"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(20))
    owner_type: Mapped[str] = mapped_column(String(20))
    owner_id: Mapped[str] = mapped_column(ID)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)
    collection_id: Mapped[str | None] = mapped_column(ID)
    asset_id: Mapped[str | None] = mapped_column(ID)
    title: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    alias: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    file_name: Mapped[str | None] = mapped_column(Text)
    # The asset path to set on completion (None: the default, see ``uploads``).
    path: Mapped[str | None] = mapped_column(String(1024))
    # ``[{"path", "size"}, ...]`` in stream order for a multi-file content; None for one file.
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(BigInteger)
    part_size: Mapped[int] = mapped_column(BigInteger)
    part_count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(SHA256)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    storage_handle: Mapped[str] = mapped_column(String(200))
    bytes_received: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result_asset_id: Mapped[str | None] = mapped_column(ID)
    result_content_id: Mapped[str | None] = mapped_column(ID)


class UploadPart(Base):
    """A part the server holds. ``writes`` counts accepted bodies (a re-send adds one).

    ``prefix``: ``sha256`` is the part's prefix digest (the content's SHA-256 from its first
    byte through this part's last), which the part was checked against, not its own digest.
    """

    __tablename__ = "upload_parts"
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload_sessions.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(SHA256)
    prefix: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    writes: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UploadPartTarget(Base):
    """A part the client was sent straight to storage for, with the digest signed into its URL.

    Storage that takes parts directly (S3) lists what it holds by number and size only;
    such a listed part is held with the digest of its newest target (the store refused
    any other body), which is how the server learns of parts it never saw.
    """

    __tablename__ = "upload_part_targets"
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload_sessions.id"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(SHA256)
    minted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UploadCompletion(Base):
    """The result stored under a completion idempotency key.

    The unique key is what makes "exactly one asset per upload" hold even when two
    completions race, in one process or in several.
    """

    __tablename__ = "upload_completions"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload_sessions.id"))
    asset_id: Mapped[str] = mapped_column(ID)
    content_id: Mapped[str] = mapped_column(ID)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(SHA256)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DedupChallenge(Base):
    """A proof-of-possession challenge for deduplicating an upload: random byte ranges of the
    content the session claims (``sha256`` and the session's size), answerable once until
    ``expires_at``. It is made whether or not such a content is held, so it tells nothing."""

    __tablename__ = "dedup_challenges"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("upload_sessions.id"), index=True)
    sha256: Mapped[str] = mapped_column(SHA256)
    #: ``[[offset, length], ...]`` in the order the digests must come.
    ranges: Mapped[list[list[int]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StorageDeletion(Base):
    """Stored bytes no content uses any more, to be deleted from storage.

    Written in the transaction that deleted their last content, and removed once the
    storage deleted them: a storage that failed (or a server that stopped) in between
    leaves the row, and the server's sweep tries again, so no bytes are left behind
    for good.
    """

    __tablename__ = "storage_deletions"
    storage_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


Index("ix_upload_sessions_user_id_state", UploadSession.user_id, UploadSession.state)
# Listing a project's or a collection's assets in path order.
Index("ix_assets_project_id_path", Asset.project_id, Asset.path)
Index("ix_assets_collection_id_path", Asset.collection_id, Asset.path)
# Deduplication: a held content by digest and size; whether a storage key is still used.
Index("ix_contents_sha256_size", Content.sha256, Content.size)
Index("ix_contents_storage_key", Content.storage_key)
