"""A content's files laid end to end: the one byte stream that parts and ranges cut.

A repository content is one byte stream plus a manifest of the files in it, in
order (docs/http-api.md). A single file is a manifest of one; a directory is its
regular files, sorted by path, so that many small files share parts instead of
costing a round trip each. The engines never see files: they read, write and hash
the stream at offsets, and a :class:`FileSet` maps each offset to a file.

Everything here blocks and is meant for worker threads. A :class:`FileSet` may be
used from several threads at once: files are opened on first use and kept in a
small cache, and a file is only closed when no thread is using it.

Paths are hostile until checked (:func:`safe_relative_path`): a download writes
only below its destination directory, through directory descriptors opened with
``O_NOFOLLOW``, so neither ``..`` nor a symlink planted in the tree can lead out.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dataerai.contract import MAX_FILES_PER_CONTENT, MAX_PATH_LENGTH, path_problem, plain_segment

from dataeraid.errors import DataeraiError, from_os_error

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

#: One worker-thread call reads or hashes at most this much, so cancelling (a
#: pause, a shutdown) waits for no more than a fraction of a second of hashing.
HASH_SLICE = 64 * 1024 * 1024
#: Files kept open at once by one file set (each job has its own).
MAX_OPEN_FILES = 64
#: Directories kept open by a download's file set, so that files beside each other
#: don't each walk the tree from the root.
MAX_OPEN_DIRS = 32
#: A directory upload may hold at most this many files (the repository's limit).
MAX_FILES = MAX_FILES_PER_CONTENT
PART_SUFFIX = ".part"
#: A sync touching more files than this flushes their filesystem once instead.
SYNCFS_ABOVE_FILES = 16
#: A downloaded file's piece of a range smaller than this stays in the page cache (drop_cache).
DROP_CACHE_MIN_BYTES = 1024 * 1024


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(fd)`` (which Python's ``os`` lacks), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_syncfs = _load_syncfs()


@dataclass(frozen=True)
class StreamFile:
    """One file of a stream: its manifest path, its place in the stream, and, for an
    upload's source, the identity it had at enqueue (a change is ``source_changed``)."""

    path: str
    offset: int
    size: int
    mtime_ns: int | None = None
    inode: int | None = None
    #: A download's file: the SHA-256 the repository lists for it, if any.
    sha256: str | None = None

    def to_json(self) -> list[object]:
        return [self.path, self.size, self.mtime_ns, self.inode]


def source_changed(path: str, reason: str) -> DataeraiError:
    return DataeraiError("source_changed", f"{path} changed after it was enqueued ({reason}); nothing was committed")


def safe_relative_path(path: object) -> str:
    """``path`` if it is a relative POSIX path that stays where it is put, else ``unsafe_path``."""
    if not isinstance(path, str):
        raise DataeraiError("unsafe_path", f"the server sent a path that is not a string: {str(path)[:80]!r}")
    problem = path_problem(path)
    if problem is not None:
        raise DataeraiError("unsafe_path", f"the server sent the path {path[:80]!r}, which {problem}")
    for segment in path.split("/"):
        if len(segment.encode()) > 255 - len(PART_SUFFIX):
            raise DataeraiError("unsafe_path", f"a name in {path[:80]!r} is too long for this disk")
    return path


def lay_out(entries: Sequence[tuple[str, int]]) -> list[StreamFile]:
    """Files of the given paths and sizes, back to back from offset 0."""
    files: list[StreamFile] = []
    offset = 0
    for path, size in entries:
        files.append(StreamFile(path, offset, size))
        offset += size
    return files


def check_manifest(files: Sequence[StreamFile], total: int) -> None:
    """Refuse a manifest that is not a tree of files covering exactly ``total`` bytes."""
    seen: set[str] = set()
    offset = 0
    for f in files:
        safe_relative_path(f.path)
        if f.offset != offset or f.size < 0:
            raise DataeraiError("unsafe_path", f"the server's file list does not cover the content in order at "
                                               f"{f.path[:80]!r}")
        if f.path in seen:
            raise DataeraiError("unsafe_path", f"the server listed {f.path[:80]!r} twice")
        seen.add(f.path)
        offset += f.size
    if offset != total:
        raise DataeraiError("unsafe_path", f"the server's files add up to {offset} bytes, not {total}")
    for f in files:
        parts = f.path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in seen:
                raise DataeraiError("unsafe_path", f"{'/'.join(parts[:depth])!r} is both a file and a directory")


# --- what an upload reads -------------------------------------------------------------------


def scan_source(local_path: str) -> tuple[str, list[StreamFile], list[str]]:
    """The manifest of an upload of ``local_path``: its root (the directory the manifest's
    paths are relative to), its files with their identities, and what was skipped.

    A file is a manifest of one named by its base name. A directory's manifest paths start
    with the directory's own name; its regular files are taken in path order, and symlinks
    and special files are skipped (as rclone does by default) and reported. Blocking.
    """
    local_path = os.path.abspath(local_path)
    root, name = os.path.split(local_path.rstrip("/") or "/")
    st = os.stat(local_path)
    if stat.S_ISREG(st.st_mode):
        return root, [StreamFile(name, 0, st.st_size, st.st_mtime_ns, st.st_ino)], []
    if not stat.S_ISDIR(st.st_mode):
        raise DataeraiError("invalid_argument", f"{local_path} is neither a regular file nor a directory")
    found: list[tuple[str, os.stat_result]] = []
    skipped: list[str] = []
    # Each path is ``relative`` (checked already) plus one name: a plain name keeps it one the
    # repository takes if it is not too long; only other names need ``path_problem``'s walk of
    # the whole path.
    top_ok = path_problem(name) is None

    def walk(directory: str, relative: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{relative}/{entry.name}"
                plain = top_ok and plain_segment(entry.name) and len(rel) <= MAX_PATH_LENGTH
                problem = None if plain else path_problem(rel)
                if problem is not None:
                    # The repository would refuse it; say which file before anything is sent.
                    raise DataeraiError("invalid_argument", f"{entry.path!r} cannot be a repository path: it {problem}")
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, rel)
                elif entry.is_file(follow_symlinks=False):
                    found.append((rel, entry.stat(follow_symlinks=False)))
                    if len(found) > MAX_FILES:
                        raise DataeraiError("invalid_argument", f"{local_path} holds more than {MAX_FILES} files")
                else:
                    skipped.append(rel)

    walk(local_path, name)
    files: list[StreamFile] = []
    offset = 0
    for rel, fst in found:
        files.append(StreamFile(rel, offset, fst.st_size, fst.st_mtime_ns, fst.st_ino))
        offset += fst.st_size
    return root, files, skipped


# --- the stream over its files ----------------------------------------------------------------


class FileSet:
    """The stream of ``files`` (below ``root``), read or written at stream offsets.

    ``mode`` is ``"source"`` (an upload: files are opened read-only and must still be
    what was recorded at enqueue) or ``"part"`` (a download: each file is written to
    ``PATH.part`` below ``root``, created at its full size, never through a symlink).
    """

    def __init__(self, root: str, files: Sequence[StreamFile], mode: str, max_open: int = MAX_OPEN_FILES) -> None:
        assert mode in ("source", "part")
        self.root = root
        self.files = list(files)
        self.size = self.files[-1].offset + self.files[-1].size if self.files else 0
        self._mode = mode
        self._starts = [f.offset for f in self.files]
        self._max_open = max(1, max_open)
        self._lock = threading.Lock()
        self._open: OrderedDict[int, int] = OrderedDict()  # file index -> fd, least recently used first
        self._users: dict[int, int] = {}  # file index -> threads using its fd now
        self._root_fd: int | None = None
        self._dirs: OrderedDict[str, int] = OrderedDict()  # directory below the root -> fd
        self._paths: list[str] | None = None  # local_paths(), once asked for

    # -- mapping

    def local_path(self, index: int) -> str:
        name = self.files[index].path + (PART_SUFFIX if self._mode == "part" else "")
        if os.sep == "/":
            return os.path.join(self.root, name)
        return os.path.join(self.root, *name.split("/"))

    def local_paths(self) -> list[str]:
        """Every file's :meth:`local_path`, in order (made once, then kept)."""
        if self._paths is None:
            self._paths = [self.local_path(index) for index in range(len(self.files))]
        return self._paths

    def index_at(self, offset: int) -> int:
        """The file holding stream byte ``offset`` (empty files hold none)."""
        index = bisect.bisect_right(self._starts, offset) - 1
        while index + 1 < len(self.files) and self.files[index].size == 0 and self.files[index + 1].offset <= offset:
            index += 1
        return max(index, 0)

    def segments(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """``(file index, offset in that file, length)`` for each file the range touches."""
        end = offset + length
        index = self.index_at(offset) if self.files else 0
        while offset < end and index < len(self.files):
            f = self.files[index]
            if f.size and offset < f.offset + f.size:
                step = min(end, f.offset + f.size) - offset
                yield index, offset - f.offset, step
                offset += step
            index += 1

    def files_in(self, offset: int, length: int) -> list[int]:
        """Indexes of the files the range touches, empty files inside it included."""
        if not self.files:
            return []
        first = self.index_at(offset)
        last = self.index_at(max(offset, offset + length - 1))
        return list(range(first, last + 1))

    # -- descriptors

    def _open_file(self, index: int) -> int:
        f = self.files[index]
        if self._mode == "source":
            path = self.local_paths()[index]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise source_changed(path, "it is gone") from None
            except OSError as exc:
                raise from_os_error(exc, f"opening {path}") from exc
            st = os.fstat(fd)
            if f.mtime_ns is not None and (st.st_size, st.st_mtime_ns, st.st_ino) != (f.size, f.mtime_ns, f.inode):
                os.close(fd)
                raise source_changed(path, "its size, mtime or inode differs")
            return fd
        return self._open_part(index)

    def _open_part(self, index: int) -> int:
        parent = self._parent_fd(self.files[index].path)
        try:
            name = self.files[index].path.rsplit("/", 1)[-1] + PART_SUFFIX
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
            if os.fstat(fd).st_size != self.files[index].size:
                os.ftruncate(fd, self.files[index].size)
            return fd
        except OSError as exc:
            raise from_os_error(exc, f"opening {self.local_path(index)}") from exc
        finally:
            os.close(parent)

    def _parent_fd(self, path: str) -> int:
        """A new descriptor of ``path``'s directory below the root, made as needed, reached
        without following any symlink (a symlink in the way is ``unsafe_path``).

        Directories already reached are kept open (a few at most), so the files of one
        directory don't each walk the tree again.
        """
        directory = path.rpartition("/")[0]
        with self._lock:
            known = self._dirs.get(directory)
            if known is not None:
                self._dirs.move_to_end(directory)
                return os.dup(known)
        if self._root_fd is None:
            try:
                self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise from_os_error(exc, f"opening {self.root}") from exc
        fd = os.dup(self._root_fd)
        try:
            for segment in directory.split("/") if directory else []:
                try:
                    next_fd = _open_dir(segment, fd)
                except FileNotFoundError:
                    try:
                        os.mkdir(segment, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile by another thread
                    except OSError as exc:
                        raise from_os_error(exc, f"creating the directories of {path}") from exc
                    next_fd = _open_dir(segment, fd)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            if directory not in self._dirs:
                self._dirs[directory] = os.dup(fd)
                while len(self._dirs) > MAX_OPEN_DIRS:
                    os.close(self._dirs.popitem(last=False)[1])
        return fd

    def _acquire(self, index: int) -> int:
        with self._lock:
            fd = self._open.get(index)
            if fd is not None:
                self._open.move_to_end(index)
                self._users[index] = self._users.get(index, 0) + 1
                return fd
        fd = self._open_file(index)
        with self._lock:
            existing = self._open.get(index)
            if existing is not None:  # another thread opened it meanwhile
                os.close(fd)
                fd = existing
            else:
                self._open[index] = fd
            self._users[index] = self._users.get(index, 0) + 1
            self._evict()
            return fd

    def _release(self, index: int) -> None:
        with self._lock:
            self._users[index] -= 1
            if not self._users[index]:
                del self._users[index]
            self._evict()

    def _evict(self) -> None:
        # Called with the lock held: close idle descriptors beyond the cap, oldest first.
        while len(self._open) > self._max_open:
            idle = next((index for index in self._open if index not in self._users), None)
            if idle is None:
                return
            os.close(self._open.pop(idle))

    @contextmanager
    def descriptor(self, index: int) -> Iterator[int]:
        """File ``index``'s descriptor, open for the block (for ``os.sendfile``: read it with
        ``pread``-like calls only, never its position)."""
        fd = self._acquire(index)
        try:
            yield fd
        finally:
            self._release(index)

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()
            for fd in self._dirs.values():
                os.close(fd)
            self._dirs.clear()
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None

    # -- bytes

    def read(self, offset: int, length: int) -> bytes:
        """``length`` stream bytes from ``offset``; a short file is ``source_changed``."""
        pieces: list[bytes] = []
        for index, at, step in self.segments(offset, length):
            fd = self._acquire(index)
            try:
                data = os.pread(fd, step, at)
            except OSError as exc:
                raise from_os_error(exc, f"reading {self.local_path(index)}") from exc
            finally:
                self._release(index)
            if len(data) != step:
                raise source_changed(self.local_path(index), f"short read at offset {at}")
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the stream's bytes from ``offset``, each file read with one
        ``preadv`` into it (no ``bytes`` made); a short file is ``source_changed``."""
        filled = 0
        for index, at, step in self.segments(offset, len(buffer)):
            if at == 0 and step == self.files[index].size and self._mode == "source" and index not in self._open:
                # A whole source file that is not open: opened (and checked), read and closed
                # past the cache, so that a pass over many small files does not open each into
                # the cache and close another one each time.
                fd = self._open_file(index)
                try:
                    self._preadv_all(index, fd, buffer[filled:filled + step], 0)
                finally:
                    os.close(fd)
            else:
                fd = self._acquire(index)
                try:
                    self._preadv_all(index, fd, buffer[filled:filled + step], at)
                finally:
                    self._release(index)
            filled += step
        if filled != len(buffer):
            raise source_changed(self.root, f"the stream ends before offset {offset + len(buffer)}")

    def _preadv_all(self, index: int, fd: int, view: memoryview, at: int) -> None:
        """Fill ``view`` from file ``index`` (open as ``fd``) at ``at``; one that ends first is ``source_changed``."""
        got = 0
        try:
            while got < len(view):
                n = os.preadv(fd, [view[got:]], at + got)
                if n == 0:
                    raise source_changed(self.local_path(index), f"short read at offset {at + got}")
                got += n
        except OSError as exc:
            raise from_os_error(exc, f"reading {self.local_path(index)}") from exc

    def write(self, offset: int, buffers: Sequence[bytes | memoryview]) -> None:
        """Write ``buffers``, back to back, at stream ``offset``."""
        views = [memoryview(b) for b in buffers if b]
        total = sum(len(v) for v in views)
        for index, at, step in self.segments(offset, total):
            fd = self._acquire(index)
            try:
                taken: list[memoryview] = []
                need = step
                while need:
                    view = views[0]
                    if len(view) <= need:
                        taken.append(view)
                        need -= len(view)
                        views.pop(0)
                    else:
                        taken.append(view[:need])
                        views[0] = view[need:]
                        need = 0
                _pwrite_all(fd, taken, at)
            except OSError as exc:
                raise from_os_error(exc, f"writing {self.local_path(index)}") from exc
            finally:
                self._release(index)

    def sync(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Make the bytes of ``(offset, length)`` ranges durable.

        One ``fdatasync`` per file they touch, or, where that is many files (a
        directory of small ones), one ``syncfs`` of the destination's filesystem:
        a sync per file costs a disk flush each (3.3 s for 10,000 files here,
        against 0.6 s without), one syncfs costs one.
        """
        touched = sorted({index for offset, length in ranges for index in self.files_in(offset, length)})
        if len(touched) > SYNCFS_ABOVE_FILES and _syncfs is not None:
            fd = self._acquire(touched[0])
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                self._release(touched[0])
        for index in touched:
            fd = self._acquire(index)
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise from_os_error(exc, f"flushing {self.local_path(index)} to disk") from exc
            finally:
                self._release(index)

    def drop_cache(self, offset: int, length: int) -> None:
        """Let the range's pages leave the page cache (they are on disk and hashed).

        Pieces under :data:`DROP_CACHE_MIN_BYTES` that are not the whole range keep theirs:
        a small file's descriptor is usually closed by then, and opening it again costs more
        than the few pages it frees (a tree of 10,000 small files spent about a sixth of its
        download doing that). A file read in ranges smaller than that is still dropped range
        by range.
        """
        least = min(DROP_CACHE_MIN_BYTES, length)
        for index, at, step in self.segments(offset, length):
            if step < least:
                continue
            fd = self._acquire(index)
            try:
                os.posix_fadvise(fd, at, step, os.POSIX_FADV_DONTNEED)
            finally:
                self._release(index)

    def check_sources(self) -> None:
        """``source_changed`` unless every source file is still the one recorded (a ``stat``
        of each, by its path: 10,000 for a directory of 10,000 files, so nothing else is
        done per file but the comparison)."""
        stat_ = os.stat
        for path, f in zip(self.local_paths(), self.files, strict=True):
            try:
                st = stat_(path, follow_symlinks=False)
            except FileNotFoundError:
                raise source_changed(path, "it is gone") from None
            except OSError as exc:
                raise from_os_error(exc, f"reading {path}") from exc
            if st.st_ino != f.inode or st.st_mtime_ns != f.mtime_ns or st.st_size != f.size:
                raise source_changed(path, "its size, mtime or inode differs")

    def create_missing(self) -> None:
        """Create the ``.part`` files nothing was written to (empty files have no range)."""
        for index, f in enumerate(self.files):
            if f.size == 0:
                self._acquire(index)
                self._release(index)

    def parts_ready(self) -> bool:
        """Every ``.part`` file exists at its full size (a download can resume from checkpoints)."""
        for index in range(len(self.files)):
            try:
                st = os.stat(self.local_path(index), follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != self.files[index].size:
                return False
        return True


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataeraiError("unsafe_path", f"{name!r} is a symlink or not a directory; refusing to write through "
                                           "it") from exc


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class BufferPool:
    """A few reusable buffers of ``size`` bytes, for passes that read a stream block by block
    into memory they already have (:meth:`FileSet.readinto`) instead of a new ``bytes`` per
    block. Safe from several threads; at most ``keep`` idle buffers are kept."""

    def __init__(self, size: int, keep: int = 2) -> None:
        self.size = size
        self._keep = keep
        self._idle: list[bytearray] = []
        self._lock = threading.Lock()

    @contextmanager
    def buffer(self) -> Iterator[memoryview]:
        with self._lock:
            buffer = self._idle.pop() if self._idle else bytearray(self.size)
        try:
            yield memoryview(buffer)
        finally:
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append(buffer)


class StreamHasher:
    """The SHA-256 of a stream fed in order, and of each file in it as it passes.

    A stream of one file needs no second hasher: that file's digest is the stream's.
    """

    def __init__(self, files: Sequence[StreamFile]) -> None:
        self.whole: Hasher = hashlib.sha256()
        self._files = files
        self._per_file = len(files) > 1
        self._index = 0
        self._current: Hasher = hashlib.sha256()
        self._left = files[0].size if files else 0
        self._done: list[str] = []
        if self._per_file:
            self._finish_empty()

    def _finish_empty(self) -> None:
        while self._index < len(self._files) and self._left == 0:
            self._done.append(self._current.hexdigest())
            self._index += 1
            self._current = hashlib.sha256()
            self._left = self._files[self._index].size if self._index < len(self._files) else 0

    @property
    def file_sha256(self) -> list[str]:
        """The digests of the files fed completely so far, in order."""
        if not self._per_file:
            return [self.whole.hexdigest()] if self._files and self._left == 0 else []
        return list(self._done)

    def update(self, data: bytes | memoryview) -> None:
        self.whole.update(data)
        if not self._per_file:
            self._left -= len(data)
            return
        view = memoryview(data)
        while view and self._index < len(self._files):
            step = min(len(view), self._left)
            self._current.update(view[:step])
            view = view[step:]
            self._left -= step
            self._finish_empty()

    def feed_into(self, fileset: FileSet, offset: int, length: int, pool: BufferPool,
                  also: Hasher | None = None) -> None:
        """Read ``length`` stream bytes from ``offset`` (which must follow what was fed) into a
        buffer of ``pool``, block by block, and hash each block into this stream and into
        ``also`` (a part's own digest): one read for both digests."""
        end = offset + length
        with pool.buffer() as buffer:
            while offset < end:
                block = buffer[:min(len(buffer), end - offset)]
                fileset.readinto(offset, block)
                self.update(block)
                if also is not None:
                    also.update(block)
                offset += len(block)

