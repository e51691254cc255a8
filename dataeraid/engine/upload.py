"""The upload engine: one local file, or a directory's files, to one new asset content version.

The source is a byte stream (:mod:`dataeraid.fileset`): one file, or a
directory's regular files end to end, so small files share parts. Plan: parts
``1..N`` of ``chunk_size`` bytes of the stream (an empty stream is one empty
part). Each part's URL has a digest signed into it, so the digest is needed
before the part is sent. One hashing task computes the whole stream's SHA-256
(and each file's), in order, and each part's digest from the same read of each
byte (:func:`hash_stream`). Where the repository takes prefix digests (its
directory storage), a part's digest is the stream's SHA-256 as that task passes
the part's end, and every byte is hashed once. Where it takes only each part's
own digest (an object store checks it), the same block feeds a second hasher.
A stream of at most :data:`SMALL_STREAM_BYTES` is read whole, once: its parts
are sent from the bytes that were hashed. ``parts_per_job`` senders each ask the
server for a part's target and stream the part to it in blocks; a part is
checkpointed only after the server acknowledged it with its digest. To the
repository's own part endpoint, a part's body starts only once the previous
part's body was sent (not acknowledged), so the server can hash the parts into
the whole file's digest as they stream, which is also what lets it check
prefix digests (``upload_order``, docs/configuration.md); to an object store's
URLs, parts go in parallel.

Resuming: the server is the truth about parts (``GET /uploads/{id}``): parts it
holds are not sent again. Completion carries the job id as idempotency key, so
a crash between completing and recording the result never makes a second asset.

Deduplication (docs/architecture.md): the repository completes an upload whose
content it already holds without the bytes, once the daemon proves possession
(the digests of random byte ranges the server picks). Two ways in:

- up front, when the digest is known without reading the source: the digest
  cache (``Store.cached_digest``) has it for a file or directory uploaded before
  whose identity (size, mtime, inode; every file's, for a directory) is unchanged;
- speculatively: the whole-stream hash runs ahead of the senders, and as soon as
  it is done, if more than one part is still unsent and the rest would take at
  least :data:`SPECULATE_ABOVE_SECONDS` to send (at the job's rate, or the
  daemon's last upload's until the job has one of its own), the engine asks for a
  challenge, computes the range digests from the source, pauses the senders (no
  new part starts; the parts in flight go on, and their errors are dropped while
  the proof is out) and proves. Accepted: it stops the senders (cancelling their
  scope and waiting for them). Refused (``no_match``): the senders go on, or, if
  they ended meanwhile, start again from the parts the server holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import AsyncIterator, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from dataeraid.engine.accounting import STREAMS_IN_MEMORY_BYTES, Accounting
from dataeraid.engine.bulk_http import Body, Outlet
from dataeraid.engine.context import JobContext
from dataeraid.engine.turns import Turn
from dataeraid.errors import DataeraiError, TransientError, first_error, leaves
from dataeraid.fileset import HASH_SLICE, BufferPool, FileSet, StreamFile, StreamHasher, source_changed
from dataeraid.store import CachedDigest, SourceIdentity

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

# A part whose upload failed its checksum this many times, with an unchanged source, fails the job.
MAX_CHECKSUM_RETRIES = 3


#: What a session's ``part_digests`` lists when its part targets take prefix digests.
PREFIX_DIGESTS: Final = "prefix_sha256"

#: A stream of at most this many bytes is read once, whole, into memory, where the daemon's
#: budget for held sources allows (:class:`~dataeraid.engine.accounting.MemoryBudget`): the
#: same bytes are hashed and sent (a directory of small files: each file opened and read once
#: per job). The whole budget, so that a job running alone always may.
SMALL_STREAM_BYTES: Final = STREAMS_IN_MEMORY_BYTES

#: The speculative deduplication costs two requests (about 120 ms when the content is new,
#: docs/benchmarks.md); it is skipped when the bytes still to send would take less than this
#: many seconds at the job's measured rate.
SPECULATE_ABOVE_SECONDS: Final = 0.25


@dataclass(frozen=True)
class PartPlan:
    """A part to send. ``prefix``: ``sha256`` is its prefix digest (the stream's SHA-256 from
    the first byte through this part's last), not the part's own. ``data``: the part's bytes,
    when the stream was read into memory (they were hashed; they are sent as they are)."""

    number: int
    offset: int
    size: int
    sha256: str
    prefix: bool = False
    data: memoryview | None = field(default=None, compare=False, repr=False)


class PartDigests:
    """The digests the parts are sent with: recorded by the stream hasher as it passes each
    part's end, taken (once) by the part planner, so only those between the two are kept.

    ``prefix``: a part's digest is its prefix digest, the stream's SHA-256 as the hasher
    passes the part's end (the repository's own part endpoint checks those). Otherwise it is
    the part's own SHA-256 (what an object store checks), hashed by :meth:`part_hasher` from
    the same reads as the stream's. Either way each source byte is read once for both.
    ``None``: not known yet (the stream is hashed while the session request is out, before
    the session says which its part targets take): both are kept, and :attr:`prefix` is set
    before the first :meth:`take`.
    """

    def __init__(self, prefix: bool | None) -> None:
        self.prefix = prefix
        self._digests: dict[int, tuple[str, memoryview | None, str | None]] = {}
        self._recorded = trio.Event()

    def part_hasher(self) -> Hasher | None:
        """A hasher for the next part's own digest, or None where the stream's will do."""
        return None if self.prefix else hashlib.sha256()

    def record(self, number: int, sha256: str, data: memoryview | None = None,
               prefix_sha256: str | None = None) -> None:
        """Part ``number``'s digest; ``prefix_sha256``, its prefix digest too, where ``sha256`` is its own
        (hashed before :attr:`prefix` was known, the part may still go with its prefix digest)."""
        self._digests[number] = (sha256, data, prefix_sha256)
        self._recorded.set()
        self._recorded = trio.Event()

    async def take(self, number: int) -> tuple[str, memoryview | None]:
        """Part ``number``'s digest (and its bytes, if the stream was read into memory)."""
        assert self.prefix is not None, "the session decides which digests the parts take"
        while number not in self._digests:
            await self._recorded.wait()
        sha256, data, prefix_sha256 = self._digests.pop(number)
        return (prefix_sha256 if self.prefix and prefix_sha256 is not None else sha256), data


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
    skipped = job["params"].get("skipped") or []
    if skipped:
        ctx.log.warning("not regular files; left out of the upload", count=len(skipped), paths=skipped[:20])
    source = FileSet(root, files, "source")
    try:
        small = source.size <= SMALL_STREAM_BYTES
        with ctx.memory.hold(source.size if small else 0) as granted:
            return await _upload_stream(ctx, source, in_memory=small and granted)
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


async def _session(ctx: JobContext, files: list[StreamFile]) -> dict[str, Any]:
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
    body: dict[str, Any] = {
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
    # Sent only when set: a new version of ``asset_id`` may leave them out, and the
    # repository then keeps the asset's owner, title and path.
    for name in ("owner_type", "owner_id", "title", "path"):
        if params.get(name) is not None:
            body[name] = params[name]
    if _is_directory(job, files):
        # A directory: the content's manifest, in stream order.
        body["files"] = [{"path": f.path, "size": f.size} for f in files]
    session = await ctx.retrying("creating the upload session", lambda: ctx.remote.create_upload(body))
    await ctx.save(remote_session=session["upload_id"])
    ctx.log.info("upload session", upload_id=session["upload_id"], part_count=session["part_count"])
    return session


def _is_directory(job: dict[str, Any], files: list[StreamFile]) -> bool:
    return job["params"].get("source_files") is not None and (len(files) != 1 or files[0].path != job["file_name"])


def source_identity(job: dict[str, Any], root: str, files: list[StreamFile]) -> SourceIdentity | None:
    """What the job's source's cached digest is keyed by; None if its identity was not recorded."""
    if any(f.mtime_ns is None or f.inode is None for f in files):
        return None
    if not _is_directory(job, files):
        (only,) = files
        assert only.mtime_ns is not None and only.inode is not None
        return SourceIdentity(os.path.join(root, only.path), only.size, only.mtime_ns, only.inode, "")
    # The manifest as enqueue recorded it ([path, size, mtime_ns, inode] per file): the same
    # JSON as each file's ``StreamFile.to_json``, without building 10,000 lists again.
    recorded = job["params"]["source_files"]
    manifest = hashlib.sha256(json.dumps(recorded).encode()).hexdigest()
    path = job.get("local_path") or os.path.join(root, job["file_name"])
    return SourceIdentity(path, sum(f.size for f in files), 0, 0, manifest)


def _held_parts(session: dict[str, Any], count: int, total: int, chunk_size: int) -> dict[int, dict[str, Any]]:
    """The parts the server holds (the truth about parts), as far as they fit this plan."""
    return {p["number"]: p for p in session.get("parts", []) if 1 <= p["number"] <= count
            and p["size"] == part_span(p["number"], total, chunk_size)[1]}


def _start_from(accounting: Accounting, held: dict[int, dict[str, Any]]) -> None:
    accounting.resume(sum(p["size"] for p in held.values()), len(held))


async def _upload_stream(ctx: JobContext, source: FileSet, *, in_memory: bool) -> dict[str, Any]:
    stream = StreamHasher(source.files)
    stream_hashed = trio.Event()
    # Which digest the part targets take, the session says (PartDigests). The stream of a new
    # session, read into memory, is hashed while the session request is out, each part's two
    # digests kept until it answers. Any other stream, and a resumed session's (whose parts
    # held already need no digest), is hashed once the session is known.
    digests = PartDigests(None)
    early = in_memory and not ctx.job.get("remote_session")
    with first_error():
        async with trio.open_nursery() as hashing:
            if early:
                hashing.start_soon(_hash_whole, ctx, source, stream, digests, {}, in_memory, stream_hashed)
            try:
                return await _upload_hashed(ctx, source, stream, digests, stream_hashed, in_memory=in_memory,
                                            hashing=None if early else hashing)
            finally:
                # Ended before the hash (a session completed already, a cached digest proved): it stops.
                hashing.cancel_scope.cancel()


async def _hash_whole(ctx: JobContext, source: FileSet, stream: StreamHasher, digests: PartDigests,
                      held: Container[int], in_memory: bool, stream_hashed: trio.Event) -> None:
    """The whole stream's digest (and each file's, and each part's) in order, beside the part
    senders; it usually runs ahead of them (how far: docs/benchmarks.md#deduplication)."""
    started = trio.current_time()
    chunk_size: int = ctx.job["chunk_size"]
    await hash_stream(source, stream, chunk_size, digests, held, BufferPool(ctx.settings.io_block_size),
                      in_memory=in_memory)
    stream_hashed.set()
    ctx.log.info("stream hashed", seconds=round(trio.current_time() - started, 2),
                 parts_acknowledged=ctx.accounting.chunks_done if ctx.accounting.progress is not None else 0,
                 parts_total=part_count(source.size, chunk_size))


async def _upload_hashed(ctx: JobContext, source: FileSet, stream: StreamHasher, digests: PartDigests,
                         stream_hashed: trio.Event, *, in_memory: bool,
                         hashing: trio.Nursery | None) -> dict[str, Any]:
    """The upload, its stream hashed by a task already started, or (``hashing``) started there
    once the session is known."""
    job = ctx.job
    chunk_size: int = job["chunk_size"]
    total = source.size
    count = part_count(total, chunk_size)
    # A stream read into memory is read whole before its last part goes, and each file is
    # checked against its enqueue-time identity as it is opened (FileSet._open_file), before
    # any of its bytes is hashed or sent: a change fails the job then, and the session is
    # aborted (run_upload). Any other stream is sent as it is read, from files that may change
    # before the reader gets to them, so its sources are checked up front, while the session
    # request is out (a stat of each; a session made meanwhile is aborted and holds no part).
    # The digest cache's key (a hash of the manifest) is made meanwhile too.
    session: dict[str, Any] = {}

    async def open_session() -> None:
        session.update(await _session(ctx, source.files))

    with first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_session)
            if not in_memory:
                await trio.to_thread.run_sync(source.check_sources)
            identity = await trio.to_thread.run_sync(source_identity, job, source.root, source.files)
    upload_id: str = session["upload_id"]
    if session["state"] == "completed" and session.get("result"):
        return _completed_fields(session["result"], source)
    held = _held_parts(session, count, total, chunk_size)
    accounting = ctx.accounting
    accounting.begin(total, count, source, source.files[0].path if source.files else job["file_name"],
                     bytes_done=sum(p["size"] for p in held.values()), chunks_done=len(held))
    if held:
        ctx.log.info("resuming", parts_held=len(held), parts_total=count)

    # Up front: a source uploaded before and unchanged has its digest cached, so
    # possession is proved before any part is sent. If the repository does not take
    # it, the speculative attempt would ask the same again: it is skipped.
    cached = await ctx.store.cached_digest(identity) if identity is not None else None
    if cached is not None:
        early = await _deduplicate(ctx, source, upload_id, cached, "cached digest")
        if early is not None:
            return await _finish_deduplicated(ctx, source, early, identity, cached, 0)

    # Prefix digests save the daemon and the repository a second hash of every byte, but
    # need the parts in order to be checked as they arrive (docs/http-api.md, "Prefix digests").
    digests.prefix = (PREFIX_DIGESTS in session.get("part_digests", ())
                      and ctx.settings.upload_order != "never")
    if hashing is not None:
        hashing.start_soon(_hash_whole, ctx, source, stream, digests, held, in_memory, stream_hashed)
    senders = _Senders(ctx, source, upload_id, count, digests)

    proved: dict[str, Any] | None = None
    with first_error():
        async with trio.open_nursery() as nursery:
            senders.start(nursery, held)
            if cached is None:
                await stream_hashed.wait()
                proved = await _speculate(ctx, source, upload_id, stream, senders, nursery)
    if not stream_hashed.is_set():
        await stream_hashed.wait()  # the senders took every part's digest: only its log line is left

    digest = stream.whole.hexdigest()
    file_sha256 = stream.file_sha256 if len(source.files) > 1 else None
    if proved is not None:
        return await _finish_deduplicated(ctx, source, proved, identity, CachedDigest(digest, file_sha256),
                                          senders.bytes_sent)
    await trio.to_thread.run_sync(source.check_sources)
    await ctx.save(sha256=digest)
    etags = senders.etags

    async def complete() -> dict[str, Any]:
        nonlocal etags
        if etags is not None:
            try:
                return await ctx.remote.complete_upload(upload_id, ctx.job_id, digest, file_sha256=file_sha256,
                                                        etags=etags)
            except DataeraiError as exc:
                if not _refused_told_parts(exc):
                    raise
                # A repository from before told parts (or one that would not take these):
                # they only spare it a question to the store, so complete without them.
                ctx.log.info("the repository did not take the parts' ETags; completing without them",
                             error=exc.message)
                etags = None
        return await ctx.remote.complete_upload(upload_id, ctx.job_id, digest, file_sha256=file_sha256)

    try:
        result = await ctx.retrying("completing the upload", complete)
    except DataeraiError as exc:
        if exc.code == "checksum_mismatch":
            await trio.to_thread.run_sync(source.check_sources)
        raise
    if identity is not None:
        await ctx.store.remember_digest(identity, CachedDigest(digest, file_sha256))
    accounting.finish()
    ctx.log.info("upload complete", asset_id=result["asset_id"], content_id=result["content_id"], size=total,
                 files=len(source.files))
    return _completed_fields(result, source)


def _refused_told_parts(exc: DataeraiError) -> bool:
    """Whether the repository refused the completion's ``parts`` (unknown to it, or not as it takes them)."""
    field = str(exc.data.get("field") or "")
    return exc.code == "invalid_argument" and (field == "parts" or field.startswith(("parts[", "parts.")))


class _Senders:
    """The part senders of one upload: a part hasher and ``parts_per_job`` senders in one task
    with its own cancel scope, so that the speculative deduplication can pause them (no new
    part starts), stop them (and wait until they stopped) and start them again.

    While a proof is out (:attr:`tolerating`) and once :meth:`stop` was called, whatever the
    senders raise is dropped: a part that arrives after the proof completed the session is
    refused (``conflict``), one cut off by the stop fails. The job's outcome is then decided
    by the proof, or, if the proof is refused, by the senders going on (or started again
    from the server's truth about parts, if they ended meanwhile).
    """

    def __init__(self, ctx: JobContext, source: FileSet, upload_id: str, count: int,
                 digests: PartDigests | None = None) -> None:
        self._ctx, self._source, self._upload_id = ctx, source, upload_id
        self._count = count
        self._digests = digests
        self._scope = trio.CancelScope()
        self._running = trio.Event()
        self._running.set()
        self.stopped = trio.Event()
        self.finished = False
        #: Errors of the senders are dropped while this is true (a proof is out).
        self.tolerating = False
        #: Part bytes sent and acknowledged by this run of the engine.
        self.bytes_sent = 0
        self._etags: dict[int, str] = {}

    @property
    def etags(self) -> dict[int, str] | None:
        """Every part's ETag, where this run sent every part straight to a store that
        answered one; else None (parts held from before, or sent through the repository)."""
        return dict(self._etags) if len(self._etags) == self._count else None

    def start(self, nursery: trio.Nursery, held: dict[int, dict[str, Any]]) -> None:
        self.resume()
        self._scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.finished = False
        nursery.start_soon(self._run, self._scope, self.stopped, held)

    def restart(self, nursery: trio.Nursery, held: dict[int, dict[str, Any]]) -> None:
        """Start again after :meth:`stop`, from the parts the server holds.

        The digests of parts planned before are gone (each is taken once): the rest go
        with their own digests, hashed again.
        """
        self._digests = None
        _start_from(self._ctx.accounting, held)
        self.start(nursery, held)

    @property
    def unsent_parts(self) -> int:
        return self._count - self._ctx.accounting.chunks_done

    def pause(self) -> None:
        """No part starts until :meth:`resume`; the parts in flight go on."""
        if self._running.is_set():
            self._running = trio.Event()

    def resume(self) -> None:
        self._running.set()

    async def stop(self) -> None:
        """Cancel the senders and return once they ended."""
        self._scope.cancel()
        await self.stopped.wait()

    async def _run(self, scope: trio.CancelScope, stopped: trio.Event, held: dict[int, dict[str, Any]]) -> None:
        try:
            with scope:
                await self._send_all(held)
                self.finished = True
        except BaseException as exc:
            wanted = scope.cancel_called or self.tolerating
            if not wanted or not all(isinstance(e, (Exception, trio.Cancelled)) for e in leaves(exc)):
                raise
            # Cancelled from outside too? Trio's cancellation is level-triggered: the next
            # checkpoint of this job's other tasks raises it again.
            self._ctx.log.info("a part in flight failed while a proof was out or the senders stopped; ignored",
                               error=repr(exc))
        finally:
            stopped.set()

    async def _send_all(self, held: dict[int, dict[str, Any]]) -> None:
        ctx, source, total = self._ctx, self._source, self._source.size
        chunk_size: int = ctx.job["chunk_size"]
        block = ctx.settings.io_block_size
        hashed_send, hashed_receive = trio.open_memory_channel[tuple[PartPlan, Turn]](ctx.settings.parts_per_job)

        # Each part's digest is needed before its URL can be asked for: the stream hasher
        # records it as it passes the part's end. Without recorded digests (started again
        # after a stop) the parts are hashed here, at most a few ahead of the senders, so
        # the senders' read comes from the page cache.
        digests = self._digests

        async def hash_parts() -> None:
            async with hashed_send:
                # Parts to be sent in order hand the turn on from one to the next (held parts are skipped).
                turn = Turn.first()
                for number in range(1, self._count + 1):
                    if number in held:
                        continue
                    offset, size = part_span(number, total, chunk_size)
                    if digests is not None:
                        sha256, data = await digests.take(number)
                        plan = PartPlan(number, offset, size, sha256, prefix=bool(digests.prefix), data=data)
                    else:
                        plan = PartPlan(number, offset, size, await _part_digest(source, offset, size, block))
                    await hashed_send.send((plan, turn))
                    turn = turn.next()

        async def send_parts(receive: trio.MemoryReceiveChannel[tuple[PartPlan, Turn]]) -> None:
            async with receive:
                async for plan, turn in receive:
                    await self._running.wait()
                    try:
                        etag = await _send_part(ctx, source, self._upload_id, plan, turn)
                    finally:
                        turn.done.set()
                    self.bytes_sent += plan.size
                    if etag is not None:
                        self._etags[plan.number] = etag
                    else:
                        self._etags.pop(plan.number, None)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_parts)
            async with hashed_receive:
                for _ in range(ctx.settings.parts_per_job):
                    nursery.start_soon(send_parts, hashed_receive.clone())


async def _speculate(ctx: JobContext, source: FileSet, upload_id: str, stream: StreamHasher, senders: _Senders,
                     nursery: trio.Nursery) -> dict[str, Any] | None:
    """With the whole digest known and parts still to send: try to deduplicate.

    Returns the completion's result, or None when the senders go on (or went on, after a
    refused proof, from the parts the server holds).
    """
    if senders.stopped.is_set() or senders.unsent_parts <= 1:
        return None  # the bytes are (nearly) all there: completing is as cheap
    # A rate measured over less time than the question is about says little.
    unsent, rate = source.size - ctx.accounting.bytes_done, ctx.accounting.sending_rate(SPECULATE_ABOVE_SECONDS)
    if not worth_speculating(unsent, rate):
        ctx.log.info("not asking to deduplicate: the rest is sent sooner", unsent_bytes=unsent,
                     rate_bps=round(rate))
        return None
    digest = CachedDigest(stream.whole.hexdigest(), stream.file_sha256 if len(source.files) > 1 else None)
    challenge = await _challenge(ctx, upload_id, digest.sha256)
    if challenge is None:
        return None
    digests = await _range_digests(ctx, source, challenge)
    if digests is None or senders.stopped.is_set():
        return None
    # No new part starts while the proof is out; the parts in flight go on, so a refused
    # proof wastes nothing. Their errors (such as a part refused because the proof just
    # completed the session) cannot fail the job meanwhile.
    senders.pause()
    senders.tolerating = True
    proved = await _prove(ctx, source, upload_id, challenge, digests, digest)
    if proved is not None:
        await senders.stop()
        return proved
    senders.tolerating = False
    if senders.stopped.is_set() and not senders.finished:
        # The senders ended while the proof was out (a part failed meanwhile): go on from
        # the parts the server holds, as a resume does.
        session = await ctx.retrying("reading the upload session", lambda: ctx.remote.get_upload(upload_id))
        chunk_size: int = ctx.job["chunk_size"]
        held = _held_parts(session, part_count(source.size, chunk_size), source.size, chunk_size)
        ctx.log.info("sending the rest", parts_held=len(held))
        senders.restart(nursery, held)
    else:
        senders.resume()
    return None


def worth_speculating(unsent_bytes: int, rate_bps: float) -> bool:
    """Whether asking to deduplicate may pay: not when the bytes still to send would go in
    less than :data:`SPECULATE_ABOVE_SECONDS` at ``rate_bps`` (the job's measured rate, or
    until it has one the daemon's last upload's, :class:`~dataeraid.engine.accounting.LinkRates`;
    0, nothing measured yet, asks)."""
    return rate_bps <= 0 or unsent_bytes >= rate_bps * SPECULATE_ABOVE_SECONDS


async def _challenge(ctx: JobContext, upload_id: str, sha256: str) -> dict[str, Any] | None:
    try:
        challenge: dict[str, Any] = await ctx.retrying(
            "asking to deduplicate", lambda: ctx.remote.dedup_challenge(upload_id, sha256))
    except DataeraiError as exc:
        # A repository without deduplication (404), or a session that is no longer open: upload as usual.
        ctx.log.info("no deduplication", code=exc.code, error=exc.message)
        return None
    return challenge


async def _range_digests(ctx: JobContext, source: FileSet, challenge: dict[str, Any]) -> list[str] | None:
    """The SHA-256 of each range the challenge asks for, read from the source (off the event loop)."""
    ranges = [(int(r["offset"]), int(r["length"])) for r in challenge.get("ranges", [])]
    if any(offset < 0 or length < 0 or offset + length > source.size for offset, length in ranges):
        ctx.log.warning("the server asked for ranges outside the content; not deduplicating")
        return None
    block = ctx.settings.io_block_size

    def digests() -> list[str]:
        out = []
        for offset, length in ranges:
            digest = hashlib.sha256()
            _feed(source, digest, offset, length, block)
            out.append(digest.hexdigest())
        return out

    return await trio.to_thread.run_sync(digests)


async def _prove(ctx: JobContext, source: FileSet, upload_id: str, challenge: dict[str, Any], digests: list[str],
                 digest: CachedDigest) -> dict[str, Any] | None:
    """Answer the challenge: the completion's result, or None if the repository did not take it."""
    # The digests are of the source as enqueued, or nothing is committed.
    await trio.to_thread.run_sync(source.check_sources)
    challenge_id = str(challenge["challenge_id"])
    try:
        result: dict[str, Any] = await ctx.retrying(
            "proving possession",
            lambda: ctx.remote.dedup_prove(upload_id, challenge_id, digests, ctx.job_id,
                                           file_sha256=digest.file_sha256),
        )
    except DataeraiError as exc:
        if exc.code != "conflict":
            raise
        ctx.log.info("not deduplicated", reason=exc.data.get("reason"))
        return None
    return result


async def _deduplicate(ctx: JobContext, source: FileSet, upload_id: str, digest: CachedDigest,
                       why: str) -> dict[str, Any] | None:
    """Challenge, range digests, proof: the completion's result, or None."""
    challenge = await _challenge(ctx, upload_id, digest.sha256)
    if challenge is None:
        return None
    digests = await _range_digests(ctx, source, challenge)
    if digests is None:
        return None
    ctx.log.info("proving possession", source=why, ranges=len(digests))
    return await _prove(ctx, source, upload_id, challenge, digests, digest)


async def _finish_deduplicated(ctx: JobContext, source: FileSet, result: dict[str, Any],
                               identity: SourceIdentity | None, digest: CachedDigest,
                               bytes_sent: int) -> dict[str, Any]:
    if identity is not None:
        await ctx.store.remember_digest(identity, digest)
    ctx.log.info("upload deduplicated", asset_id=result["asset_id"], content_id=result["content_id"],
                 size=source.size, part_bytes_sent=bytes_sent, files=len(source.files))
    return {**_completed_fields(result, source), "deduplicated": True}


async def hash_stream(source: FileSet, stream: StreamHasher, chunk_size: int, digests: PartDigests,
                      held: Container[int], pool: BufferPool, *, in_memory: bool | None = None) -> None:
    """Feed the whole ``source`` to ``stream`` in order, recording in ``digests`` the digest
    of each part not ``held`` as the hash passes the part's end.

    Each source byte is read once, into a buffer of ``pool``, and hashed into the stream's
    digest and the part's own from there. A stream ``in_memory`` (by default: of at most
    :data:`SMALL_STREAM_BYTES`) is read whole into memory, a part per worker-thread call,
    and its parts carry their bytes, which are then sent without being read again. Any other
    goes in worker-thread calls of at most HASH_SLICE bytes, each ending at most at a part's
    end, so that a pause or a shutdown never waits long.
    """
    total = source.size
    count = part_count(total, chunk_size)
    if in_memory is None:
        in_memory = total <= SMALL_STREAM_BYTES
    if in_memory:
        # Part by part, so that the first part is sent while the next one is read.
        data = memoryview(bytearray(total))
        for number in range(1, count + 1):
            offset, size = part_span(number, total, chunk_size)
            piece = data[offset:offset + size]
            part = digests.part_hasher() if number not in held else None
            await trio.to_thread.run_sync(_read_and_hash, source, stream, offset, piece, part)
            if number not in held:
                digests.record(number, part.hexdigest() if part is not None else stream.whole.hexdigest(), piece,
                               stream.whole.hexdigest() if part is not None else None)
        return
    for number in range(1, count + 1):
        offset, size = part_span(number, total, chunk_size)
        part = digests.part_hasher() if number not in held else None
        for start in range(offset, offset + size, HASH_SLICE):
            length = min(HASH_SLICE, offset + size - start)
            await trio.to_thread.run_sync(stream.feed_into, source, start, length, pool, part)
        if number not in held:
            digests.record(number, part.hexdigest() if part is not None else stream.whole.hexdigest(), None,
                           stream.whole.hexdigest() if part is not None else None)


def _read_and_hash(source: FileSet, stream: StreamHasher, offset: int, piece: memoryview,
                  part: Hasher | None) -> None:
    """``piece`` read from the stream at ``offset``, hashed into the stream's digest (and the part's)."""
    source.readinto(offset, piece)
    stream.update(piece)
    if part is not None:
        part.update(piece)


async def _part_digest(source: FileSet, offset: int, size: int, block: int) -> str:
    """The SHA-256 of ``size`` bytes of the source from ``offset``, off the event loop, in
    slices of at most HASH_SLICE bytes."""
    digest = hashlib.sha256()
    for start in range(offset, offset + size, HASH_SLICE):
        length = min(HASH_SLICE, offset + size - start)
        await trio.to_thread.run_sync(_feed, source, digest, start, length, block)
    return digest.hexdigest()


def _feed(source: FileSet, hasher: Hasher, offset: int, length: int, block: int) -> None:
    end = offset + length
    buffer = memoryview(bytearray(min(block, length)))
    while offset < end:
        piece = buffer[:min(len(buffer), end - offset)]
        source.readinto(offset, piece)
        hasher.update(piece)
        offset += len(piece)


def _completed_fields(result: dict[str, Any], source: FileSet) -> dict[str, Any]:
    files = [{"local_path": path, "size": f.size} for path, f in zip(source.local_paths(), source.files, strict=True)]
    return {"asset_id": result["asset_id"], "content_id": result["content_id"], "sha256": result["sha256"],
            "files": files}


async def _acknowledged(source: FileSet, plan: PartPlan, ack: dict[str, Any], block: int) -> str | None:
    """The digest the server acknowledged ``plan`` with, if it is the part's; None if not.

    A part sent with its prefix digest is acknowledged with that digest if the server
    checked it; if it could not (the parts before it were not at hand, say after a server
    restart), with the part's own digest instead, which is then compared with the digest of
    the source's bytes, hashed now (docs/http-api.md, "Prefix digests").
    """
    if ack.get("size") != plan.size:
        return None
    if not plan.prefix:
        return plan.sha256 if ack.get("sha256") == plan.sha256 else None
    if ack.get("prefix_sha256") == plan.sha256:
        return plan.sha256
    own = ack.get("sha256")
    if ack.get("prefix_sha256") is None and isinstance(own, str):
        mine = (hashlib.sha256(plan.data).hexdigest() if plan.data is not None
                else await _part_digest(source, plan.offset, plan.size, block))
        return own if mine == own else None
    return None


def _in_order(ctx: JobContext, target: dict[str, Any]) -> bool:
    """Whether a part sent to ``target`` waits for the previous part's body to be sent.

    The repository's own part endpoint (its directory storage) hashes each part into the
    whole file's running digest as it streams, which it can do for parts that arrive in
    order (docs/server.md, "Chaining"): sending one body after the other, while the previous
    part's acknowledgement, fsync and checkpoint overlap with the next body, is faster there
    than parallel streams. An object store's presigned URL gains nothing from order, so
    parts go to it in parallel. ``upload_order`` ("auto", "always", "never") overrides this.
    """
    if ctx.settings.upload_order != "auto":
        return ctx.settings.upload_order == "always"
    return ctx.remote.is_own_part_url(str(target.get("url", "")))


def _part_body(source: FileSet, plan: PartPlan) -> Body:
    """``plan``'s bytes for :meth:`~dataeraid.engine.repository.Repository.put_part_from`:
    from the bytes that were hashed if it holds them, else from the source's files."""

    def body(at: int, length: int, out: Outlet) -> None:
        if plan.data is not None:
            out.sendall(plan.data[at:at + length])
            return
        handed = 0
        for index, offset, step in source.segments(plan.offset + at, length):
            with source.descriptor(index) as fd:
                if out.sendfile(fd, offset, step) != step:
                    raise source_changed(source.local_path(index), f"short read at offset {offset}")
            handed += step
        if handed != length:
            raise source_changed(source.root, f"the stream ends before offset {plan.offset + at + length}")

    return body


async def _send_part(ctx: JobContext, source: FileSet, upload_id: str, plan: PartPlan,
                     turn: Turn | None = None) -> str | None:
    """Send one part until it is acknowledged with its digest; the ETag the store answered,
    where it went straight to one."""
    block = ctx.settings.io_block_size
    accounting = ctx.accounting
    mismatches = 0
    while True:
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            offset, end = plan.offset, plan.offset + plan.size
            while offset < end:
                length = min(block, end - offset)
                if plan.data is not None:  # the bytes that were hashed, read once
                    at = offset - plan.offset
                    data = bytes(plan.data[at:at + length])
                else:
                    data = await trio.to_thread.run_sync(source.read, offset, length)
                await accounting.moved(len(data), plan.number - 1, offset)
                offset += len(data)
                sent += len(data)
                yield data
            if turn is not None:
                turn.done.set()  # the whole body is handed to the connection: the next part may go

        async def charge(n: int) -> None:
            nonlocal sent
            await accounting.moved(n, plan.number - 1, plan.offset + sent)
            sent += n

        async def attempt() -> dict[str, Any]:
            nonlocal sent
            try:
                target = await ctx.remote.part_target(upload_id, plan.number, plan.sha256, plan.size,
                                                      prefix=plan.prefix)
                if turn is not None and _in_order(ctx, target):
                    await turn.after.wait()
                what = f"sending part {plan.number}"
                try:
                    # Straight from the file to the socket where the connection allows
                    # (engine/bulk_http.py); else through httpx, block by block.
                    ack = await ctx.remote.put_part_from(target, plan.size, _part_body(source, plan), charge, what,
                                                         turn.done.set if turn is not None else None,
                                                         burst=accounting.burst_bytes)
                    if ack is None:
                        ack = await ctx.remote.put_part(target, body(), what)
                    return ack
                except BaseException:
                    accounting.take_back(sent)
                    sent = 0
                    raise
            finally:
                if turn is not None:
                    turn.done.set()  # ended either way: a failed part never holds the next one back

        try:
            ack = await ctx.retrying(f"sending part {plan.number}", attempt)
            digest = await _acknowledged(source, plan, ack, block)
            etag = ack.get("etag")
            if digest is None:
                raise DataeraiError("checksum_mismatch",
                                    f"the server acknowledged part {plan.number} with another digest or size")
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
        await ctx.store.checkpoint(ctx.job_id, plan.number, plan.size, digest)
        accounting.chunk_done()
        return etag if isinstance(etag, str) else None
