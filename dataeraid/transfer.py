"""What an engine gets to move one job's bytes: the job, the remote, the
checkpoint store, progress reporting, and retries that show in the job's state.

Retry policy (the product's own, so written here rather than borrowed): a
transient failure (network, timeout, 5xx, 429) is retried without limit while
the job's deadline allows, after an exponential backoff with full jitter that
honours ``Retry-After``; the job shows ``waiting_for_network`` meanwhile and goes
back to ``running`` at the next success. A missing or expired token puts the job
in ``waiting_for_auth`` until the credentials are reloaded. Any other error fails
the job with its code. All waiting uses Trio's clock, so tests can fake time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
import trio

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.config import Settings
from dataeraid.errors import AuthProblem, DataeraiError, TransientError, leaves
from dataeraid.jobs import WAITING, Jobs
from dataeraid.observe.tally import Tally
from dataeraid.redact import origin, redact
from dataeraid.remote import Remote
from dataeraid.store import Row

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")


class Spender(Protocol):
    """What an engine's bytes pass through on their way: ``await spend(n)`` before sending ``n``."""

    async def spend(self, n: int) -> None: ...


#: How far ahead of the limit the link may be booked: a quarter second of burst at
#: most, so the limit holds over short windows too.
BURST_S = 0.25


@dataclass(eq=False)
class _Request:
    """One spend waiting for the link: ordered by its fair-queuing tag, then arrival."""

    tag: float
    seq: int
    size: int
    granted: bool = False
    wake: trio.Event = field(default_factory=trio.Event)

    def __lt__(self, other: _Request) -> bool:
        return (self.tag, self.seq) < (other.tag, other.seq)


class FairBandwidth:
    """The daemon-wide limit, shared fairly between clients and without waste.

    One link of ``rate`` bytes a second. While several clients want more than the
    link gives, it is shared evenly between the clients (not their jobs: a client
    with five jobs gets what a client with one gets), by start-time fair queuing:
    each spend gets a tag, its client's bytes so far counted from the link's
    virtual time, and the waiting spend with the lowest tag goes next. A client
    that wants less than its even share (a slow disk, a slow server, a paused
    job) leaves the rest to the others instead of wasting it. An unlimited daemon
    (rate 0) lets everything through.

    No task of its own: the first spend that has to wait paces the link for all
    the waiting ones until its own turn, then hands the pacing to the next.

    ``set_rate`` changes the rate at run time (the ``bwlimit`` timetable, a
    reload): what the link booked at the old rate is rescaled to the new one, and
    the spends waiting keep their tags, so their order, and the fairness, holds
    across the change. Turning the limit off lets every waiting spend through at once.
    """

    def __init__(self, rate_bps: int) -> None:
        self.rate = rate_bps
        self._changed = trio.Event()  # set (and replaced) by set_rate, to wake the pacer
        self._jobs: dict[str, int] = {}
        self._finish: dict[str, float] = {}  # client -> the tag its last spend finished at
        self._virtual = 0.0  # the tag of the spend the link took last
        self._booked_until = -math.inf  # when the link has sent every byte it took
        self._waiting: list[_Request] = []  # a heap
        self._arrivals = itertools.count()
        self._pacing = False

    def join(self, client: str) -> Spender:
        """What a job of ``client`` spends through; call ``leave`` when the job stops."""
        self._jobs[client] = self._jobs.get(client, 0) + 1
        return _ClientShare(self, client)

    def leave(self, client: str) -> None:
        self._jobs[client] -= 1
        if self._jobs[client] == 0:
            del self._jobs[client]
            self._finish.pop(client, None)
            if not self._jobs:
                self._virtual = 0.0  # the tags start again, so they never grow without end

    async def spend(self, client: str, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        tag = max(self._finish.get(client, 0.0), self._virtual) + n
        self._finish[client] = tag
        if not self._waiting and not self._pacing and self._link_ready():
            self._take(tag, n)
            return
        request = _Request(tag, next(self._arrivals), n)
        heapq.heappush(self._waiting, request)
        try:
            while not request.granted:
                if self._pacing:
                    await request.wake.wait()
                    request.wake = trio.Event()
                else:
                    await self._pace_until(request)
        finally:
            if not request.granted:  # cancelled while waiting
                self._waiting.remove(request)
                heapq.heapify(self._waiting)
                self._hand_over()

    def _link_ready(self) -> bool:
        return self._booked_until - trio.current_time() <= BURST_S

    def _take(self, tag: float, n: int) -> None:
        if self.rate > 0:
            self._booked_until = max(self._booked_until, trio.current_time()) + n / self.rate
        self._virtual = tag

    def set_rate(self, rate_bps: int) -> None:
        """From now on, ``rate_bps`` bytes a second (0: no limit), for the spends waiting too."""
        old, self.rate = self.rate, rate_bps
        if old == rate_bps:
            return
        now = trio.current_time()
        if old > 0 and rate_bps > 0 and self._booked_until > now:
            # The bytes booked but not yet "sent" go out at the new rate.
            self._booked_until = now + (self._booked_until - now) * old / rate_bps
        elif rate_bps <= 0:
            self._booked_until = -math.inf
        self._changed.set()
        self._changed = trio.Event()

    async def _pace_until(self, mine: _Request) -> None:
        """Grant the waiting spends, lowest tag first, at the link's rate, until ``mine``."""
        self._pacing = True
        try:
            while not mine.granted:
                while self.rate > 0 and not self._link_ready():
                    # Spends that arrive meanwhile join the heap, and the head is read after;
                    # a new rate wakes the pacer early, and the wait is measured again.
                    changed = self._changed
                    with trio.move_on_at(self._booked_until - BURST_S):
                        await changed.wait()
                request = heapq.heappop(self._waiting)
                self._take(request.tag, request.size)
                request.granted = True
                request.wake.set()
        finally:
            self._pacing = False
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the head of the waiting spends to pace the link, if nobody does."""
        if self._waiting and not self._pacing:
            self._waiting[0].wake.set()


@dataclass
class _ClientShare:
    limit: FairBandwidth
    client: str

    async def spend(self, n: int) -> None:
        await self.limit.spend(self.client, n)


@dataclass
class _ChainedShare:
    shares: tuple[Spender, ...]

    async def spend(self, n: int) -> None:
        for share in self.shares:
            await share.spend(n)


class Links:
    """The daemon's bandwidth: one fair link over both directions (``bandwidth_limit_bps``)
    and one per direction (``bwlimit``'s upload:download). A job spends through its
    direction's link and then the shared one; config.toml sets at most one of the two
    kinds, so only one of them limits at a time, and an unlimited link lets spends
    straight through. The links exist whatever the settings, so a reload that
    switches from one kind to the other changes rates, never the jobs' links."""

    def __init__(self, shared_bps: int = 0, up_bps: int = 0, down_bps: int = 0) -> None:
        self.shared = FairBandwidth(shared_bps)
        self.up = FairBandwidth(up_bps)
        self.down = FairBandwidth(down_bps)

    def _direction(self, kind: str) -> FairBandwidth:
        return self.up if kind == "upload" else self.down

    def join(self, client: str, kind: str) -> Spender:
        """What a job of ``client`` of ``kind`` (upload, download) spends through; ``leave`` when it stops."""
        return _ChainedShare((self._direction(kind).join(client), self.shared.join(client)))

    def leave(self, client: str, kind: str) -> None:
        self._direction(kind).leave(client)
        self.shared.leave(client)

    def set_rates(self, shared_bps: int, up_bps: int, down_bps: int) -> None:
        self.shared.set_rate(shared_bps)
        self.up.set_rate(up_bps)
        self.down.set_rate(down_bps)


def backoff_delay(attempt: int, settings: Settings, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * (2 ** min(attempt, 30)))
    delay = rng.uniform(settings.retry_base_s / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 3600.0))
    return delay


@dataclass
class Progress:
    """Counts a job's bytes and publishes throttled ``job.progress`` events.

    ``rate_bps`` is a moving average while bytes move, 0 while the job waits (a rate
    that stood still would lie), and in the last event (:meth:`finish`) the average
    of the whole run: the bytes it moved over the seconds since it started.
    """

    ctx: JobContext
    bytes_total: int
    chunk_count: int
    file_name: str
    file_index: int = 0
    bytes_done: int = 0
    chunks_done: int = 0
    chunk_index: int = 0
    rate_bps: float = 0.0
    _last_emit: float = field(default=-1e9)
    _last_bytes: int = 0
    _last_rate_time: float | None = None
    _started: float = field(default_factory=trio.current_time)
    _moved: int = 0

    def add(self, n: int, chunk_index: int | None = None) -> None:
        self.bytes_done += n
        self._moved += n
        if chunk_index is not None:
            self.chunk_index = chunk_index
        self._maybe_publish(force=False)

    def at_file(self, index: int, name: str) -> None:
        """The bytes being moved now belong to file ``index`` of the content."""
        self.file_index = index
        self.file_name = name

    def chunk_finished(self) -> None:
        self.chunks_done += 1
        self._maybe_publish(force=False)

    def publish_now(self) -> None:
        self._maybe_publish(force=True)

    def finish(self) -> None:
        """Publish the last event of the run, with the run's average rate."""
        elapsed = trio.current_time() - self._started
        self.rate_bps = self._moved / elapsed if elapsed > 0 and self._moved > 0 else 0.0
        self._emit(trio.current_time())

    def _maybe_publish(self, force: bool) -> None:
        now = trio.current_time()
        self.ctx.jobs.live_progress[self.ctx.job_id] = (self.bytes_done, self.chunks_done)
        if not force and now - self._last_emit < self.ctx.settings.progress_interval_s:
            return
        if self.ctx.state != "running":
            # Nothing moves while the job waits; the rate starts afresh when it runs again.
            self.rate_bps = 0.0
            self._last_rate_time = None
        else:
            if self._last_rate_time is not None and now > self._last_rate_time:
                sample = (self.bytes_done - self._last_bytes) / (now - self._last_rate_time)
                # Exponential moving average: steady enough to read, quick enough to follow.
                self.rate_bps = sample if self.rate_bps == 0 else 0.6 * sample + 0.4 * self.rate_bps
            self._last_rate_time = now
            self._last_bytes = self.bytes_done
        self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self.ctx.publish_progress(
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            chunk_index=self.chunk_index,
            chunk_count=self.chunk_count,
            rate_bps=round(self.rate_bps, 1),
            file_index=self.file_index,
            file_name=self.file_name,
        )


@dataclass(frozen=True)
class Turn:
    """Part bodies in order: a part's body starts once ``after`` is set (the previous part's
    body was sent, or its attempt ended either way), and it sets ``done`` when its own body
    was sent or its attempt ended. A failed attempt never holds the next part back. The
    repository's own part endpoint hashes parts that arrive in order as they stream
    (``upload_order`` in docs/configuration.md)."""

    after: trio.Event
    done: trio.Event

    @classmethod
    def first(cls) -> Turn:
        ready = trio.Event()
        ready.set()
        return cls(ready, trio.Event())

    def next(self) -> Turn:
        return Turn(self.done, trio.Event())


class JobContext:
    def __init__(self, job: Row, jobs: Jobs, remote: Remote, auth: Auth, settings: Settings,
                 bandwidth: Spender, tally: Tally | None = None) -> None:
        self.job = job
        #: Counts what it moves and retries (the metrics), when the daemon gave one.
        self.tally = tally or Tally()
        self.bandwidth = self.tally.counting(bandwidth, job["kind"])
        self.job_id: str = job["job_id"]
        self.jobs = jobs
        self.store = jobs.store
        self.remote = remote
        self.auth = auth
        self.settings = settings
        self.log = log.get("dataeraid.job").bind(job_id=self.job_id, kind=job["kind"])
        self.state = "running"
        #: Why the job waits, as its job object says (``waiting``), or None while it runs.
        self.waiting: dict[str, Any] | None = None
        self._state_lock = trio.Lock()
        self._rng = random.Random()
        self._progress: Progress | None = None
        # When each retry now sleeping starts again (Unix time): the job's next retry is the first.
        self._retries: dict[object, float] = {}

    def progress(self, bytes_total: int, chunk_count: int, file_name: str) -> Progress:
        self._progress = Progress(self, bytes_total=bytes_total, chunk_count=chunk_count, file_name=file_name)
        return self._progress

    def publish_progress(self, **fields: Any) -> None:
        """A ``job.progress`` event: ``fields``, with the job's state and why it waits."""
        self.jobs.bus.publish_transient("job.progress", self.job_id,
                                        {**fields, "state": self.state, "waiting": self.waiting})

    def _publish_status(self) -> None:
        """Tell followers at once what the job does now: its bar's rate stops while it waits."""
        if self._progress is not None:
            self._progress.publish_now()
            return
        done, chunks = self.jobs.live_progress.get(self.job_id, (0, 0))
        self.publish_progress(bytes_done=done, bytes_total=self.job.get("bytes_total") or 0, chunk_index=chunks,
                              chunk_count=self.job.get("chunk_count") or 0, rate_bps=0.0, file_index=0,
                              file_name=self.job.get("file_name") or "")

    async def save(self, **fields: Any) -> None:
        """Record fields on the job row (durably) and in ``self.job``."""
        await self.jobs.update(self.job_id, fields)
        self.job.update(fields)

    def _error_fields(self, error: DataeraiError | Exception | None) -> dict[str, Any]:
        if error is None:
            return {}
        token = self.auth.current.token if self.auth.current is not None else None
        if isinstance(error, DataeraiError):
            return {"error_code": error.code, "error_message": redact(error.message, token)}
        code = error.code if isinstance(error, TransientError) else "unavailable"
        return {"error_code": code, "error_message": redact(transient_reason(error), token)}

    async def _set_state(self, to: str, error: DataeraiError | Exception | None = None,
                         retry_at: float | None = None) -> None:
        """Move the job to ``to``, recording ``error`` (why it waits) and ``retry_at`` (Unix
        time) with the change, and publish its status at once. A job already waiting
        records the newer error and retry time instead (no change of state, no durable event)."""
        async with self._state_lock:
            fields = self._error_fields(error)
            if self.state == to:
                if to in WAITING and fields:
                    try:
                        job = await self.jobs.note_waiting(self.job_id, fields, retry_at)
                    except DataeraiError:
                        return  # paused or cancelled meanwhile: this task is about to stop
                    self.waiting = job["waiting"]
                    self._publish_status()
                return
            job = await self.jobs.transition(self.job_id, to, fields=fields, retry_at=retry_at)
            self.log.info("job.state", state=to, previous_state=self.state)
            self.state = to
            self.waiting = job["waiting"]
            self._publish_status()

    def _check_deadline(self, cause: Exception) -> None:
        deadline = self.job.get("deadline")
        if deadline is not None and time.time() > deadline:
            raise DataeraiError("timeout", f"the job's deadline passed while retrying: {transient_reason(cause)}")

    async def retrying(self, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt_once`` until it succeeds or fails for a reason retrying can't mend."""
        attempt = 0
        while True:
            auth_version = self.auth.version
            try:
                result = await attempt_once()
            except TransientError as exc:
                self._check_deadline(exc)
                delay = backoff_delay(attempt, self.settings, exc.retry_after, self._rng)
                attempt += 1
                self.tally.retried(self.job["kind"], exc.code)
                self.log.warning("retrying", what=what, error=redact(str(exc)), attempt=attempt,
                                 delay_s=round(delay, 2))
                mine = object()
                self._retries[mine] = time.time() + delay
                try:
                    if attempt >= 2 or exc.retry_after is not None:
                        await self._set_state("waiting_for_network", exc, retry_at=min(self._retries.values()))
                    await trio.sleep(delay)
                finally:
                    del self._retries[mine]
                continue
            except AuthProblem as exc:
                self.log.warning("waiting for credentials", what=what, code=exc.code)
                await self._set_state("waiting_for_auth", exc)
                await self.auth.wait_changed(auth_version)
                attempt = 0
                continue
            if self.state != "running":
                await self._set_state("running")
            return result


def transient_reason(exc: BaseException) -> str:
    """What a person should read about a failure worth retrying.

    A request that never got an answer says where it went (the URL's origin: no
    path, no query, so no signature) and why, in the words of the OS:
    ``cannot reach http://127.0.0.1:8080: connection refused``. Anything else (an
    HTTP status, a store's complaint) keeps its own message.
    """
    cause = exc.__cause__
    if isinstance(cause, httpx.TransportError):
        try:
            url = str(cause.request.url)
        except RuntimeError:  # an error raised before its request was made
            url = ""
        return f"cannot reach {origin(url)}: {_transport_detail(cause)}" if url else _transport_detail(cause)
    return str(exc)


def _transport_detail(exc: BaseException) -> str:
    for inner in _causes(exc):
        if isinstance(inner, OSError) and inner.errno:
            return os.strerror(inner.errno).lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timed out" + (f" ({type(exc).__name__})" if not str(exc) else f": {exc}")
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:1].lower() + text[1:]


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it came from (causes, contexts, members of groups), nearest first."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 32:
        current = todo.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        todo.extend(leaves(current) if isinstance(current, BaseExceptionGroup) else [])
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found
