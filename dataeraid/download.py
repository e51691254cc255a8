"""The download engine: one asset content version to one local file.

Bytes go to ``NAME.part`` beside the destination, in ranges fetched in
parallel and written at their offsets; a range is checkpointed once its bytes
are written and flushed to disk. At the end the whole file's SHA-256 is checked
against the server's, the file is fsynced and renamed into place (with no
clobbering: a different file already at the destination is never replaced
unless ``overwrite`` was asked for), and the directory is fsynced.

Names from the server are hostile until checked: only a plain file name is
accepted, and neither the destination nor the ``.part`` file may be a symlink.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from pathlib import Path
from typing import Any

import trio

from dataeraid.errors import DataeraiError, TargetExpired, TransientError, first_error, from_os_error
from dataeraid.fileio import HASH_SLICE, feed_range, write_all_at
from dataeraid.transfer import JobContext, Progress

PART_SUFFIX = ".part"


def safe_file_name(name: object) -> str:
    """The server's file name if it is a plain name in this directory, else ``unsafe_path``."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise DataeraiError("unsafe_path", f"the server sent an unusable file name {name!r}")
    if len(name.encode()) > 255 - len(PART_SUFFIX):
        raise DataeraiError("unsafe_path", f"the server sent a file name too long for this disk: {name[:40]!r}…")
    return name


def _is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def sha256_of(path: Path, block_size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def _open_part(path: Path, size: int) -> tuple[int, bool]:
    """Open (or create) the ``.part`` file at its full size; True if it was fresh."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    st = os.fstat(fd)
    fresh = st.st_size != size
    if fresh:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    return fd, fresh


def _place(part: Path, dest: Path, overwrite: bool) -> None:
    """Atomically move the finished ``.part`` into place and make it durable."""
    if overwrite:
        os.replace(part, dest)
    else:
        try:
            os.link(part, dest)  # fails if anything appeared at dest meanwhile
        except FileExistsError as exc:
            raise DataeraiError("destination_exists", f"{dest} appeared during the download; kept {part}") from exc
        os.unlink(part)
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def run_download(ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    params = job["params"]
    asset_id: str = params["asset_id"]
    overwrite = bool(params.get("overwrite"))
    dest_dir = Path(job["dest_dir"])

    # Once a content version was picked, a resumed job keeps reading that one.
    target = await ctx.retrying(
        "asking where to read the asset",
        lambda: ctx.remote.download_target(asset_id, job.get("content_id") or params.get("content_id")),
    )
    name = safe_file_name(target.get("file_name") or asset_id)
    size = int(target["size"])
    chunk_size = int(job["chunk_size"])
    count = max(1, math.ceil(size / chunk_size))
    if job.get("content_id") != target["content_id"]:
        await ctx.store.clear_checkpoints(ctx.job_id)
        await ctx.save(content_id=target["content_id"], sha256=target["sha256"], bytes_total=size,
                       chunk_count=count, file_name=name)

    try:
        await trio.to_thread.run_sync(lambda: dest_dir.mkdir(parents=True, exist_ok=True))
    except OSError as exc:
        raise from_os_error(exc, f"creating {dest_dir}") from exc
    dest = dest_dir / name
    part = dest_dir / (name + PART_SUFFIX)
    if _is_symlink(dest) or _is_symlink(part):
        raise DataeraiError("unsafe_path", f"{dest} or its .part file is a symlink; refusing to write through it")
    files = [{"local_path": str(dest), "size": size}]

    if not overwrite and await trio.to_thread.run_sync(os.path.lexists, dest):
        same = await trio.to_thread.run_sync(
            lambda: dest.is_file() and dest.stat().st_size == size
            and sha256_of(dest, ctx.settings.io_block_size) == target["sha256"]
        )
        if same:
            ctx.log.info("destination already holds this content", path=str(dest))
            return {"files": files}
        raise DataeraiError("destination_exists", f"{dest} exists and differs; pass overwrite to replace it")

    try:
        fd, fresh = await trio.to_thread.run_sync(_open_part, part, size)
    except OSError as exc:
        raise from_os_error(exc, f"opening {part}") from exc
    try:
        if fresh:
            await ctx.store.clear_checkpoints(ctx.job_id)
        done = await ctx.store.checkpoints(ctx.job_id)
        progress = ctx.progress(size, count, name)
        progress.bytes_done = sum(c["size"] for c in done.values())
        progress.chunks_done = len(done)
        progress.publish_now()
        todo = [n for n in range(count) if n not in done]
        digest = await _fetch_ranges(ctx, fd, target, asset_id, size, chunk_size, todo, progress, str(part))
        await trio.to_thread.run_sync(os.fsync, fd)
    except OSError as exc:
        raise from_os_error(exc, f"writing {part}") from exc
    finally:
        os.close(fd)

    if digest != target["sha256"]:
        await ctx.store.clear_checkpoints(ctx.job_id)
        await trio.to_thread.run_sync(lambda: part.unlink(missing_ok=True))
        raise DataeraiError("checksum_mismatch", f"downloaded bytes hash to {digest}, expected {target['sha256']}")
    try:
        await trio.to_thread.run_sync(_place, part, dest, overwrite)
    except OSError as exc:
        raise from_os_error(exc, f"moving {part} into place") from exc
    progress.publish_now()
    ctx.log.info("download complete", path=str(dest), size=size)
    return {"files": files}


async def _fetch_ranges(ctx: JobContext, fd: int, target: dict[str, Any], asset_id: str, size: int,
                        chunk_size: int, todo: list[int], progress: Progress, path: str) -> str:
    """Fetch the ranges in ``todo`` into ``fd``; the SHA-256 of the whole file.

    The whole-file digest is computed beside the transfer: a hasher follows the
    ranges in order as they land (reading them back from the page cache), so the
    digest is ready moments after the last range instead of after another pass.
    """
    current = {"target": target}
    queue = iter(todo)
    landed = {index: trio.Event() for index in todo}

    async def refresh() -> None:
        current["target"] = await ctx.remote.download_target(asset_id, target["content_id"])

    async def fetch(index: int) -> None:
        start = index * chunk_size
        length = min(chunk_size, size - start)
        written = 0

        async def attempt() -> None:
            nonlocal written
            progress.add(-written)
            written = 0
            # Socket reads come in ~64 KiB pieces; they are written in one
            # pwritev per MiB: one thread hop per MiB, and no copying to join them.
            pending: list[bytes] = []
            pending_size = 0

            async def flush() -> None:
                nonlocal written, pending_size
                await trio.to_thread.run_sync(write_all_at, fd, pending, start + written)
                written += pending_size
                pending.clear()
                pending_size = 0

            try:
                async for data in ctx.remote.read_range(current["target"], start, length, f"reading range {index}"):
                    if written + pending_size + len(data) > length:
                        raise DataeraiError("checksum_mismatch", f"range {index}: the server sent too many bytes")
                    await ctx.bandwidth.spend(len(data))
                    pending.append(data)
                    pending_size += len(data)
                    progress.add(len(data), index)
                    if pending_size >= ctx.settings.io_block_size:
                        await flush()
                if pending:
                    await flush()
            except TargetExpired:
                await refresh()
                raise
            finally:
                progress.add(-pending_size)
            if written != length:
                raise TransientError(f"range {index}: connection ended after {written} of {length} bytes")

        await ctx.retrying(f"reading range {index}", attempt)
        progress.chunk_finished()
        landed[index].set()
        unsynced.append((index, length))
        wrote_more.set()

    # Ranges are checkpointed only once flushed to disk, but the flushing is
    # grouped: one fdatasync and one transaction for all ranges written since the
    # last, in a task of its own, so no range worker ever waits on the disk.
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
            await trio.to_thread.run_sync(os.fdatasync, fd)
            await ctx.store.checkpoint_many(ctx.job_id, [(i, n, None) for i, n in batch])
            for index, _ in batch:
                await done_with(index, "synced")

    async def workers() -> None:
        nonlocal workers_done

        async def worker() -> None:
            for index in queue:
                await fetch(index)

        with first_error():
            async with trio.open_nursery() as nursery:
                for _ in range(ctx.settings.parts_per_job):
                    nursery.start_soon(worker)
        workers_done = True
        wrote_more.set()

    whole = hashlib.sha256()
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
            await trio.to_thread.run_sync(os.posix_fadvise, fd, start, min(chunk_size, size - start),
                                          os.POSIX_FADV_DONTNEED)

    async def hash_in_order() -> None:
        for index in range(count):
            if index in landed:
                await landed[index].wait()
            start = index * chunk_size
            end = start + min(chunk_size, size - start)
            for piece in range(start, end, HASH_SLICE):
                await trio.to_thread.run_sync(feed_range, fd, piece, min(HASH_SLICE, end - piece),
                                              ctx.settings.io_block_size, path, whole)
            if index in landed:
                await done_with(index, "hashed")

    with first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_in_order)
            nursery.start_soon(checkpoint_synced)
            nursery.start_soon(workers)
    return whole.hexdigest()
