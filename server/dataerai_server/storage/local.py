"""The local-directory storage: parts and contents as files under ``DATA_DIR/objects``.

Layout::

    objects/tmp/                                  files and directories being built (same filesystem,
                                                  so renames into place are atomic)
    objects/uploads/<handle>/<N>.<tag>.part       the parts of an open upload, each named by its digest tag
    objects/contents/<xx>/<key>/manifest.json     a completed content: its size, SHA-256 and part sizes
    objects/contents/<xx>/<key>/00001 ...         its parts, in order (hard links to the part files)

``<xx>`` fans contents out by the key's last two characters. A content is the ordered
set of its parts, never a copy of them: completing an upload links the already durable
part files into a new directory beside a small manifest, and publishes that directory
by one rename. Reads of a range go through the parts it spans.

A name appears only when what it names is complete, verified and fsynced (write under
``tmp/``, fsync, rename, fsync the directory): after a crash a name either holds the
right bytes or is absent. A part file's name carries the digest its bytes were checked
against as they arrived (its *tag*): the part's own SHA-256, or ``prefix-`` and its prefix
digest, the SHA-256 of the upload from its first byte through this part's last. Equal own
digests mean equal bytes; equal prefix digests mean equal bytes given equal parts before
(a prefix-tagged part read back is checked again). That is what lets completion trust a
digest computed earlier, even by another process, without reading the bytes again.

How bytes move (docs/server.md has the measurements behind this):

- A pipeline of worker-thread stages per file. The producer cuts the data into ~1 MiB
  batches: the event loop only queues a request body's chunks (no copying there), or a
  worker thread reads a file. A hashing thread gathers each batch into a page-aligned
  pool buffer and hashes it in one call (one GIL release per MiB, not per chunk); a
  writing thread writes it. All stages overlap; a transfer holds a handful of 1 MiB
  buffers, whatever the part size.
- Buffers are ``mmap`` pages reused from a pool, and files are written and read with
  ``O_DIRECT`` where the filesystem allows it. Filling fresh page-cache or heap pages
  was the dominant cost where this was measured (about 2 s per GiB, against 0.6 s per
  GiB for direct I/O from reused buffers); these objects are large and written once,
  so the page cache gains little from them. Where ``O_DIRECT`` is refused (tmpfs,
  some platforms), plain buffered I/O is used.
- Completion has to prove the whole file's SHA-256, which needs every byte in order.
  So each open upload keeps, in memory, a running SHA-256 over its parts 1..k (see
  :class:`_RunningDigest`): a part that arrives next in order is hashed into it as it
  streams in, and parts that arrived early are read back in a background task once the
  parts before them are there. Completion then reads only what is not covered yet.
- Chaining: a part that arrives while the part before it is being hashed in as it
  streams waits (its body unread, for at most ``CHAIN_WAIT_SECONDS``) until that part's
  state is final (all hashed and its own digest checked, before its fsync), and is then
  hashed onto a copy of that state as it streams (:class:`_Link`). A state finished
  before the part before it is committed stays pending and is committed right after it,
  if that part was committed with the digest the state was built on; otherwise it is void
  and the part is read back. Clients that send parts in order (the daemon does, to this
  storage) so get every part hashed in without reading any back.
- Prefix digests: a part sent with its prefix digest instead of its own is hashed once,
  onto the running state before it, and that state is checked against the prefix digest;
  a part sent with its own digest needs a second hash (its own) beside the running one.
  Where no running state before it is at hand, a prefix-digest part is hashed on its own
  and stored under its own digest, unchecked: the answer says which it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from ..concurrency import unwrap_single
from ..threads import WorkerThreads
from .base import ChecksumMismatch, PresignedRequest, StorageError, StoredContent, StoredPart

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Everything stored is its user's alone (0700 directories, 0600 files), whatever the umask.
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
#: Size of a batch handed to a worker thread, and of a read: large enough that thread
#: hops cost nothing (about a thousand per GiB), small enough to keep memory flat.
BATCH_BYTES: Final = 1 << 20
#: Batches filled by one read when a file is read back to be hashed. One 4 MiB request
#: instead of four 1 MiB ones more than doubled read-back speed while the same disk was
#: taking an upload's writes (docs/server.md).
READ_BATCHES: Final = 4
#: Direct I/O needs offsets, lengths and addresses aligned to the device's block size;
#: 4 KiB satisfies every common device.
_ALIGN: Final = 4096
#: Temp files older than this are leftovers of a crash and are removed on open.
STALE_TMP_SECONDS: Final = 24 * 3600
#: Running digests kept in memory, the most recently used first. Each costs a few hundred
#: bytes plus about 100 bytes per covered part; losing one only costs a read-back.
MAX_RUNNING_DIGESTS: Final = 256
#: How long a part waits for the part before it (being hashed in as it streams) to reach its
#: final running state, so that it can be hashed onto that state in turn. Clients that send
#: parts in order (the daemon, for this storage) wait milliseconds; a part sent in parallel with
#: the one before it gives up after this and is read back later instead.
CHAIN_WAIT_SECONDS: Final = 1.0

MANIFEST: Final = "manifest.json"
_MANIFEST_FORMAT: Final = "dataerai-content/1"
_O_DIRECT: Final = getattr(os, "O_DIRECT", 0)
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
#: ``<N>.<tag>.part``; ``<N>.part`` is how parts were named before they carried their digest.
_PART_FILE: Final = re.compile(r"(\d+)(?:\.((?:prefix-)?[0-9a-f]{64}))?\.part")
_PREFIX_TAG: Final = "prefix-"
#: Removed content directories and files wait under this suffix in ``tmp/`` while they are deleted.
_DELETED: Final = ".deleted"

Buffer = mmap.mmap
#: ``send(batch)``: hands a batch to the next pipeline stage.
SendBatch = Callable[["_Batch"], Awaitable[None]]


def _safe(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise StorageError(f"not a valid storage name: {name!r}")
    return name


def _piece_name(number: int) -> str:
    """A part's name inside a content directory; five digits sort 1..10,000 correctly."""
    return f"{number:05d}"


def _tag(sha256: str, prefix: bool) -> str:
    """A part's digest tag: its own SHA-256, or ``prefix-`` and its prefix digest."""
    return _PREFIX_TAG + sha256 if prefix else sha256


def _tagged_part(number: int, size: int, tag: str | None) -> StoredPart:
    if tag is not None and tag.startswith(_PREFIX_TAG):
        return StoredPart(number=number, size=size, sha256=tag[len(_PREFIX_TAG) :], prefix=True)
    return StoredPart(number=number, size=size, sha256=tag)


def _tag_of(part: StoredPart) -> str | None:
    return None if part.sha256 is None else _tag(part.sha256, part.prefix)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _dir_lock(directory: Path, operation: int) -> Iterator[None]:
    """``flock`` on ``directory`` (shared or exclusive), across threads and processes alike.

    Publishing a part takes it exclusively, so that two writers of one part number never
    remove each other's file; taking a consistent view of the parts takes it shared.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise StorageError(f"no upload {directory.name!r} in storage") from None
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _open(path: Path, flags: int, *, direct: bool) -> tuple[int, bool]:
    """Open ``path``, with ``O_DIRECT`` if asked and the filesystem takes it. Returns (fd, direct)."""
    if direct and _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, _FILE_MODE), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, _FILE_MODE), False


def _drop_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


def _remove_tree(path: Path) -> None:
    """Remove a file, or a directory of files (the only shapes this storage makes). Idempotent."""
    try:
        entries = list(os.scandir(path))
    except NotADirectoryError:
        path.unlink(missing_ok=True)
        return
    except FileNotFoundError:
        return
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


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
    """Data in order: the chunks as received (no copy on the event loop), and the pool
    buffers they live in, if any, to give back after the last stage."""

    chunks: list[bytes | memoryview]
    size: int
    buffers: list[Buffer] = field(default_factory=list)
    #: The chunks are still separate objects, to be copied into the one buffer before hashing.
    gather: bool = False


def _gather_and_hash(hasher: Hasher, batch: _Batch) -> None:
    """A pipeline stage: copy the batch's chunks into its buffer if asked, then hash it."""
    if batch.gather:
        (buffer,) = batch.buffers
        offset = 0
        for chunk in batch.chunks:
            buffer[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
        # Dropping the chunks here frees them while their memory is still hot.
        batch.chunks = [memoryview(buffer)[:offset]]
        batch.gather = False
    for chunk in batch.chunks:
        hasher.update(chunk)  # releases the GIL on chunks this large


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
        """Rename the finished file to ``destination``; the caller makes the directory durable."""
        assert self.path is not None and self._fd == -1
        os.replace(self.path, destination)
        self.path = None

    def discard(self) -> None:
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class _BlockReader:
    """Reads one file from ``offset`` in aligned blocks into page-aligned buffers.

    Blocking; one worker thread at a time. ``next_blocks(buffers)`` fills ``buffers`` in
    one read and returns views of the new bytes in them, none at the end of the file.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        try:
            self._fd, direct = _open(path, os.O_RDONLY, direct=True)
        except FileNotFoundError:
            raise StorageError(f"{path.name} is missing from storage") from None
        # Direct reads start on an aligned offset; the bytes before ``offset`` are skipped.
        self._position = offset - offset % _ALIGN if direct else offset
        self._skip = offset - self._position
        self._done = False

    def next_blocks(self, buffers: list[Buffer]) -> list[memoryview]:
        if self._done:
            return []
        # One request for all the buffers: fewer, larger reads keep the device busier than
        # a 1 MiB read at a time, above all while the same disk is taking writes.
        count = os.preadv(self._fd, buffers, self._position)
        self._position += count
        if count < sum(len(b) for b in buffers):
            # A short read only happens at the end of a regular file (and a direct read
            # from an unaligned end offset would fail), so stop here.
            self._done = True
        views = []
        for buffer in buffers:
            filled = min(count, len(buffer))
            count -= filled
            if filled > self._skip:
                views.append(memoryview(buffer)[self._skip : filled])
            self._skip = max(0, self._skip - filled)
        return views

    def read(self, buffer: Buffer, limit: int) -> bytes:
        """The next block as bytes of its own (at most ``limit``), empty at the end."""
        views = self.next_blocks([buffer])
        return bytes(views[0][:limit]) if views else b""

    def close(self) -> None:
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class _Manifest:
    """What a content directory holds: the whole content's size and SHA-256, and its parts' sizes."""

    size: int
    sha256: str
    part_sizes: tuple[int, ...]

    def dumps(self) -> bytes:
        body = {"format": _MANIFEST_FORMAT, "size": self.size, "sha256": self.sha256, "parts": self.part_sizes}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def load(cls, path: Path) -> _Manifest:
        """Raises FileNotFoundError or NotADirectoryError as opening ``path`` does, and
        :class:`StorageError` for a manifest this storage did not write."""
        try:
            body = json.loads(path.read_bytes())
            manifest = cls(int(body["size"]), str(body["sha256"]), tuple(int(s) for s in body["parts"]))
            if body["format"] != _MANIFEST_FORMAT or sum(manifest.part_sizes) != manifest.size:
                raise ValueError(body["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"{path} is not a content manifest: {exc}") from None
        return manifest


@dataclass(frozen=True)
class _PartFile:
    """A part file found in an upload directory; ``tag`` is None for a name without a digest."""

    number: int
    tag: str | None
    name: str
    size: int
    mtime_ns: int


def _scan_parts(directory: Path) -> dict[int, list[_PartFile]]:
    """The part files of an upload directory by number, newest first. Call under ``_dir_lock``."""
    found: dict[int, list[_PartFile]] = {}
    for entry in os.scandir(directory):
        match = _PART_FILE.fullmatch(entry.name)
        if match:
            stat = entry.stat()
            part = _PartFile(int(match[1]), match[2], entry.name, stat.st_size, stat.st_mtime_ns)
            found.setdefault(part.number, []).append(part)
    for versions in found.values():
        versions.sort(key=lambda p: p.mtime_ns, reverse=True)
    return found


@dataclass(frozen=True)
class _Staged:
    """A content directory being built under ``tmp/``: the parts linked in, in order, with the
    digest tag each one's name carries (None where the name carries none)."""

    directory: Path
    part_sizes: tuple[int, ...]
    part_tags: tuple[str | None, ...]

    def piece(self, index: int) -> Path:
        return self.directory / _piece_name(index + 1)


class _Link:
    """A part being hashed into the running digest as it streams, seen by the part after it.

    ``ready`` is set once the part's streamed state is final (its last batch hashed and its
    own digest checked, before its fsync) or once it will not have one (it failed, or it is
    not hashed in after all). ``state`` is then the running state after this part (None if
    there is none), built on ``generation``; ``tag`` is this part's digest tag.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ready = anyio.Event()
        self.state: Hasher | None = None
        self.generation = -1

    def release(self, state: Hasher | None = None, generation: int = -1) -> None:
        if not self.ready.is_set():
            self.state, self.generation = state, generation
            self.ready.set()


class _RunningDigest:
    """A SHA-256 over parts 1..k of one upload, as far as they are contiguous: the state a
    completion would reach after reading them, kept so that it need not read them.

    ``covered`` lists the digest tag of each part hashed in. Because a part file's name carries
    its tag, a part file named with ``covered[i]`` holds exactly the bytes that were hashed
    in, whoever wrote it (for a prefix tag: given the parts before it, which are checked too);
    completion checks the names of the files it links against ``covered`` before trusting
    the state, so this is only ever an optimisation. It lives in
    one process's memory and is gone after a restart; completion then reads the parts.

    Used from the event loop thread only. ``hasher`` and ``covered`` change together and only
    synchronously, so a reader of both sees a consistent pair. ``generation`` changes when
    the prefix is replaced rather than extended (a part in it was replaced by other bytes):
    hashing begun against an older prefix is then not committed onto the newer one.
    """

    def __init__(self) -> None:
        self.hasher: Hasher = hashlib.sha256()
        self.covered: list[str] = []
        self.generation = 0
        #: Held while parts are read back into the digest (background catch-up or completion),
        #: so that the same bytes are not read twice at once.
        self.reading = anyio.Lock()
        #: A background catch-up is scheduled or running; ``again``: look once more when it ends.
        self.catching_up = False
        self.again = False
        #: Part numbers being hashed in as they arrive (how many arrivals of each).
        self.hashing_in: Counter[int] = Counter()
        #: The newest arrival of each part number that is (or may yet be) hashed in as it
        #: streams: the next part waits for its final state to hash onto (see :class:`_Link`).
        self.links: dict[int, _Link] = {}
        #: States hashed onto a part that was not committed yet, to commit right after it:
        #: number -> (tag, hasher, generation, tag of the part before).
        self.pending: dict[int, tuple[str, Hasher, int, str]] = {}
        #: Set (and replaced) whenever the prefix grows: a part sent with a prefix digest
        #: may wait for the parts before it to be read back (see ``LocalStorage.put_part``).
        self.grown = anyio.Event()

    def _grow(self, tag: str, hasher: Hasher) -> None:
        self.covered.append(tag)
        self.hasher = hasher
        self.grown.set()
        self.grown = anyio.Event()

    @property
    def count(self) -> int:
        return len(self.covered)

    def commit(
        self, number: int, tag: str, hasher: Hasher, generation: int, *, arrived: bool, basis: str | None = None
    ) -> None:
        """Take ``hasher``, the state after hashing part ``number`` (tagged ``tag``) onto parts
        1..number-1 of ``generation``, if that is still the prefix.

        ``arrived``: the part was hashed as it arrived, so it is the newest version of its
        number and replaces another one hashed in before; a part read back only extends.
        ``basis``: the state was hashed onto the streamed state of part number-1 with this
        tag (chaining), not onto the committed prefix: it counts only if part number-1
        is committed with that digest in ``generation``. Until part number-1 is committed
        at all, it is kept pending and committed right after it.
        """
        if generation != self.generation:
            return  # the prefix it was built on was replaced meanwhile
        if basis is not None:
            if number - 1 > self.count:
                if arrived:
                    self.pending[number] = (tag, hasher, generation, basis)
                return
            if self.covered[number - 2] != basis:
                return  # another version of the part before was hashed in
        # Within one generation ``covered`` only grows, so its first number-1 entries are
        # still the ones the hashing began from (and with ``basis`` checked, the last of them too).
        if number == self.count + 1:
            self._grow(tag, hasher)
        elif arrived and number <= self.count and self.covered[number - 1] != tag:
            # This part replaced other bytes that were already hashed in: what follows them is void.
            del self.covered[number - 1 :]
            self.generation += 1
            self._grow(tag, hasher)
        else:
            return
        self._commit_pending()

    def _commit_pending(self) -> None:
        """Commit the pending states that follow the prefix, as far as they fit it."""
        while self.pending:
            number = self.count + 1
            entry = self.pending.pop(number, None)
            if entry is None:
                # Entries at or below the prefix can no longer be committed.
                for stale in [n for n in self.pending if n <= self.count]:
                    del self.pending[stale]
                return
            tag, hasher, generation, basis = entry
            if generation != self.generation or self.covered[number - 2] != basis:
                continue  # built on other bytes than those hashed in: void
            self._grow(tag, hasher)

    def stored(self, number: int, tag: str) -> None:
        """Part ``number`` was stored without being hashed in (it was not next in order)."""
        if number <= self.count and self.covered[number - 1] != tag:
            # It replaced other bytes in the prefix, and the state before them is not kept.
            self.hasher = hashlib.sha256()
            self.covered = []
            self.generation += 1
        elif number == self.count + 1:
            # A read-back of an earlier version of this part may be under way: void it.
            self.generation += 1


class LocalStorage:
    """:class:`~dataerai_server.storage.base.Storage` on a local directory. Create with :meth:`open`."""

    #: Any part size the API allows will do.
    min_part_size = 0
    prefix_digests = True
    #: Every part comes through the server's own part endpoint.
    direct_parts = False

    def __init__(self, root: Path, *, threads: int = 12) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._uploads = root / "uploads"
        self._contents = root / "contents"
        self._threads = WorkerThreads(threads, "dataerai-files")
        self._buffers = _BufferPool(BATCH_BYTES, keep=4 * threads)
        self._digests: OrderedDict[str, _RunningDigest] = OrderedDict()
        self._background: TaskGroup | None = None

    @classmethod
    def open(cls, root: Path) -> LocalStorage:
        """Create the layout under ``root`` if needed and clear stale temp files. Blocking."""
        storage = cls(root)
        for directory in (storage._tmp, storage._uploads, storage._contents):
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_SECONDS
        for leftover in storage._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                # Deleted contents are garbage at once; anything else may still be in use by
                # another server process on this directory unless it is old.
                if leftover.name.endswith(_DELETED) or leftover.lstat().st_mtime < cutoff:
                    _remove_tree(leftover)
        return storage

    def start_background(self, tasks: TaskGroup) -> None:
        """Run background catch-up of running digests in ``tasks`` (see the module docstring).
        Without it nothing is hashed ahead, and completion reads what was not hashed on arrival."""
        self._background = tasks

    # --- paths and plumbing ----------------------------------------------------------

    def _upload_dir(self, handle: str) -> Path:
        return self._uploads / _safe(handle)

    def _content_path(self, key: str) -> Path:
        return self._contents / _safe(key)[-2:] / key

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a worker thread (at most ``threads`` at once)."""
        return await self._threads.run(fn)

    async def _pipeline(
        self, produce: Callable[[SendBatch], Awaitable[None]], stages: Sequence[Callable[[_Batch], None]]
    ) -> None:
        """Pass the batches ``produce`` sends through the blocking ``stages``, in order.

        Each stage runs in a worker thread of its own and hands each batch on through a
        one-slot channel, so the stages overlap on consecutive batches; a batch's buffer
        goes back to the pool after the last stage. Errors anywhere stop the whole pipeline.
        """

        async def stage(index: int, receive: MemoryObjectReceiveStream[_Batch]) -> None:
            # Only the sending side is closed on the way out: that ends the next stage's loop
            # when this one is done. A failing stage must not close its receiving side, which
            # would fail the stage before it with a second error; the task group cancels it instead.
            last = index == len(stages) - 1
            onward_send, onward_receive = anyio.create_memory_object_stream[_Batch](1)
            if not last:
                tasks.start_soon(stage, index + 1, onward_receive)
            async with onward_send:
                async for batch in receive:
                    await self._run(partial(stages[index], batch))
                    if not last:
                        await onward_send.send(batch)
                    else:
                        batch.chunks.clear()
                        for buffer in batch.buffers:
                            self._buffers.give(buffer)
            receive.close()  # the sender has closed its side: nothing can be refused

        first_send, first_receive = anyio.create_memory_object_stream[_Batch](1)
        with unwrap_single():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(stage, 0, first_receive)
                async with first_send:
                    await produce(first_send.send)

    async def _write_new_file(
        self,
        produce: Callable[[SendBatch], Awaitable[None]],
        hashers: Sequence[Hasher],
        hashed: Callable[[], None] | None = None,
    ) -> _NewFile:
        """Write the batches ``produce`` sends into a new temp file, feeding them to each of
        ``hashers`` (each in a stage of its own). ``hashed()`` is called once every byte is
        hashed (and written), before the fsync. Returns the finished (fsynced, unpublished)
        file. The caller discards the file."""
        staging = self._buffers.take()
        out = await self._run(partial(_NewFile, self._tmp, staging))
        try:
            stages: list[Callable[[_Batch], None]] = [partial(_gather_and_hash, h) for h in hashers]
            # A batch gathered into its own pool buffer is page-aligned.
            stages.append(lambda batch: out.write(batch.chunks, aligned=bool(batch.buffers)))
            await self._pipeline(produce, stages)
            if hashed is not None:
                hashed()
            await self._run(out.finish)
            self._buffers.give(staging)
            return out
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._run(out.discard)
            raise

    async def _hash_files(self, hasher: Hasher, files: Sequence[tuple[Path, int]]) -> None:
        """Feed the bytes of ``files`` (path, expected size), in order, to ``hasher``.

        A reading thread fills pool buffers straight from the file (direct I/O) while a
        hashing thread hashes the previous one. Raises :class:`StorageError` if a file is
        missing or does not hold the expected size.
        """

        async def produce(send: SendBatch) -> None:
            for path, size in files:
                reader = await self._run(partial(_BlockReader, path))
                try:
                    read = 0
                    while True:
                        buffers = [self._buffers.take() for _ in range(READ_BATCHES)]
                        blocks = await self._run(partial(reader.next_blocks, buffers))
                        if not blocks:
                            for buffer in buffers:
                                self._buffers.give(buffer)
                            break
                        count = sum(len(b) for b in blocks)
                        read += count
                        await send(_Batch(list(blocks), count, buffers))
                finally:
                    reader.close()
                if read != size:
                    raise StorageError(f"{path.name} holds {read} bytes, not the {size} recorded")

        await self._pipeline(produce, [partial(_gather_and_hash, hasher)])

    # --- running digests ---------------------------------------------------------------

    def _running_digest(self, handle: str) -> _RunningDigest:
        """The running digest of an upload, made empty if there is none (or it was dropped)."""
        digest = self._digests.get(handle)
        if digest is None:
            digest = self._digests[handle] = _RunningDigest()
            while len(self._digests) > MAX_RUNNING_DIGESTS:
                self._digests.popitem(last=False)
        self._digests.move_to_end(handle)
        return digest

    def _next_part_file(self, handle: str, number: int) -> tuple[Path, _PartFile] | None:
        """The one part file of ``number`` with a digest in its name, or None if there is not
        exactly one (absent, or a replacement in progress). Blocking."""
        directory = self._upload_dir(handle)
        try:
            with _dir_lock(directory, fcntl.LOCK_SH):
                versions = _scan_parts(directory).get(number, [])
        except (StorageError, FileNotFoundError):
            return None  # the upload is gone
        if len(versions) != 1 or versions[0].tag is None:
            return None
        return directory / versions[0].name, versions[0]

    async def _read_ahead(self, handle: str, digest: _RunningDigest) -> None:
        """Hash the stored parts that follow the digest's prefix into it, in order, as far as
        they are contiguous. Only one caller reads for a digest at a time."""
        async with digest.reading:
            while self._digests.get(handle) is digest:
                number = digest.count + 1
                if number in digest.hashing_in:
                    return  # its arrival commits it, then asks for a catch-up again
                found = await self._run(partial(self._next_part_file, handle, number))
                if found is None:
                    return
                path, part = found
                assert part.tag is not None
                generation, hasher = digest.generation, digest.hasher.copy()
                try:
                    await self._hash_files(hasher, [(path, part.size)])
                except StorageError:
                    return  # replaced or removed while being read: whoever did that says what next
                if part.tag.startswith(_PREFIX_TAG) and _tag(hasher.hexdigest(), True) != part.tag:
                    # Checked on other parts before it than these: completion reads it again
                    # and fails on the whole file's digest, unless the part is sent again.
                    return
                digest.commit(number, part.tag, hasher, generation, arrived=False)

    def _catch_up_soon(self, handle: str, digest: _RunningDigest) -> None:
        """Have the background read ahead for this upload, unless it is already doing so."""
        if self._background is None:
            return
        if digest.catching_up:
            digest.again = True  # the running task may have looked before this part was there
            return
        try:
            self._background.start_soon(self._catch_up, handle, digest)
        except RuntimeError:  # the task group has closed: the server is stopping
            self._background = None
            return
        digest.catching_up = True

    async def _caught_up_to(self, handle: str, digest: _RunningDigest, count: int) -> tuple[Hasher | None, int]:
        """A copy of the running state over parts ``1..count`` and its generation, once the
        background has read back what it lacks of them (parts stored without being hashed
        in, as after a restart, or one still arriving); ``(None, -1)`` if that takes longer
        than ``CHAIN_WAIT_SECONDS`` or nothing reads them back.

        Only a client that sends parts in order with their prefix digests waits here: one wait
        puts its parts back on the chain, so that the ones after it are hashed in as they stream.
        """
        if self._background is not None and digest.count < count:
            self._catch_up_soon(handle, digest)
            # Each part that arrives meanwhile asks for a catch-up too, when it is stored.
            with anyio.move_on_after(CHAIN_WAIT_SECONDS):
                while digest.count < count:
                    await digest.grown.wait()
        if digest.count == count:
            return digest.hasher.copy(), digest.generation
        return None, -1

    async def _catch_up(self, handle: str, digest: _RunningDigest) -> None:
        try:
            while True:
                digest.again = False
                await self._read_ahead(handle, digest)
                if not digest.again:
                    return
        except Exception as exc:
            # Only an optimisation: completion reads whatever this did not get to.
            log.warning("storage.catch_up_failed", handle=handle, error=repr(exc))
        finally:
            digest.catching_up = False

    # --- uploads ---------------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> str:
        await self._run(lambda: self._upload_dir(upload_id).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True))
        return upload_id

    def part_url(self, handle: str, number: int, size: int, sha256: str, ttl_seconds: int) -> PresignedRequest | None:
        return None

    async def put_part(
        self, handle: str, number: int, body: AsyncIterable[bytes], size: int, sha256: str, *, prefix: bool = False
    ) -> StoredPart:
        directory = self._upload_dir(handle)
        if not await self._run(directory.is_dir):
            raise StorageError(f"no upload {handle!r} in storage")
        prefix = prefix and number > 1  # part 1's prefix digest is its own digest
        digest = self._running_digest(handle)
        # The next part in order is hashed into (a copy of) the running digest as it streams
        # in. Part 1's own digest is that state already, so it needs no second hash. A part
        # that follows one being hashed in as it streams waits (its body unread) for that
        # part's final state and is hashed onto it: chaining, see the module docstring.
        link = _Link(_tag(sha256, prefix))
        previous = digest.links.get(number - 1)
        digest.links[number] = link
        generation = digest.generation
        basis: str | None = None
        onto: Hasher | None = None
        try:
            if number == 1:
                pass
            elif number == digest.count + 1:
                onto = digest.hasher.copy()
            elif previous is not None:
                with anyio.move_on_after(CHAIN_WAIT_SECONDS):
                    await previous.ready.wait()
                if previous.state is not None:
                    onto, generation, basis = previous.state.copy(), previous.generation, previous.tag
                elif number == digest.count + 1:  # the part before was committed meanwhile
                    onto, generation = digest.hasher.copy(), digest.generation
            if prefix and onto is None:
                onto, generation = await self._caught_up_to(handle, digest, number - 1)
        except BaseException:
            self._unlink(digest, number, link)
            raise
        if number > 1 and onto is None:
            self._unlink(digest, number, link)  # the next part need not wait for this one
        # A prefix digest is checked by the running state alone (one hash); without a state
        # to hash onto it cannot be checked, and the part is kept under its own digest.
        unchecked = prefix and onto is None
        own: Hasher | None = None if prefix and onto is not None else hashlib.sha256()
        checked = own if own is not None else onto
        assert checked is not None
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
                    await send(_Batch(chunks, BATCH_BYTES, [self._buffers.take()], gather=True))
                    chunks, pending = [], 0
                if offset < length:
                    chunks.append(view[offset:])
                    pending = length - offset
            if chunks:
                await send(_Batch(chunks, pending, [self._buffers.take()], gather=True))

        def hashed() -> None:
            # This part's streamed state is final: hand it to the next part if its bytes are right.
            if received == size and checked.hexdigest() == sha256:
                if number == 1:
                    link.release(checked, digest.generation)
                else:
                    link.release(onto, generation)
            else:
                link.release()

        hashing_in = number == 1 or onto is not None
        if hashing_in:
            # Reading this part back would duplicate the hashing under way, even in the
            # moment between its publication and the commit below.
            digest.hashing_in[number] += 1
        try:
            hashers = [h for h in (own, onto) if h is not None]
            out = await self._write_new_file(produce, hashers, hashed=hashed if hashing_in else None)
            try:
                digest_hex = checked.hexdigest()
                if received != size or (digest_hex != sha256 and not unchecked):
                    kind = "prefix SHA-256" if prefix else "SHA-256"
                    raise ChecksumMismatch(
                        f"part {number}: got {received} bytes with {kind} {digest_hex}, "
                        f"expected {size} bytes with {sha256}",
                        expected_size=size,
                        actual_size=received,
                        expected_sha256=sha256,
                        actual_sha256=digest_hex,
                    )
                tag = _tag(digest_hex, prefix and not unchecked)
                await self._run(partial(self._publish_part, out, directory, number, tag))
            finally:
                with anyio.CancelScope(shield=True):
                    await self._run(out.discard)
            if number == 1:
                # Part 1 goes onto the empty prefix, which every generation shares.
                digest.commit(1, tag, checked, digest.generation, arrived=True)
            elif onto is not None:
                digest.commit(number, tag, onto, generation, arrived=True, basis=basis)
            else:
                digest.stored(number, tag)
        finally:
            self._unlink(digest, number, link)
            if hashing_in:
                digest.hashing_in[number] -= 1
                if not digest.hashing_in[number]:
                    del digest.hashing_in[number]
            if self._digests.get(handle) is digest:
                # Parts that arrived early may follow this one, this may be the first part
                # this process sees of an upload begun before a restart, or (if this part
                # failed) an earlier version of it may be there to read.
                self._catch_up_soon(handle, digest)
        return _tagged_part(number, size, tag)

    @staticmethod
    def _unlink(digest: _RunningDigest, number: int, link: _Link) -> None:
        """This arrival of part ``number`` offers the next part no (further) state to wait for."""
        link.release()
        if digest.links.get(number) is link:
            del digest.links[number]

    @staticmethod
    def _publish_part(out: _NewFile, directory: Path, number: int, tag: str) -> None:
        """Put a verified part file in place under its digest's name and remove the part's
        other versions, under the upload's lock so that concurrent writers of one part number
        keep exactly one file (the last one). Blocking."""
        name = f"{number}.{tag}.part"
        with _dir_lock(directory, fcntl.LOCK_EX):
            out.publish(directory / name)
            for old in _scan_parts(directory).get(number, []):
                if old.name != name:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / old.name)
            _fsync_dir(directory)

    async def list_parts(self, handle: str) -> list[StoredPart]:
        def scan() -> list[StoredPart]:
            directory = self._upload_dir(handle)
            try:
                with _dir_lock(directory, fcntl.LOCK_SH):
                    found = _scan_parts(directory)
            except StorageError:
                return []
            # Two versions of a part exist only after a crash between a publish and its
            # cleanup; the newer is the one that was being stored.
            newest = (versions[0] for versions in found.values())
            return sorted(
                (_tagged_part(p.number, p.size, p.tag) for p in newest), key=lambda p: p.number
            )

        return await self._run(scan)

    async def complete(self, handle: str, parts: Sequence[StoredPart], key: str, sha256: str | None) -> StoredContent:
        staged = await self._run(partial(self._stage_content, handle, parts))
        try:
            digest = await self._whole_digest(handle, staged)
            size = sum(staged.part_sizes)
            if sha256 is not None and digest != sha256:
                raise ChecksumMismatch(
                    f"the parts make a file with SHA-256 {digest}, expected {sha256}",
                    expected_size=size,
                    actual_size=size,
                    expected_sha256=sha256,
                    actual_sha256=digest,
                )
            manifest = _Manifest(size, digest, staged.part_sizes)
            await self._run(partial(self._publish_content, staged, manifest, key))
        finally:
            with anyio.CancelScope(shield=True):
                await self._run(partial(_remove_tree, staged.directory))  # a no-op once published
        return StoredContent(size=size, sha256=digest)

    def _stage_content(self, handle: str, parts: Sequence[StoredPart]) -> _Staged:
        """Link ``parts`` into a new content directory under ``tmp/``. Blocking.

        From here on, completion reads and publishes these links, so what is hashed is what
        is published even if a part is replaced meanwhile. A part is taken from the file
        named with its recorded digest tag if there is one, else from its newest file.
        """
        directory = self._upload_dir(handle)
        staging = self._tmp / f"{secrets.token_hex(12)}.content"
        staging.mkdir(mode=_DIR_MODE)
        try:
            sizes: list[int] = []
            tags: list[str | None] = []
            with _dir_lock(directory, fcntl.LOCK_SH):
                found = _scan_parts(directory)
                for index, part in enumerate(parts, start=1):
                    if part.number != index:
                        raise StorageError(f"parts must be numbered 1..{len(parts)} in order, not {part.number}")
                    versions = found.get(index, [])
                    named = [v for v in versions if v.tag is not None and v.tag == _tag_of(part)]
                    if not versions:
                        raise StorageError(f"part {index} of {handle!r} is missing from storage")
                    chosen = (named or versions)[0]
                    if chosen.size != part.size:
                        raise StorageError(f"part {index} of {handle!r} holds {chosen.size} bytes, not {part.size}")
                    os.link(directory / chosen.name, staging / _piece_name(index))
                    sizes.append(chosen.size)
                    tags.append(chosen.tag)
            return _Staged(staging, tuple(sizes), tuple(tags))
        except BaseException:
            _remove_tree(staging)
            raise

    async def _whole_digest(self, handle: str, staged: _Staged) -> str:
        """The SHA-256 of the staged parts in order, reading as little of them as it can."""
        if len(staged.part_tags) == 1 and staged.part_tags[0] is not None:
            # One part is the whole file, verified as it arrived (its own digest is its prefix digest).
            return staged.part_tags[0].removeprefix(_PREFIX_TAG)
        digest = self._running_digest(handle)
        # Whatever the background has not hashed yet is read now, into the running digest, so
        # that a completion retried after a mismatch does not read it again.
        await self._read_ahead(handle, digest)
        # The running digest counts only if its parts are the ones linked; no await from here
        # on until the state is copied, so ``covered`` and ``hasher`` belong together.
        covered = tuple(digest.covered)
        if staged.part_tags[: len(covered)] == covered:
            hasher, start = digest.hasher.copy(), len(covered)
        else:
            hasher, start = hashlib.sha256(), 0
        rest = [(staged.piece(i), staged.part_sizes[i]) for i in range(start, len(staged.part_sizes))]
        if rest:
            await self._hash_files(hasher, rest)
        return hasher.hexdigest()

    def _publish_content(self, staged: _Staged, manifest: _Manifest, key: str) -> None:
        """Write the manifest into the staged directory and rename it into place. Blocking.

        If ``key`` already names a content (a completion retried after a crash, or racing
        another), the same content is left as it is; anything else there was never recorded
        (its completion failed before the database took it) and is replaced.
        """
        manifest_path = staged.directory / MANIFEST
        fd = os.open(manifest_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            os.write(fd, manifest.dumps())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(staged.directory)  # the links and the manifest, before the name points at them
        destination = self._content_path(key)
        destination.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
        for _ in range(3):
            try:
                os.rename(staged.directory, destination)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
            else:
                _fsync_dir(destination.parent)
                return
            try:
                existing: _Manifest | None = _Manifest.load(destination / MANIFEST)
            except (FileNotFoundError, NotADirectoryError, StorageError):
                existing = None
            if existing == manifest:
                return  # the staged copy is removed by the caller
            self._remove_content(destination)
        raise StorageError(f"could not publish content {key!r}: its name stays taken")

    def _remove_content(self, path: Path) -> None:
        """Remove a content directory (or an old single-file content): first renamed into
        ``tmp/`` (atomic, so its name never shows a half-deleted content), then emptied. Blocking."""
        aside = self._tmp / f"{secrets.token_hex(12)}{_DELETED}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)
        _remove_tree(aside)

    async def release_parts(self, handle: str) -> None:
        await self.abort(handle)

    async def abort(self, handle: str) -> None:
        self._digests.pop(_safe(handle), None)

        def remove() -> None:
            directory = self._upload_dir(handle)
            if directory.is_dir():
                _remove_tree(directory)

        await self._run(remove)

    # --- contents ----------------------------------------------------------------------

    def content_url(self, key: str, ttl_seconds: int) -> PresignedRequest | None:
        return None

    def _pieces(self, key: str) -> list[tuple[Path, int]]:
        """The files of content ``key`` in order, with their sizes. Blocking."""
        path = self._content_path(key)
        try:
            manifest = _Manifest.load(path / MANIFEST)
        except NotADirectoryError:
            # A content stored whole, as this storage did before contents were made of parts.
            return [(path, path.stat().st_size)]
        except FileNotFoundError:
            raise StorageError(f"content {key!r} is missing from storage") from None
        return [(path / _piece_name(i), size) for i, size in enumerate(manifest.part_sizes, start=1)]

    async def read_range(self, key: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        scratch = self._buffers.take()
        try:
            pieces = await self._run(partial(self._pieces, key))
            start = 0  # where the current piece starts in the content
            remaining = length
            for path, size in pieces:
                if remaining <= 0:
                    break
                if offset >= start + size:
                    start += size
                    continue
                wanted = min(start + size - offset, remaining)
                reader = await self._run(partial(_BlockReader, path, offset - start))
                try:
                    while wanted > 0:
                        # Copied out of the scratch buffer: the server may hold a block after sending it.
                        block = await self._run(partial(reader.read, scratch, wanted))
                        if not block:
                            raise StorageError(f"content {key!r}: {path.name} is shorter than recorded")
                        wanted -= len(block)
                        remaining -= len(block)
                        offset += len(block)
                        yield block
                finally:
                    reader.close()
                start += size
            if remaining > 0:
                raise StorageError(f"content {key!r} is shorter than recorded")
        finally:
            self._buffers.give(scratch)

    async def delete_content(self, key: str) -> None:
        await self._run(partial(self._remove_content, self._content_path(key)))
