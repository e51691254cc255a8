"""The upload engine: one local file, or a directory's files, to one new asset content version.

The source is a byte stream (:mod:`dataeraid.fileset`): one file, or a
directory's regular files end to end, so small files share parts. Plan: parts
``1..N`` of ``chunk_size`` bytes of the stream (an empty stream is one empty
part). One hashing task computes every part's SHA-256 (needed before the part's
URL can be asked for: the digest is signed into it), another the whole stream's
and each file's, in order. It runs at most a few parts ahead of the senders,
so the senders' second read comes from the page cache. ``parts_per_job``
senders each ask the server for a part's target and stream the part to it in
blocks; a part is checkpointed only after the server acknowledged it with its
digest.

Resuming: the server is the truth about parts (``GET /uploads/{id}``): parts it
holds are not sent again. Completion carries the job id as idempotency key, so
a crash between completing and recording the result never makes a second asset.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio

from dataeraid.errors import DataeraiError, TransientError, first_error
from dataeraid.fileset import HASH_SLICE, FileSet, StreamFile, StreamHasher
from dataeraid.transfer import JobContext, Progress

# A part whose upload failed its checksum this many times, with an unchanged source, fails the job.
MAX_CHECKSUM_RETRIES = 3


@dataclass(frozen=True)
class PartPlan:
    number: int
    offset: int
    size: int
    sha256: str


def part_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


def part_span(number: int, size: int, chunk_size: int) -> tuple[int, int]:
    """``(offset, length)`` of part ``number`` (1-based); computed, never listed, so memory stays flat."""
    offset = (number - 1) * chunk_size
    return offset, min(chunk_size, size - offset)


def source_files(job: dict[str, Any]) -> tuple[str, list[StreamFile]]:
    """The job's source manifest: its root and files, as recorded at enqueue.

    Jobs enqueued before directories were supported recorded one file in columns.
    """
    params = job["params"]
    recorded = params.get("source_files")
    if recorded is None:
        path: str = job["local_path"]
        root, name = os.path.split(path)
        return root, [StreamFile(name, 0, job["source_size"], job["source_mtime_ns"], job["source_inode"])]
    files: list[StreamFile] = []
    offset = 0
    for rel, size, mtime_ns, inode in recorded:
        files.append(StreamFile(rel, offset, size, mtime_ns, inode))
        offset += size
    return str(params["source_root"]), files


async def run_upload(ctx: JobContext) -> dict[str, Any]:
    """Move the job's file or directory to the repository; returns the fields of a completed job."""
    job = ctx.job
    root, files = source_files(job)
    source = FileSet(root, files, "source")
    try:
        await trio.to_thread.run_sync(source.check_sources)
        return await _upload_stream(ctx, source)
    except DataeraiError as exc:
        if exc.code == "source_changed" and job.get("remote_session"):
            # Commit nothing: the parts sent so far go too.
            with trio.move_on_after(10):
                try:
                    await ctx.remote.abort_upload(job["remote_session"])
                except (DataeraiError, TransientError):
                    pass
        raise
    finally:
        source.close()


async def _session(ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    if job.get("remote_session"):
        upload_id = job["remote_session"]
        try:
            session = await ctx.retrying("reading the upload session", lambda: ctx.remote.get_upload(upload_id))
        except DataeraiError as exc:
            if exc.code != "not_found":
                raise
            ctx.log.warning("upload session gone; starting a new one", upload_id=upload_id)
        else:
            if session["state"] != "aborted":
                return session
            # Cancelling the job aborted it (and its parts): a retry starts over in a new one.
            ctx.log.info("upload session was aborted; starting a new one", upload_id=upload_id)
            await ctx.store.clear_checkpoints(ctx.job_id)
    params = job["params"]
    body = {
        "owner_type": params["owner_type"],
        "owner_id": params["owner_id"],
        "title": params["title"],
        "description": params.get("description"),
        "alias": params.get("alias"),
        "tags": params.get("tags") or [],
        "metadata": params.get("metadata") or {},
        "collection_id": params.get("collection_id"),
        "asset_id": params.get("asset_id"),
        "file_name": job["file_name"],
        "size": job["bytes_total"] if job.get("bytes_total") is not None else job["source_size"],
        "part_size": job["chunk_size"],
        "sha256": None,
        # A fresh key if the old session vanished, so the server doesn't hand the gone one back.
        "idempotency_key": f"{ctx.job_id}/{job.get('remote_session') or 'first'}",
    }
    _, files = source_files(job)
    if job["params"].get("source_files") is not None and (len(files) != 1 or files[0].path != job["file_name"]):
        # A directory: the content's manifest, in stream order.
        body["files"] = [{"path": f.path, "size": f.size} for f in files]
    session = await ctx.retrying("creating the upload session", lambda: ctx.remote.create_upload(body))
    await ctx.save(remote_session=session["upload_id"])
    ctx.log.info("upload session", upload_id=session["upload_id"], part_count=session["part_count"])
    return session


async def _upload_stream(ctx: JobContext, source: FileSet) -> dict[str, Any]:
    job = ctx.job
    chunk_size: int = job["chunk_size"]
    total = source.size
    count = part_count(total, chunk_size)
    session = await _session(ctx)
    upload_id: str = session["upload_id"]
    if session["state"] == "completed" and session.get("result"):
        return _completed_fields(session["result"], source)
    held = {p["number"]: p for p in session.get("parts", []) if 1 <= p["number"] <= count
            and p["size"] == part_span(p["number"], total, chunk_size)[1]}
    progress = ctx.progress(total, count, source.files[0].path if source.files else job["file_name"])
    progress.bytes_done = sum(p["size"] for p in held.values())
    progress.chunks_done = len(held)
    progress.publish_now()
    if held:
        ctx.log.info("resuming", parts_held=len(held), parts_total=count)

    stream = StreamHasher(source.files)
    block = ctx.settings.io_block_size
    hashed_send, hashed_receive = trio.open_memory_channel[PartPlan](ctx.settings.parts_per_job)

    # Two hashers on two threads, so that both cores can work: the parts' digests
    # (each needed before its part's URL can be asked for) run ahead of the
    # senders; the whole stream's (and each file's) follows in order on its own,
    # done by completion. One worker-thread call hashes at most HASH_SLICE bytes,
    # so a pause or shutdown never waits long.
    async def hash_parts() -> None:
        async with hashed_send:
            for number in range(1, count + 1):
                if number in held:
                    continue
                offset, size = part_span(number, total, chunk_size)
                digest = hashlib.sha256()
                for start in range(offset, offset + size, HASH_SLICE):
                    length = min(HASH_SLICE, offset + size - start)
                    await trio.to_thread.run_sync(_feed, source, digest, start, length, block)
                await hashed_send.send(PartPlan(number, offset, size, digest.hexdigest()))

    async def hash_stream() -> None:
        for start in range(0, total, HASH_SLICE):
            await trio.to_thread.run_sync(stream.feed, source, start, min(HASH_SLICE, total - start), block)

    with first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_parts)
            nursery.start_soon(hash_stream)
            async with hashed_receive:
                for _ in range(ctx.settings.parts_per_job):
                    nursery.start_soon(_send_parts, hashed_receive.clone(), ctx, source, upload_id, progress)

    await trio.to_thread.run_sync(source.check_sources)
    digest = stream.whole.hexdigest()
    file_sha256 = stream.file_sha256 if len(source.files) > 1 else None
    await ctx.save(sha256=digest)
    try:
        result = await ctx.retrying(
            "completing the upload",
            lambda: ctx.remote.complete_upload(upload_id, ctx.job_id, digest, file_sha256=file_sha256),
        )
    except DataeraiError as exc:
        if exc.code == "checksum_mismatch":
            await trio.to_thread.run_sync(source.check_sources)
        raise
    progress.publish_now()
    ctx.log.info("upload complete", asset_id=result["asset_id"], content_id=result["content_id"], size=total,
                 files=len(source.files))
    return _completed_fields(result, source)


def _feed(source: FileSet, hasher: hashlib._Hash, offset: int, length: int, block: int) -> None:
    end = offset + length
    while offset < end:
        data = source.read(offset, min(block, end - offset))
        hasher.update(data)
        offset += len(data)


async def _send_parts(receive: trio.MemoryReceiveChannel[PartPlan], ctx: JobContext, source: FileSet,
                      upload_id: str, progress: Progress) -> None:
    async with receive:
        async for plan in receive:
            await _send_part(ctx, source, upload_id, plan, progress)


def _completed_fields(result: dict[str, Any], source: FileSet) -> dict[str, Any]:
    files = [{"local_path": os.path.join(source.root, *f.path.split("/")), "size": f.size} for f in source.files]
    return {"asset_id": result["asset_id"], "content_id": result["content_id"], "sha256": result["sha256"],
            "files": files}


async def _send_part(ctx: JobContext, source: FileSet, upload_id: str, plan: PartPlan, progress: Progress) -> None:
    block = ctx.settings.io_block_size
    mismatches = 0
    while True:
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            offset, end = plan.offset, plan.offset + plan.size
            while offset < end:
                data = await trio.to_thread.run_sync(source.read, offset, min(block, end - offset))
                await ctx.bandwidth.spend(len(data))
                if len(source.files) > 1:
                    index = source.index_at(offset)
                    progress.at_file(index, source.files[index].path)
                offset += len(data)
                sent += len(data)
                progress.add(len(data), plan.number - 1)
                yield data

        async def attempt() -> dict[str, Any]:
            nonlocal sent
            target = await ctx.remote.part_target(upload_id, plan.number, plan.sha256, plan.size)
            try:
                return await ctx.remote.put_part(target, body(), f"sending part {plan.number}")
            except BaseException:
                progress.add(-sent)
                sent = 0
                raise

        try:
            ack = await ctx.retrying(f"sending part {plan.number}", attempt)
        except DataeraiError as exc:
            if exc.code != "checksum_mismatch":
                raise
            # The bytes sent differ from the bytes hashed: the file changed under us, or they were damaged.
            await trio.to_thread.run_sync(source.check_sources)
            mismatches += 1
            if mismatches >= MAX_CHECKSUM_RETRIES:
                raise
            ctx.log.warning("part checksum mismatch; sending again", part=plan.number)
            continue
        if ack.get("sha256") != plan.sha256 or ack.get("size") != plan.size:
            raise DataeraiError("checksum_mismatch", f"the server acknowledged part {plan.number} with another digest")
        await ctx.store.checkpoint(ctx.job_id, plan.number, plan.size, plan.sha256)
        progress.chunk_finished()
        return
