"""Blocking file work for the engines, meant to run in worker threads.

Reads and hashes go in blocks of ``block_size`` so memory stays flat whatever
the file or part size; ``hashlib`` releases the GIL on big buffers, so hashing
in threads uses the second core.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from dataeraid.errors import DataeraiError, from_os_error


@dataclass(frozen=True)
class SourceIdentity:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of_path(cls, path: str) -> SourceIdentity:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    @classmethod
    def of_fd(cls, fd: int) -> SourceIdentity:
        st = os.fstat(fd)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


def source_changed(path: str, reason: str) -> DataeraiError:
    return DataeraiError("source_changed", f"{path} changed after it was enqueued ({reason}); nothing was committed")


def check_source(path: str, expected: SourceIdentity) -> None:
    """Raise ``source_changed`` unless the file at ``path`` is still the one enqueued."""
    try:
        now = SourceIdentity.of_path(path)
    except FileNotFoundError as exc:
        raise source_changed(path, "it is gone") from exc
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from exc
    if now != expected:
        raise source_changed(path, f"size/mtime/inode {now} != {expected}")


def read_exact(fd: int, offset: int, length: int, path: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise source_changed(path, f"short read at offset {offset}")
    return data


def feed_range(fd: int, offset: int, length: int, block_size: int, path: str, *into: hashlib._Hash) -> None:
    """Feed ``length`` bytes at ``offset`` to every hasher in ``into``, reading each block once."""
    end = offset + length
    while offset < end:
        block = read_exact(fd, offset, min(block_size, end - offset), path)
        for hasher in into:
            hasher.update(block)
        offset += len(block)


#: One worker-thread call hashes at most this much, so cancelling (a pause, a
#: shutdown) waits for no more than a fraction of a second of hashing.
HASH_SLICE = 64 * 1024 * 1024


def write_all_at(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write ``buffers`` back to back at ``offset``, however many calls it takes."""
    views = [memoryview(b) for b in buffers if b]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
