"""The download engine: one asset content version to local files below ``dest_dir``.

A content is a byte stream and a manifest of the files in it
(:mod:`dataeraid.fileset`); a single file is a manifest of one. Bytes go to
``PATH.part`` beside each destination, in ranges of the stream fetched in
parallel and written at their offsets; a range is checkpointed once its bytes
are written and flushed to disk. At the end the whole stream's SHA-256 (and
each file's, where the server knows it) is checked, and each file is renamed
into place (with no clobbering: a different file already at a destination is
never replaced unless ``overwrite`` was asked for), and the directories are
fsynced.

Paths from the server are hostile until checked: only relative paths without
``..`` are accepted, directories are made and files opened below ``dest_dir``
without following symlinks, and no destination or ``.part`` file may be one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from dataeraid.engine.context import JobContext
from dataeraid.errors import DataeraiError, TargetExpired, TransientError, first_error, from_os_error
from dataeraid.fileset import (
    PART_SUFFIX,
    BufferPool,
    FileSet,
    StreamFile,
    StreamHasher,
    check_manifest,
    safe_relative_path,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def safe_file_name(name: object) -> str:
    """The server's file name if it is a plain name in this directory, else ``unsafe_path``."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DataeraiError("unsafe_path", f"the server sent an unusable file name {name!r}")
    if len(name.encode()) > 255 - len(PART_SUFFIX):
        raise DataeraiError("unsafe_path", f"the server sent a file name too long for this disk: {name[:40]!r}…")
    return name


def content_files(target: dict[str, Any], asset_id: str) -> list[StreamFile]:
    """The content's manifest from the server's download target, checked: every path stays
    below the destination, and the files cover the content exactly, in order."""
    size = int(target["size"])
    listed = target.get("files")
    if not listed:
        return [StreamFile(safe_file_name(target.get("file_name") or asset_id), 0, size, sha256=target["sha256"])]
    if not isinstance(listed, list):
        raise DataeraiError("unsafe_path", "the server sent a malformed file list")
    files: list[StreamFile] = []
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("offset"), int) \
                or not isinstance(entry.get("size"), int):
            raise DataeraiError("unsafe_path", "the server sent a malformed file list")
        sha256 = entry.get("sha256")
        files.append(StreamFile(safe_relative_path(entry.get("path")), entry["offset"], entry["size"],
                                sha256=sha256 if _is_sha256_hex(sha256) else None))
    check_manifest(files, size)
    if len(files) == 1:
        # One file is the whole content, whose digest the repository verified itself.
        files = [dataclasses.replace(files[0], sha256=target["sha256"])]
    return files


class Timeline:
    """The phases of one download as debug-level ``download.phase`` events, each with ``t``:
    seconds since the job began (``tools/download_timeline.py`` draws them from the log).

    Times taken in worker threads (a range's first and last write) are kept and logged
    with their range, so a phase costs a clock read, never a log line, off the event loop.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._start = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self._start, 4)

    def mark(self, phase: str, **fields: Any) -> None:
        self._log.debug("download.phase", phase=phase, t=self.now(), **fields)


class InOrderHash:
    """The stream's digests, fed strictly in order, right behind the writes.

    A receiving thread reports each slice it wrote (:meth:`wrote`); if the slice lies
    exactly where the digest has got to, it is hashed there from the receive buffer, so
    those bytes are never read back. One thread (:meth:`follow`) reads back from the
    page cache what was written ahead of the digest (a later range, or a slice that
    landed while the digest was behind), as soon as the bytes before it are in. Either
    way a byte is hashed once, after it was written, and only at the digest's position,
    which only moves forward. The follower sleeps on a condition between writes, so the
    event loop is not woken for it per slice.
    """

    def __init__(self, stream: StreamHasher, fileset: FileSet, pool: BufferPool) -> None:
        self.stream = stream
        #: Stream bytes hashed so far (moved only with the lock held).
        self.position = 0
        #: Of those, how many were read back from the page cache.
        self.read_back = 0
        self._fileset = fileset
        self._pool = pool
        self._changed = threading.Condition()
        #: Per range, the stream offset its bytes are written up to (a range is written in order).
        self._reached: dict[int, int] = {}
        self._stopped = False

    def wrote(self, index: int, offset: int, view: memoryview) -> None:
        """``view`` was just written at ``offset``, in range ``index``: hashed here if it is
        next; in any thread."""
        with self._changed:
            self._reached[index] = max(self._reached.get(index, 0), offset + len(view))
            if offset == self.position:
                self.stream.update(view)
                self.position += len(view)
            self._changed.notify()

    def stop(self) -> None:
        """Make :meth:`follow` return at its next block (the download stops)."""
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def catch_up(self, end: int) -> None:
        """Read back and hash the stream from the digest's position to ``end``, all of it
        written already; blocking, a block at a time."""
        with self._pool.buffer() as buffer:
            while True:
                with self._changed:
                    at = self.position
                    if at >= end or self._stopped:
                        return
                    block = buffer[:min(len(buffer), end - at)]
                    self._fileset.readinto(at, block)
                    self.stream.update(block)
                    self.position = at + len(block)
                    self.read_back += len(block)

    def follow(self, ranges: Sequence[tuple[int, int, int, bool]], hashed: Callable[[int], None]) -> None:
        """Hash ``(index, start, end, fetched)`` ranges in order, each right behind its
        writes (one not ``fetched`` now is on disk already); ``hashed(index)`` after each.
        Blocking, for one worker thread, until all are hashed or :meth:`stop`."""
        for index, _, end, fetched in ranges:
            if fetched:
                while True:
                    with self._changed:
                        while not self._stopped and self.position < end \
                                and self._reached.get(index, 0) <= self.position:
                            self._changed.wait()
                        if self._stopped or self.position >= end:
                            break
                        written = self._reached[index]
                    self.catch_up(written)
            self.catch_up(end)
            if self._stopped:
                return
            hashed(index)


def _is_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def sha256_of(path: str, block_size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def _same_content(path: str, size: int, sha256: str | None, block_size: int) -> bool:
    """``path`` is a regular file (not a symlink) holding exactly this content."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size and sha256 is not None \
        and sha256_of(path, block_size) == sha256


def _refuse_symlinks(dest_dir: str, path: str, checked: set[str]) -> None:
    """``unsafe_path`` if a symlink stands anywhere on ``path`` below ``dest_dir`` (or as
    its ``.part``): nothing is written or replaced through one.

    ``checked`` holds the directories this look already found no symlink at, shared across
    the files of one download, so that a tree's files don't each look at every directory
    above them again; it gains this path's directories.
    """
    here = dest_dir
    segments = path.split("/")
    for segment in segments[:-1]:
        here = os.path.join(here, segment)
        if here not in checked:
            if _is_symlink(here):
                raise DataeraiError("unsafe_path", f"{here} is a symlink; refusing to write through it")
            checked.add(here)
    here = os.path.join(here, segments[-1])
    for candidate in (here, here + PART_SUFFIX):
        if _is_symlink(candidate):
            raise DataeraiError("unsafe_path", f"{candidate} is a symlink; refusing to write through it")


def _fsync_dir(path: str) -> None:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _take_back_placed(fileset: FileSet, dest_dir: str, block_size: int) -> None:
    """After a restart during placement: link each file already moved into place back
    to its ``.part`` name, so the download resumes from its checkpoints instead of
    starting over.

    Only for a job whose every range was checkpointed (so nothing is written to
    these files again), and only where the destination holds exactly that file's
    content by its SHA-256; any other missing ``.part`` leaves the checkpoints void.
    """
    for index, f in enumerate(fileset.files):
        part = fileset.local_path(index)
        if os.path.lexists(part):
            continue
        dest = os.path.join(dest_dir, *f.path.split("/"))
        if _same_content(dest, f.size, f.sha256, block_size):
            os.link(dest, part, follow_symlinks=False)


def _place(fileset: FileSet, dest_dir: str, overwrite: bool, block_size: int) -> None:
    """Move every finished ``.part`` into place, atomically per file, and make it durable.

    Without ``overwrite`` nothing already at a destination is replaced: a file that
    appeared there meanwhile with the same content is kept (and the ``.part`` dropped),
    a different one is ``destination_exists`` (and the ``.part`` kept).
    """
    directories: set[str] = set()
    for index, f in enumerate(fileset.files):
        part = fileset.local_path(index)
        dest = os.path.join(dest_dir, *f.path.split("/"))
        if _is_symlink(dest):
            raise DataeraiError("unsafe_path", f"{dest} is a symlink; refusing to write through it")
        if overwrite:
            if _same_file(part, dest):
                os.unlink(part)  # placed before a restart and linked back (see _take_back_placed)
            else:
                os.replace(part, dest)
        else:
            try:
                os.link(part, dest)  # fails if anything appeared at dest meanwhile
            except FileExistsError as exc:
                if not _same_content(dest, f.size, f.sha256, block_size):
                    raise DataeraiError("destination_exists", f"{dest} appeared during the download; kept {part}") \
                        from exc
            os.unlink(part)
        directories.add(os.path.dirname(dest))
    for directory in sorted(directories):
        _fsync_dir(directory)


async def run_download(ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    params = job["params"]
    timeline = Timeline(ctx.log)
    timeline.mark("begin")
    asset_id: str = params["asset_id"]
    overwrite = bool(params.get("overwrite"))
    dest_dir = str(job["dest_dir"])

    # Once a content version was picked, a resumed job keeps reading that one.
    target = await ctx.retrying(
        "asking where to read the asset",
        lambda: ctx.remote.download_target(asset_id, job.get("content_id") or params.get("content_id")),
    )
    timeline.mark("target")
    manifest = content_files(target, asset_id)
    name = manifest[0].path if len(manifest) == 1 else (target.get("file_name") or manifest[0].path.split("/")[0])
    size = int(target["size"])
    chunk_size = int(job["chunk_size"])
    count = max(1, math.ceil(size / chunk_size))
    if job.get("content_id") != target["content_id"]:
        await ctx.store.clear_checkpoints(ctx.job_id)
        await ctx.save(content_id=target["content_id"], sha256=target["sha256"], bytes_total=size,
                       chunk_count=count, file_name=name)

    try:
        await trio.to_thread.run_sync(lambda: os.makedirs(dest_dir, exist_ok=True))
    except OSError as exc:
        raise from_os_error(exc, f"creating {dest_dir}") from exc
    fileset = FileSet(dest_dir, manifest, "part")
    files = [{"local_path": os.path.join(dest_dir, *f.path.split("/")), "size": f.size} for f in manifest]

    def existing() -> str | None:
        """All destinations hold this content already ("done"), or the first that differs, or None."""
        present = 0
        checked: set[str] = set()
        for f in manifest:
            dest = os.path.join(dest_dir, *f.path.split("/"))
            _refuse_symlinks(dest_dir, f.path, checked)
            if not os.path.lexists(dest):
                continue
            if not _same_content(dest, f.size, f.sha256, ctx.settings.io_block_size):
                return dest
            present += 1
        return "done" if present == len(manifest) else None

    if overwrite:

        def no_symlinks() -> None:
            checked: set[str] = set()
            for f in manifest:
                _refuse_symlinks(dest_dir, f.path, checked)

        try:
            await trio.to_thread.run_sync(no_symlinks)
        except OSError as exc:
            raise from_os_error(exc, f"looking at what is already in {dest_dir}") from exc
    else:
        try:
            found = await trio.to_thread.run_sync(existing)
        except OSError as exc:
            raise from_os_error(exc, f"looking at what is already in {dest_dir}") from exc
        if found == "done":
            ctx.log.info("destination already holds this content", path=files[0]["local_path"])
            return {"files": files}
        if found is not None:
            raise DataeraiError("destination_exists", f"{found} exists and differs; pass overwrite to replace it")

    try:
        done = await ctx.store.checkpoints(ctx.job_id)
        if len(done) == count:
            try:
                await trio.to_thread.run_sync(_take_back_placed, fileset, dest_dir, ctx.settings.io_block_size)
            except OSError as exc:
                raise from_os_error(exc, f"looking at the files already placed in {dest_dir}") from exc
        if done and not await _parts_ready(fileset):
            # A .part file went missing or changed size: its checkpoints mean nothing now.
            await ctx.store.clear_checkpoints(ctx.job_id)
            done = {}
        ctx.accounting.begin(size, count, fileset, manifest[0].path,
                             bytes_done=sum(c["size"] for c in done.values()), chunks_done=len(done))
        todo = [n for n in range(count) if n not in done]
        timeline.mark("planned", size=size, ranges=count, todo=len(todo))
        stream = await _fetch_ranges(ctx, fileset, target, asset_id, size, chunk_size, todo, timeline)
        # Every range was flushed before its checkpoint; empty files have no range.
        await trio.to_thread.run_sync(fileset.create_missing)
    finally:
        fileset.close()
    timeline.mark("fetched")

    digest = stream.whole.hexdigest()
    bad = [f.path for f, sha in zip(manifest, stream.file_sha256, strict=False) if f.sha256 not in (None, sha)]
    if digest != target["sha256"] or bad:
        await ctx.store.clear_checkpoints(ctx.job_id)
        await trio.to_thread.run_sync(_remove_parts, fileset)
        which = f" ({', '.join(bad[:5])})" if bad else ""
        raise DataeraiError("checksum_mismatch", f"downloaded bytes hash to {digest}, expected {target['sha256']}"
                                                 f"{which}")
    timeline.mark("checked")
    try:
        await trio.to_thread.run_sync(_place, fileset, dest_dir, overwrite, ctx.settings.io_block_size)
    except OSError as exc:
        raise from_os_error(exc, f"moving the downloaded files into {dest_dir}") from exc
    timeline.mark("placed")
    ctx.accounting.finish()
    ctx.log.info("download complete", path=files[0]["local_path"], size=size, files=len(files))
    return {"files": files}


async def _parts_ready(fileset: FileSet) -> bool:
    try:
        return await trio.to_thread.run_sync(fileset.parts_ready)
    except OSError as exc:
        raise from_os_error(exc, f"looking at the partial files in {fileset.root}") from exc


def _remove_parts(fileset: FileSet) -> None:
    for index in range(len(fileset.files)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fileset.local_path(index))


async def _fetch_ranges(ctx: JobContext, fileset: FileSet, target: dict[str, Any], asset_id: str, size: int,
                        chunk_size: int, todo: list[int], timeline: Timeline | None = None) -> StreamHasher:
    """Fetch the ranges in ``todo`` into the ``.part`` files; the stream's digests.

    The whole stream's digest (and each file's) is computed beside the transfer, in
    order, right behind the writes (:class:`InOrderHash`): a slice written where the
    digest has got to is hashed from the receive buffer; what landed ahead of it
    (with ranges in parallel, most bytes) is read back from the page cache as soon
    as the bytes before it are in. So the digest is ready moments after the last
    byte (docs/benchmarks.md, "Where a large download waits"). While the hasher is
    behind, no range starts more than a few ahead of it. A range cut off half-way
    goes on from where it stopped.
    """
    current = {"target": target}
    queue = iter(todo)
    landed = {index: trio.Event() for index in todo}
    accounting = ctx.accounting
    timeline = timeline or Timeline(ctx.log)
    stream = StreamHasher(fileset.files)
    # One hasher: one buffer for what it reads back, read into again and again.
    digest = InOrderHash(stream, fileset, BufferPool(ctx.settings.io_block_size, keep=1))
    # Per range, when the store's answer began (bulk ranges only), its first write began and its last one ended.
    head: dict[int, float] = {}
    first_write: dict[int, float] = {}
    last_write: dict[int, float] = {}
    # Set (and replaced) when the hasher finished a range: a worker may start one further on.
    hashed_more = [trio.Event()]
    # How many ranges past the digest's a range may start while the hasher is behind: a
    # range in flight per worker, and one more.
    ahead = ctx.settings.parts_per_job + 1

    def hashed_range() -> None:
        hashed_more[0].set()
        hashed_more[0] = trio.Event()

    def hasher_behind(index: int) -> bool:
        """Whether range ``index`` must wait for the hasher: bytes that land far ahead of the
        digest are read back later, and the last of them are the download's tail. Only while
        the hasher has all it needs (the range it is in has landed): a range slow to arrive
        or retrying holds no other range back."""
        at = digest.position // chunk_size
        return index - at > ahead and (at not in landed or landed[at].is_set())

    def write_at(offset: int, view: memoryview) -> None:
        index = offset // chunk_size
        first_write.setdefault(index, timeline.now())
        fileset.write(offset, (view,))
        digest.wrote(index, offset, view)
        last_write[index] = timeline.now()

    async def refresh() -> None:
        current["target"] = await ctx.remote.download_target(asset_id, target["content_id"])

    async def fetch(index: int) -> None:
        start = index * chunk_size
        length = min(chunk_size, size - start)
        # Bytes of this range written to its file, from its start: a retry goes on from there.
        written = 0

        async def attempt() -> None:
            nonlocal written
            if written == length and length:
                return  # all written before an error at the very end

            async def landed(n: int) -> None:
                nonlocal written
                if not n:  # the answer's head (engine/bulk_http.py): the first attempt's is the one timed
                    head.setdefault(index, timeline.now())
                    return
                written += n
                await accounting.moved(n, index, start + written - n)

            try:
                # Received straight into a buffer and written from it, off the event loop
                # (engine/bulk_http.py); where the repository cannot, through read_range below.
                if await ctx.remote.read_range_into(current["target"], start + written, length - written,
                                                    write_at, landed, f"reading range {index}"):
                    return
            except TargetExpired:
                await refresh()
                raise
            # Socket reads come in ~64 KiB pieces; they are written in one
            # pwritev per MiB: one thread hop per MiB, and no copying to join them.
            pending: list[bytes] = []
            pending_size = 0

            def put(at: int, pieces: list[bytes]) -> None:
                fileset.write(at, pieces)
                for piece in pieces:
                    digest.wrote(index, at, memoryview(piece))
                    at += len(piece)

            async def flush() -> None:
                nonlocal written, pending_size
                await trio.to_thread.run_sync(put, start + written, pending)
                written += pending_size
                pending.clear()
                pending_size = 0

            try:
                async for data in ctx.remote.read_range(current["target"], start + written, length - written,
                                                        f"reading range {index}"):
                    if written + pending_size + len(data) > length:
                        raise DataeraiError("checksum_mismatch", f"range {index}: the server sent too many bytes")
                    await accounting.moved(len(data), index, start + written + pending_size)
                    pending.append(data)
                    pending_size += len(data)
                    if pending_size >= ctx.settings.io_block_size:
                        await flush()
                if pending:
                    await flush()
            except TargetExpired:
                await refresh()
                raise
            finally:
                accounting.take_back(pending_size)
            if written != length:
                raise TransientError(f"range {index}: connection ended after {written} of {length} bytes")

        requested = timeline.now()
        await ctx.retrying(f"reading range {index}", attempt)
        timeline.mark("range", index=index, request=requested, head=head.get(index),
                      first_write=first_write.get(index), last_write=last_write.get(index))
        accounting.chunk_done()
        landed[index].set()
        unsynced.append((index, length))
        wrote_more.set()

    # Ranges are checkpointed only once flushed to disk, but the flushing is
    # grouped: one fdatasync per file and one transaction for all ranges written
    # since the last, in a task of its own, so no range worker waits on the disk.
    unsynced: list[tuple[int, int]] = []
    wrote_more = trio.Event()
    workers_done = False

    async def checkpoint_synced() -> None:
        nonlocal wrote_more
        while unsynced or not workers_done:
            if not unsynced:
                await wrote_more.wait()
                wrote_more = trio.Event()
                continue
            batch = unsynced[:]
            del unsynced[:]
            began = timeline.now()
            await trio.to_thread.run_sync(fileset.sync, [(i * chunk_size, n) for i, n in batch])
            synced = timeline.now()
            await ctx.store.checkpoint_many(ctx.job_id, [(i, n, None) for i, n in batch])
            timeline.mark("checkpoint", ranges=[i for i, _ in batch], sync_began=began, synced=synced)
            for index, _ in batch:
                await done_with(index, "synced")
        timeline.mark("checkpointed")

    async def workers() -> None:
        nonlocal workers_done

        async def worker() -> None:
            for index in queue:
                while hasher_behind(index):
                    await hashed_more[0].wait()
                await fetch(index)

        with first_error():
            async with trio.open_nursery() as nursery:
                for _ in range(ctx.settings.parts_per_job):
                    nursery.start_soon(worker)
        timeline.mark("landed")
        workers_done = True
        wrote_more.set()

    count = max(1, math.ceil(size / chunk_size))

    # A range's pages leave the page cache once it is both on disk and hashed.
    # Reused pages are cheap and fresh ones are not (on virtual machines above
    # all), so a download's footprint in memory stays a few ranges, not the file.
    finished: dict[int, set[str]] = {}

    async def done_with(index: int, what: str) -> None:
        steps = finished.setdefault(index, set())
        steps.add(what)
        if steps == {"synced", "hashed"}:
            del finished[index]
            start = index * chunk_size
            await trio.to_thread.run_sync(fileset.drop_cache, start, min(chunk_size, size - start))

    # Ranges the hasher is done with (and when), handed from its thread to the event loop.
    hashed: collections.deque[tuple[int, float]] = collections.deque()
    any_hashed = trio.Event()
    token = trio.lowlevel.current_trio_token()
    plan = [(index, index * chunk_size, min(size, (index + 1) * chunk_size), index in landed)
            for index in range(count)]

    def wake_after_hashing() -> None:
        any_hashed.set()

    def on_hashed(index: int) -> None:
        # In the hasher's thread: nothing here may block on the event loop.
        hashed.append((index, timeline.now()))
        token.run_sync_soon(wake_after_hashing)

    async def after_hashing(hasher_done: trio.Event) -> None:
        nonlocal any_hashed
        while hashed or not hasher_done.is_set():
            if not hashed:
                await any_hashed.wait()
                any_hashed = trio.Event()
                continue
            index, t = hashed.popleft()
            timeline.mark("hash", index=index, hashed=t)
            hashed_range()
            if index in landed:
                await done_with(index, "hashed")

    async def follow() -> None:
        async with trio.open_nursery() as nursery:

            async def stop_on_cancel() -> None:
                # A pause, a shutdown or a failed range: the thread stops at its next block.
                try:
                    await trio.sleep_forever()
                finally:
                    digest.stop()

            nursery.start_soon(stop_on_cancel)
            try:
                await trio.to_thread.run_sync(digest.follow, plan, on_hashed)
            finally:
                nursery.cancel_scope.cancel()

    async def hash_in_order() -> None:
        hasher_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(after_hashing, hasher_done)
            try:
                await follow()
            finally:
                hasher_done.set()
                any_hashed.set()
        timeline.mark("hashed", read_back=digest.read_back)

    with first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_in_order)
            nursery.start_soon(checkpoint_synced)
            nursery.start_soon(workers)
    return stream
