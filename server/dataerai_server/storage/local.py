"""The local-directory storage: parts and contents as files under ``DATA_DIR/objects``.

Layout::

    objects/tmp/                      files being written (same filesystem, so renames are atomic)
    objects/uploads/<handle>/<N>.part the parts of an open upload
    objects/contents/<xx>/<key>       completed contents, fanned out by the key's last two characters

A file appears under its final name only when it is complete, verified and fsynced
(write to ``tmp/``, fsync, rename, fsync the directory): after a crash a name either
holds the right bytes or is absent, never half a part.

How bytes move (docs/server.md has the measurements behind this):

- A three-stage pipeline per file. The producer cuts the data into ~1 MiB batches:
  the event loop only queues a request body's chunks (no copying there), or a worker
  thread reads parts. A hashing thread gathers each batch into a page-aligned pool
  buffer and hashes it in one call (one GIL release per MiB, not per chunk); a
  writing thread writes it. All three overlap; a transfer holds at most about six
  buffers (6 MiB), whatever the part size.
- Buffers are ``mmap`` pages reused from a pool, and files are written and read with
  ``O_DIRECT`` where the filesystem allows it. Filling fresh page-cache or heap pages
  was the dominant cost where this was measured (about 2 s per GiB, against 0.6 s per
  GiB for direct I/O from reused buffers); these objects are large and written once,
  so the page cache gains little from them. Where ``O_DIRECT`` is refused (tmpfs,
  some platforms), plain buffered I/O is used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import trio

from ..concurrency import unwrap_single
from .base import ChecksumMismatch, PresignedRequest, StorageError, StoredContent, StoredPart

T = TypeVar("T")

#: Size of a batch handed to a worker thread, and of a read: large enough that thread
#: hops cost nothing (about a thousand per GiB), small enough to keep memory flat.
BATCH_BYTES: Final = 1 << 20
#: Direct I/O needs offsets, lengths and addresses aligned to the device's block size;
#: 4 KiB satisfies every common device.
_ALIGN: Final = 4096
#: Temp files older than this are leftovers of a crash and are removed on open.
STALE_TMP_SECONDS: Final = 24 * 3600

_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_PART_FILE: Final = re.compile(r"(\d+)\.part")

Buffer = mmap.mmap
#: ``send(batch)``: hands a batch to the hashing and writing stages.
SendBatch = Callable[["_Batch"], Awaitable[None]]


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


def _open(path: Path, flags: int, *, direct: bool) -> tuple[int, bool]:
    """Open ``path``, with ``O_DIRECT`` if asked and the filesystem takes it. Returns (fd, direct)."""
    if direct and _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o600), False


def _drop_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


class _BufferPool:
    """Page-aligned batch buffers kept for reuse (fresh memory costs a page fault per page
    on first touch; reused buffers do not). Used from the event loop thread only."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[Buffer] = []

    def take(self) -> Buffer:
        return self._free.pop() if self._free else mmap.mmap(-1, self._size)

    def give(self, buffer: Buffer) -> None:
        if len(self._free) < self._keep:
            self._free.append(buffer)


@dataclass
class _Batch:
    """About ``BATCH_BYTES`` of data in order: the chunks as received (no copy on the event
    loop), and the pool buffer they live in, if any, to give back once written."""

    chunks: list[bytes | memoryview]
    size: int
    buffer: Buffer | None = None
    #: The chunks are still separate objects, to be copied into ``buffer`` before hashing.
    gather: bool = False


class _NewFile:
    """A temp file being written sequentially. Blocking; one worker thread at a time.

    Data is staged in a page-aligned buffer and written a full buffer at a time, so
    direct I/O always sees aligned writes; only the unaligned tail goes through the
    page cache. ``finish`` writes the rest and makes the file durable, ``publish``
    renames it into place, ``discard`` removes it (safe at any stage, a no-op after
    ``publish``).
    """

    def __init__(self, tmp_dir: Path, staging: Buffer) -> None:
        path = tmp_dir / f"{secrets.token_hex(12)}.tmp"
        self._fd, self._direct = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, direct=True)
        self.path: Path | None = path
        self.size = 0
        self._staging = staging
        self._staged = 0

    def write(self, chunks: list[bytes | memoryview], *, aligned: bool = False) -> None:
        """Append ``chunks``. ``aligned``: they are one full page-aligned batch, written
        as it is when nothing is staged (saving a copy)."""
        capacity = len(self._staging)
        if aligned and self._staged == 0 and len(chunks) == 1 and len(chunks[0]) == capacity:
            with memoryview(chunks[0]) as view:
                self._write(view)
            return
        for chunk in chunks:
            with memoryview(chunk) as view:
                offset = 0
                while offset < len(view):
                    step = min(len(view) - offset, capacity - self._staged)
                    self._staging[self._staged : self._staged + step] = view[offset : offset + step]
                    self._staged += step
                    offset += step
                    if self._staged == capacity:
                        self._flush()

    def _flush(self) -> None:
        with memoryview(self._staging) as staging:
            data = staging[: self._staged]
            if self._direct and self._staged % _ALIGN:
                aligned = self._staged - self._staged % _ALIGN
                self._write(data[:aligned])
                data = data[aligned:]
                self._stop_direct()
            self._write(data)
        self._staged = 0

    def _write(self, data: memoryview) -> None:
        while data:
            try:
                written = os.write(self._fd, data)
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._stop_direct()  # the device wants another alignment: carry on buffered
                continue
            if self._direct and written % _ALIGN:
                self._stop_direct()
            data = data[written:]
            self.size += written

    def _stop_direct(self) -> None:
        if self._direct:
            _drop_direct(self._fd)
            self._direct = False

    def finish(self) -> None:
        self._flush()
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

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


class _BlockReader:
    """Reads one file from ``offset`` in aligned blocks into a page-aligned scratch buffer.

    Blocking; one worker thread at a time. ``next_block`` returns a view of the scratch
    buffer (valid until the next call), empty at the end of the file.
    """

    def __init__(self, path: Path, scratch: Buffer, offset: int = 0) -> None:
        try:
            self._fd, direct = _open(path, os.O_RDONLY, direct=True)
        except FileNotFoundError:
            raise StorageError(f"{path.name} is missing from storage") from None
        self._scratch = scratch
        # Direct reads start on an aligned offset; the bytes before ``offset`` are skipped.
        self._position = offset - offset % _ALIGN if direct else offset
        self._skip = offset - self._position
        self._done = False

    def next_block(self) -> memoryview:
        if self._done:
            return memoryview(b"")
        count = os.preadv(self._fd, [self._scratch], self._position)
        self._position += count
        if count < len(self._scratch):
            # A short read only happens at the end of a regular file (and a direct read
            # from an unaligned end offset would fail), so stop here.
            self._done = True
        view = memoryview(self._scratch)[self._skip : count]
        self._skip = 0
        return view

    def read(self, limit: int) -> bytes:
        """The next block as bytes of its own (at most ``limit``), empty at the end."""
        return bytes(self.next_block()[:limit])

    def close(self) -> None:
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1


class _PartsReader:
    """Fills batch buffers completely from a sequence of part files, checking each part's size."""

    def __init__(self, parts: list[tuple[Path, int]], scratch: Buffer) -> None:
        self._parts = parts
        self._scratch = scratch
        self._index = 0
        self._reader: _BlockReader | None = None
        self._read = 0
        self._pending = memoryview(b"")

    def fill(self, buffer: Buffer) -> int:
        filled = 0
        while filled < len(buffer):
            if not self._pending and not self._advance():
                break
            step = min(len(self._pending), len(buffer) - filled)
            buffer[filled : filled + step] = self._pending[:step]
            self._pending = self._pending[step:]
            filled += step
        return filled

    def _advance(self) -> bool:
        """Load the next non-empty block into ``_pending``; False when every part is read."""
        while True:
            if self._reader is None:
                if self._index == len(self._parts):
                    return False
                self._reader = _BlockReader(self._parts[self._index][0], self._scratch)
                self._read = 0
            block = self._reader.next_block()
            if block:
                self._read += len(block)
                self._pending = block
                return True
            path, size = self._parts[self._index]
            self._reader.close()
            self._reader = None
            self._index += 1
            if self._read != size:
                raise StorageError(f"{path.name} holds {self._read} bytes, not the {size} recorded")

    def close(self) -> None:
        self._pending = memoryview(b"")
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class LocalStorage:
    """:class:`~dataerai_server.storage.base.Storage` on a local directory. Create with :meth:`open`."""

    def __init__(self, root: Path, *, threads: int = 12) -> None:
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

    # --- paths and plumbing ----------------------------------------------------------

    def _upload_dir(self, handle: str) -> Path:
        return self._uploads / _safe(handle)

    def _part_path(self, handle: str, number: int) -> Path:
        return self._upload_dir(handle) / f"{number}.part"

    def _content_path(self, key: str) -> Path:
        return self._contents / _safe(key)[-2:] / key

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a worker thread (at most ``threads`` at once)."""
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def _write_new_file(self, produce: Callable[[SendBatch], Awaitable[None]]) -> tuple[_NewFile, str]:
        """Run the hash and write stages over the batches ``produce`` sends; return the
        finished (fsynced, unpublished) file and its SHA-256. The caller discards the file."""
        staging = self._buffers.take()
        out = await self._run(partial(_NewFile, self._tmp, staging))
        try:
            hasher = hashlib.sha256()
            to_hash_send, to_hash_receive = trio.open_memory_channel[_Batch](1)
            to_write_send, to_write_receive = trio.open_memory_channel[_Batch](1)

            def hash_batch(batch: _Batch) -> None:
                if batch.gather:
                    assert batch.buffer is not None
                    offset = 0
                    for chunk in batch.chunks:
                        batch.buffer[offset : offset + len(chunk)] = chunk
                        offset += len(chunk)
                    # Dropping the chunks here frees them while their memory is still hot.
                    batch.chunks = [memoryview(batch.buffer)[:offset]]
                    batch.gather = False
                for chunk in batch.chunks:
                    hasher.update(chunk)  # releases the GIL on chunks this large

            async def hash_stage() -> None:
                async with to_hash_receive, to_write_send:
                    async for batch in to_hash_receive:
                        await self._run(partial(hash_batch, batch))
                        await to_write_send.send(batch)

            async def write_stage() -> None:
                async with to_write_receive:
                    async for batch in to_write_receive:
                        # A batch gathered into its own pool buffer is page-aligned.
                        await self._run(partial(out.write, batch.chunks, aligned=batch.buffer is not None))
                        if batch.buffer is not None:
                            batch.chunks.clear()
                            self._buffers.give(batch.buffer)

            with unwrap_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(hash_stage)
                    nursery.start_soon(write_stage)
                    async with to_hash_send:
                        await produce(to_hash_send.send)
            await self._run(out.finish)
            self._buffers.give(staging)
            return out, hasher.hexdigest()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._run(out.discard)
            raise

    # --- uploads ---------------------------------------------------------------------

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
        received = 0

        async def produce(send: SendBatch) -> None:
            nonlocal received
            # The event loop only queues the request's chunks; the hashing thread copies
            # them into the batch's pool buffer (one GIL-free hash per batch follows).
            chunks: list[bytes | memoryview] = []
            pending = 0
            async for chunk in body:
                length = len(chunk)
                received += length
                if received > size:
                    # Stop reading a body that is already too long: it cannot match.
                    raise ChecksumMismatch(
                        f"part {number}: the body is longer than the announced {size} bytes",
                        expected_size=size,
                        actual_size=received,
                        expected_sha256=sha256,
                        actual_sha256=None,
                    )
                if pending + length < BATCH_BYTES:
                    chunks.append(chunk)
                    pending += length
                    continue
                view, offset = memoryview(chunk), 0
                while pending + (length - offset) >= BATCH_BYTES:
                    step = BATCH_BYTES - pending
                    chunks.append(view[offset : offset + step])
                    offset += step
                    await send(_Batch(chunks, BATCH_BYTES, self._buffers.take(), gather=True))
                    chunks, pending = [], 0
                if offset < length:
                    chunks.append(view[offset:])
                    pending = length - offset
            if chunks:
                await send(_Batch(chunks, pending, self._buffers.take(), gather=True))

        out, digest = await self._write_new_file(produce)
        try:
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

    async def list_parts(self, handle: str) -> list[StoredPart]:
        def scan() -> list[StoredPart]:
            directory = self._upload_dir(handle)
            if not directory.is_dir():
                return []
            parts = []
            for entry in os.scandir(directory):
                match = _PART_FILE.fullmatch(entry.name)
                if match:
                    parts.append(StoredPart(number=int(match[1]), size=entry.stat().st_size, sha256=None))
            return sorted(parts, key=lambda p: p.number)

        return await self._run(scan)

    async def complete(self, handle: str, parts: Sequence[StoredPart], key: str, sha256: str | None) -> StoredContent:
        destination = self._content_path(key)
        await self._run(lambda: destination.parent.mkdir(exist_ok=True))
        if len(parts) == 1 and parts[0].sha256 is not None:
            # One part is the whole file, and its digest was verified as it arrived:
            # link it into place instead of copying it.
            return await self._run(partial(self._link_single_part, handle, parts[0], destination, sha256))
        scratch = self._buffers.take()
        reader = _PartsReader([(self._part_path(handle, p.number), p.size) for p in parts], scratch)

        async def produce(send: SendBatch) -> None:
            while True:
                buffer = self._buffers.take()
                filled = await self._run(partial(reader.fill, buffer))
                if not filled:
                    self._buffers.give(buffer)
                    return
                await send(_Batch([memoryview(buffer)[:filled]], filled, buffer))

        try:
            out, digest = await self._write_new_file(produce)
        finally:
            reader.close()
            self._buffers.give(scratch)
        try:
            if sha256 is not None and digest != sha256:
                raise ChecksumMismatch(
                    f"the assembled file has SHA-256 {digest}, expected {sha256}",
                    expected_size=out.size,
                    actual_size=out.size,
                    expected_sha256=sha256,
                    actual_sha256=digest,
                )
            await self._run(partial(out.publish, destination))
        finally:
            with trio.CancelScope(shield=True):
                await self._run(out.discard)
        return StoredContent(size=out.size, sha256=digest)

    def _link_single_part(self, handle: str, part: StoredPart, destination: Path, sha256: str | None) -> StoredContent:
        assert part.sha256 is not None
        if sha256 is not None and part.sha256 != sha256:
            raise ChecksumMismatch(
                f"the file's only part has SHA-256 {part.sha256}, expected {sha256}",
                expected_size=part.size,
                actual_size=part.size,
                expected_sha256=sha256,
                actual_sha256=part.sha256,
            )
        source = self._part_path(handle, part.number)
        try:
            actual = source.stat().st_size
        except FileNotFoundError:
            raise StorageError(f"part {part.number} of {handle!r} is missing from storage") from None
        if actual != part.size:
            raise StorageError(f"part {part.number} of {handle!r} holds {actual} bytes, not {part.size}")
        # A hard link under a temp name, then an atomic rename: a retry simply replaces it,
        # and the part keeps its own name until release_parts.
        link = self._tmp / f"{secrets.token_hex(12)}.tmp"
        os.link(source, link)
        try:
            os.replace(link, destination)
        finally:
            link.unlink(missing_ok=True)
        _fsync_dir(destination.parent)
        return StoredContent(size=part.size, sha256=part.sha256)

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

    # --- contents ----------------------------------------------------------------------

    def content_url(self, key: str, ttl_seconds: int) -> PresignedRequest | None:
        return None

    async def read_range(self, key: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        scratch = self._buffers.take()
        try:
            reader = await self._run(partial(_BlockReader, self._content_path(key), scratch, offset))
            try:
                remaining = length
                while remaining > 0:
                    # Copied out of the scratch buffer: the server may hold a block after sending it.
                    block = await self._run(partial(reader.read, remaining))
                    if not block:
                        raise StorageError(f"content {key!r} is shorter than recorded")
                    remaining -= len(block)
                    yield block
            finally:
                reader.close()
        finally:
            self._buffers.give(scratch)

    async def delete_content(self, key: str) -> None:
        path = self._content_path(key)
        await self._run(lambda: path.unlink(missing_ok=True))
