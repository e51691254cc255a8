"""The storage contract: what the server needs from wherever bytes are kept.

It follows S3 multipart uploads so that an S3 storage can implement it directly:
an upload has a storage *handle* (S3's ``UploadId``); parts are put with a known
SHA-256 and size (S3 enforces a part digest only when it is signed into the part's
URL, so the digest is always known before the bytes arrive); parts can be listed;
completion turns the parts into one content object under a *key*; an upload can be
aborted; content is read by byte range.

Parts reach storage one of two ways. If :meth:`Storage.part_url` returns a request,
the client sends the bytes there directly (S3 presigned URLs); if it returns None,
the client sends them to the server's own part endpoint and the server streams them
into :meth:`Storage.put_part`. Content reads work the same way with
:meth:`Storage.content_url` and :meth:`Storage.read_range`.

Keys and handles are made by the server from its own ids: short strings of letters,
digits, ``_``, ``-`` and ``.``. Every method may raise :class:`StorageError` when the
backing store fails; the server reports that as ``internal``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from anyio.abc import TaskGroup


class StorageError(Exception):
    """The backing store failed or holds something other than what the server recorded."""


class StoreError(StorageError):
    """A call to the S3 store failed; ``code`` is the store's error code where it answered
    one (``NoSuchUpload``, ``SignatureDoesNotMatch``…), else empty."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ChecksumMismatch(Exception):
    """Bytes did not match the size or SHA-256 they were announced with; nothing was stored."""

    def __init__(
        self,
        message: str,
        *,
        expected_size: int,
        actual_size: int,
        expected_sha256: str | None,
        actual_sha256: str | None,
    ) -> None:
        super().__init__(message)
        self.expected_size = expected_size
        self.actual_size = actual_size
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256


@dataclass(frozen=True)
class StoredPart:
    """A part the storage holds. ``sha256`` is None where the store does not keep it (S3 lists MD5s).

    ``prefix``: ``sha256`` is not this part's own digest but the part's *prefix digest*, the
    SHA-256 of the content from its first byte through this part's last, which the part was
    checked against as it arrived, hashed onto the parts before it (:meth:`Storage.put_part`).
    Part 1's prefix digest is its own digest, so part 1 is never stored as ``prefix``.

    ``etag``: where the part went straight to the store (S3), the ETag the store answered
    its sender with, as the sender tells it; the store checks it when the parts are put
    together (and refuses one that is not what it holds).
    """

    number: int
    size: int
    sha256: str | None
    prefix: bool = False
    etag: str | None = None


@dataclass(frozen=True)
class StoredContent:
    """A completed content object: its length and whole-object SHA-256. ``parts_left``: the
    upload's parts are still held apart (:meth:`Storage.release_parts` frees them); a store
    that consumed them in making the object (S3) says False."""

    size: int
    sha256: str
    parts_left: bool = True


@dataclass(frozen=True)
class PresignedRequest:
    """A request a client can make without the server: method, URL and headers to send."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


class Storage(Protocol):
    """Where parts and contents are kept. Every method is safe to call from the event
    loop: blocking work happens in threads, never on the loop."""

    #: The smallest part (all but the last) a multi-part upload may have here.
    min_part_size: int
    #: Whether :meth:`put_part` takes a part's prefix digest instead of its own (``prefix=True``).
    prefix_digests: bool
    #: Whether a part target may be the store's own URL (:meth:`part_url`), so that parts
    #: reach the store without the server seeing them; where not, there is never anything
    #: to ask the store about at completion.
    direct_parts: bool

    async def create_upload(self, upload_id: str) -> str:
        """Prepare for the parts of a new upload and return its handle.

        ``upload_id`` is the server's session id; the handle returned is what every
        other upload method takes and what the server stores with the session.
        """
        ...

    def part_url(self, handle: str, number: int, size: int, sha256: str, ttl_seconds: int) -> PresignedRequest | None:
        """Where the client sends part ``number`` directly, with its digest and size signed in;
        or None, meaning the client sends it to the server, which calls :meth:`put_part`.

        No I/O: it is called in a worker thread, inside the part target's transaction."""
        ...

    async def put_part(
        self, handle: str, number: int, body: AsyncIterable[bytes], size: int, sha256: str, *, prefix: bool = False
    ) -> StoredPart:
        """Store part ``number`` from ``body``, replacing any earlier part with that number.

        The body is consumed as it arrives, never held whole in memory. Raises
        :class:`ChecksumMismatch` if it is not exactly ``size`` bytes with SHA-256
        ``sha256``; then nothing is stored and an earlier part with this number is kept.
        The part is durable when this returns. If ``body`` raises (the client went
        away) or the call is cancelled, nothing is stored and the exception propagates.

        ``prefix`` (only where :attr:`prefix_digests`): ``sha256`` is the part's prefix
        digest (see :class:`StoredPart`). It is checked where the storage has the running
        digest of parts ``1..number-1`` at hand (they came in order), which saves hashing
        the part twice. Where it has not, the part is stored unchecked under its own digest,
        and the :class:`StoredPart` returned says so (``prefix`` false): the client checks
        that digest against its own bytes instead, and completion checks the whole file.
        """
        ...

    async def list_parts(self, handle: str) -> list[StoredPart]:
        """The parts held for this upload, ordered by number."""
        ...

    async def complete(self, handle: str, parts: Sequence[StoredPart], key: str, sha256: str | None) -> StoredContent:
        """Make the content object ``key`` of ``parts`` (numbers 1..N in order, with the sizes given), concatenated.

        Where a part's ``sha256`` is given, the part stored with that digest is the one
        taken. Verifies the whole object's SHA-256 against ``sha256`` when given and raises
        :class:`ChecksumMismatch` otherwise; then nothing is published under ``key`` and the
        parts stay as they were. Raises :class:`StorageError` if a part is missing or has
        another size. How the object is made (a copy, or the parts themselves) is the
        storage's business; what :meth:`read_range` returns is the concatenation.
        The parts themselves stay until :meth:`release_parts` or :meth:`abort`, except
        where the store consumes them on completion (S3): afterwards :meth:`list_parts`
        says what is left. Completing again with the same parts and key gives the same
        result (the server retries after a crash). The content is durable when this returns.
        """
        ...

    def start_background(self, tasks: TaskGroup) -> None:
        """Let the storage run background work in ``tasks`` from now on (such as hashing
        parts ahead of completion). The server cancels the task group when it stops, so that
        work must be safe to cancel at any point. Without this call no background work runs;
        everything still works, possibly slower. A storage with none ignores the call."""
        ...

    async def release_parts(self, handle: str) -> None:
        """Drop the parts of an upload whose completion the server has recorded. Idempotent."""
        ...

    async def abort(self, handle: str) -> None:
        """Drop the upload and all its parts. Idempotent."""
        ...

    def content_url(self, key: str, ttl_seconds: int) -> PresignedRequest | None:
        """A URL the client reads the content from directly (ranges allowed); or None,
        meaning the server serves it through :meth:`read_range`."""
        ...

    def read_range(self, key: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """The bytes ``[offset, offset + length)`` of content ``key``, in blocks of about 1 MiB.

        The caller checks the range against the recorded size. Close the iterator
        (``aclose``) if you stop early. Raises :class:`StorageError` if the content is
        missing or shorter than the range.
        """
        ...

    async def delete_content(self, key: str) -> None:
        """Remove content ``key``. Idempotent."""
        ...
