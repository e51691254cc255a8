"""The local-directory storage: parts and contents as files under ``DATA_DIR/objects``.

Layout::

    objects/tmp/                      files being written (same filesystem, so renames are atomic)
    objects/uploads/<handle>/<N>.part the parts of an open upload
    objects/contents/<xx>/<key>       completed contents, fanned out by the key's last two characters

A file appears under its final name only when it is complete, verified and fsynced
(write to ``tmp/``, fsync, rename, fsync the directory): after a crash a name either
holds the right bytes or is absent, never half a part.

Throughput: the event loop only collects the request body into ~1 MiB batches; a
worker thread hashes and writes each batch while the loop collects the next one
(a two-batch queue between them), so receiving, hashing and writing overlap and
memory stays at a few MiB per transfer whatever the part size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import trio

from ..concurrency import unwrap_single
from .base import ChecksumMismatch, PresignedRequest, StorageError, StoredContent, StoredPart

#: Bytes handed to a worker thread at once: big enough that thread hops cost nothing
#: (about a thousand per GiB), small enough to keep memory flat.
BATCH_BYTES: Final = 1 << 20
#: Read size when assembling parts and serving ranges.
READ_BLOCK: Final = 1 << 20
#: Temp files older than this are leftovers of a crash and are removed on open.
STALE_TMP_SECONDS: Final = 24 * 3600

T = TypeVar("T")

_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_PART_FILE: Final = re.compile(r"(\d+)\.part")


def _safe(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise StorageError(f"not a valid storage name: {name!r}")
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingFile:
    """A temp file being written while its SHA-256 is computed.

    Blocking; used from one worker thread at a time. ``finish`` makes it durable,
    ``publish`` renames it into place, ``discard`` removes it (safe at any stage).
    """

    def __init__(self, tmp_dir: Path) -> None:
        self._fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".tmp")
        self.path: Path | None = Path(name)
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # hashlib releases the GIL on buffers this large, so the loop keeps running.
        self._hash.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def write_from(self, buffer: bytearray, length: int) -> None:
        with memoryview(buffer) as view:
            self.write(view[:length])

    def finish(self) -> str:
        """Flush to disk, close, and return the hex SHA-256."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        return self._hash.hexdigest()

    def publish(self, destination: Path) -> None:
        assert self.path is not None and self._fd == -1
        os.replace(self.path, destination)
        self.path = None
        _fsync_dir(destination.parent)

    def discard(self) -> None:
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class _BufferPool:
    """Batch buffers kept for reuse. Fresh memory costs a page fault per page on first
    touch (expensive under some sandboxes, such as gVisor, where this was measured);
    reused buffers do not. Used from the event loop thread only."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self._size)

    def give(self, buffer: bytearray) -> None:
        if len(self._free) < self._keep:
            self._free.append(buffer)


class LocalStorage:
    """:class:`~dataerai_server.storage.base.Storage` on a local directory. Create with :meth:`open`."""

    def __init__(self, root: Path, *, threads: int = 8) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._uploads = root / "uploads"
        self._contents = root / "contents"
        self._limiter = trio.CapacityLimiter(threads)
        self._buffers = _BufferPool(BATCH_BYTES, keep=4 * threads)

    @classmethod
    def open(cls, root: Path) -> LocalStorage:
        """Create the layout under ``root`` if needed and clear stale temp files. Blocking."""
        storage = cls(root)
        for directory in (storage._tmp, storage._uploads, storage._contents):
            directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_SECONDS
        for leftover in storage._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
        return storage

    # --- paths ---------------------------------------------------------------

    def _upload_dir(self, handle: str) -> Path:
        return self._uploads / _safe(handle)

    def _part_path(self, handle: str, number: int) -> Path:
        return self._upload_dir(handle) / f"{number}.part"

    def _content_path(self, key: str) -> Path:
        return self._contents / _safe(key)[-2:] / key

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a worker thread (at most ``threads`` at once)."""
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # --- uploads -------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> str:
        await self._run(lambda: self._upload_dir(upload_id).mkdir(parents=True, exist_ok=True))
        return upload_id

    def part_url(self, handle: str, number: int, size: int, sha256: str, ttl_seconds: int) -> PresignedRequest | None:
        return None

    async def put_part(
        self, handle: str, number: int, body: AsyncIterable[bytes], size: int, sha256: str
    ) -> StoredPart:
        destination = self._part_path(handle, number)
        if not await self._run(destination.parent.is_dir):
            raise StorageError(f"no upload {handle!r} in storage")
        out = await self._run(partial(_HashingFile, self._tmp))
        try:
            received = await self._receive(body, out, size)
            digest = await self._run(out.finish)
            if received != size or digest != sha256:
                raise ChecksumMismatch(
                    f"part {number}: got {received} bytes with SHA-256 {digest}, expected {size} bytes with {sha256}",
                    expected_size=size,
                    actual_size=received,
                    expected_sha256=sha256,
                    actual_sha256=digest,
                )
            await self._run(partial(out.publish, destination))
        finally:
            with trio.CancelScope(shield=True):
                await self._run(out.discard)
        return StoredPart(number=number, size=size, sha256=sha256)

    async def _receive(self, body: AsyncIterable[bytes], out: _HashingFile, limit: int) -> int:
        """Pump ``body`` into ``out``: batches are gathered here and written by a thread meanwhile.

        At most three batch buffers per transfer: one filling, one queued, one being written.
        """
        received = 0
        send, receive = trio.open_memory_channel[tuple[bytearray, int]](1)
        pool = self._buffers

        async def write_batches() -> None:
            async with receive:
                async for buffer, length in receive:
                    await self._run(partial(out.write_from, buffer, length))
                    pool.give(buffer)

        with unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_batches)
                async with send:
                    buffer, filled = pool.take(), 0
                    async for chunk in body:
                        received += len(chunk)
                        if received > limit:
                            # Stop reading a body that is already too long: it cannot match.
                            raise ChecksumMismatch(
                                f"the body is longer than the announced {limit} bytes",
                                expected_size=limit,
                                actual_size=received,
                                expected_sha256=None,
                                actual_sha256=None,
                            )
                        view, offset = memoryview(chunk), 0
                        while offset < len(view):
                            step = min(len(view) - offset, BATCH_BYTES - filled)
                            buffer[filled : filled + step] = view[offset : offset + step]
                            filled += step
                            offset += step
                            if filled == BATCH_BYTES:
                                await send.send((buffer, filled))
                                buffer, filled = pool.take(), 0
                    if filled:
                        await send.send((buffer, filled))
                    else:
                        pool.give(buffer)
        return received

    async def list_parts(self, handle: str) -> list[StoredPart]:
        def scan() -> list[StoredPart]:
            parts = []
            directory = self._upload_dir(handle)
            if not directory.is_dir():
                return []
            for entry in os.scandir(directory):
                match = _PART_FILE.fullmatch(entry.name)
                if match:
                    parts.append(StoredPart(number=int(match[1]), size=entry.stat().st_size, sha256=None))
            return sorted(parts, key=lambda p: p.number)

        return await self._run(scan)

    async def complete(self, handle: str, parts: Sequence[StoredPart], key: str, sha256: str | None) -> StoredContent:
        return await self._run(partial(self._assemble, handle, list(parts), key, sha256))

    def _assemble(self, handle: str, parts: list[StoredPart], key: str, sha256: str | None) -> StoredContent:
        destination = self._content_path(key)
        destination.parent.mkdir(exist_ok=True)
        out = _HashingFile(self._tmp)
        buffer = bytearray(READ_BLOCK)
        view = memoryview(buffer)
        try:
            for part in parts:
                path = self._part_path(handle, part.number)
                try:
                    source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed just below
                except FileNotFoundError:
                    raise StorageError(f"part {part.number} of {handle!r} is missing from storage") from None
                with source:
                    copied = 0
                    while count := source.readinto(buffer):
                        out.write(view[:count])
                        copied += count
                if copied != part.size:
                    raise StorageError(f"part {part.number} of {handle!r} holds {copied} bytes, not {part.size}")
            digest = out.finish()
            if sha256 is not None and digest != sha256:
                raise ChecksumMismatch(
                    f"the assembled file has SHA-256 {digest}, expected {sha256}",
                    expected_size=out.size,
                    actual_size=out.size,
                    expected_sha256=sha256,
                    actual_sha256=digest,
                )
            out.publish(destination)
            return StoredContent(size=out.size, sha256=digest)
        finally:
            out.discard()

    async def release_parts(self, handle: str) -> None:
        await self.abort(handle)

    async def abort(self, handle: str) -> None:
        def remove() -> None:
            directory = self._upload_dir(handle)
            if not directory.is_dir():
                return
            for entry in os.scandir(directory):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()

        await self._run(remove)

    # --- contents ------------------------------------------------------------

    def content_url(self, key: str, ttl_seconds: int) -> PresignedRequest | None:
        return None

    async def read_range(self, key: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        path = self._content_path(key)
        try:
            fd = await self._run(partial(os.open, path, os.O_RDONLY))
        except FileNotFoundError:
            raise StorageError(f"content {key!r} is missing from storage") from None
        try:
            position, remaining = offset, length
            while remaining > 0:
                block = await self._run(partial(os.pread, fd, min(READ_BLOCK, remaining), position))
                if not block:
                    raise StorageError(f"content {key!r} is shorter than recorded")
                position += len(block)
                remaining -= len(block)
                yield block
        finally:
            os.close(fd)

    async def delete_content(self, key: str) -> None:
        path = self._content_path(key)
        await self._run(lambda: path.unlink(missing_ok=True))
