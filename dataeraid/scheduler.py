"""The scheduler: takes queued jobs from the store, runs up to
``max_active_jobs`` at once, and owns every running job's task and cancel scope.

Which queued job starts next (``pick``): the highest ``priority`` first; among
jobs of that priority, the client (the job's ``client`` tag: one SDK process,
or one name) with the fewest jobs running, ties going to the client that
started a job longest ago (round-robin), then first come, first served within
a client. So twenty processes submitting at once share the slots instead of
the first one filling them all, and the bandwidth limit is shared fairly between
the clients with running jobs (``transfer.FairBandwidth``). A running job is never
stopped to make room for a higher priority: priorities order the queue only.

A running job ends in exactly one of three ways: the engine returns (the job
becomes ``completed`` with the engine's result fields), the engine raises a
``DataeraiError`` (``failed`` with its code), or the job's scope is cancelled
(by ``job.cancel``/pause, which already moved the state, or by daemon
shutdown, which leaves the job ``running`` in the store so the next start
requeues it).

Transfer windows (docs/job-states.md#transfer-windows): a job outside its window is
``scheduled``, never ``queued``, so ``store.runnable`` never offers it. The scheduler
requeues the scheduled jobs whose window opened each time it wakes, and wakes by
itself at the next opening (Trio's clock, so a test runs it on a ``MockClock``; the
wall clock and zone are ``Jobs.wall`` and ``Jobs.zone``). A running job whose window
closes stops at once: it goes ``scheduled`` and its task is cancelled, like a pause,
so the parts in flight are dropped (at most ``parts_per_job`` are sent again when the
window opens) and the checkpoints are kept.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.config import LiveSettings, Settings
from dataeraid.engine.accounting import STREAMS_IN_MEMORY_BYTES, LinkRates, MemoryBudget
from dataeraid.engine.bandwidth import Links
from dataeraid.engine.context import JobContext
from dataeraid.errors import DataeraiError, first_error
from dataeraid.jobs import Jobs
from dataeraid.observe.tally import Tally
from dataeraid.remote import Remote
from dataeraid.store import Row

Engine = Callable[[JobContext], Awaitable[dict[str, Any]]]

#: The longest the scheduler trusts a wall-clock reading to convert into Trio time: a window's
#: opening or closing is looked at again at least this often, so a wall clock that was set, or a
#: machine that slept, puts it off by no more than this.
WINDOW_RECHECK_S = 3600.0

_log = log.get("dataeraid.scheduler")


def pick(queued: Sequence[Row], running_per_client: Mapping[str, int], last_start: Mapping[str, int],
         free: int) -> list[Row]:
    """Which of the ``queued`` jobs to start in ``free`` slots, in order (see the module docstring).

    ``queued`` rows need ``job_id``, ``priority``, ``seq`` and ``client``;
    ``last_start`` maps a client to when (a counter) it last had a job started.
    Pure, so it can be tested on any queue.
    """
    running = Counter(running_per_client)
    started = dict(last_start)
    remaining = sorted(queued, key=lambda r: (-r["priority"], r["seq"]))
    chosen: list[Row] = []
    tick = max(started.values(), default=0)
    while remaining and len(chosen) < free:
        top = remaining[0]["priority"]
        firsts: dict[str, Row] = {}
        for row in remaining:
            if row["priority"] != top:
                break
            firsts.setdefault(row["client"], row)
        client = min(firsts, key=lambda c: (running[c], started.get(c, -1), firsts[c]["seq"]))
        row = firsts[client]
        chosen.append(row)
        remaining.remove(row)
        running[client] += 1
        tick += 1
        started[client] = tick
    return chosen


class Scheduler:
    def __init__(self, jobs: Jobs, remote: Remote, auth: Auth, settings: Settings | LiveSettings,
                 engines: Mapping[str, Engine], tally: Tally | None = None, bandwidth: Links | None = None) -> None:
        """``settings`` is read at each start (a ``LiveSettings`` follows reloads: a job runs with the
        settings in force when it started); ``bandwidth`` is the daemon's links (made from the
        settings if not given)."""
        self._jobs = jobs
        self._tally = tally
        #: What the last job each way moved at, for the next job's first decisions.
        self._rates = LinkRates()
        #: What the running jobs hold of their sources in memory, together.
        self._memory = MemoryBudget(STREAMS_IN_MEMORY_BYTES)
        self._remote = remote
        self._auth = auth
        self._live = LiveSettings.of(settings)
        self._engines = engines
        self._running: dict[str, trio.CancelScope] = {}
        self._clients: dict[str, str] = {}  # running job id -> its client
        self._last_start: dict[str, int] = {}
        self._ticks = itertools.count(1)
        self._bandwidth = bandwidth or Links(shared_bps=self._live.current.bandwidth_limit_bps)

    @property
    def bandwidth(self) -> Links:
        """The daemon's links (their ``rate`` is the limit in force now on each)."""
        return self._bandwidth

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def stop(self, job_id: str) -> None:
        """Cancel a job's task, if it runs. Its state was already changed by the caller."""
        scope = self._running.get(job_id)
        if scope is not None:
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        requeued = await self._jobs.requeue_interrupted()
        if requeued:
            _log.info("requeued interrupted jobs", job_ids=requeued)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                wake = self._jobs.queue_changed()
                opens = await self._jobs.open_windows()
                free = self._live.current.max_active_jobs - len(self._running)
                if free > 0:
                    queued = await self._jobs.store.runnable_jobs(self._running, per_client=free)
                    # Forget clients with nothing queued or running, so the map stays small over months.
                    active = {r["client"] for r in queued} | set(self._clients.values())
                    self._last_start = {c: t for c, t in self._last_start.items() if c in active}
                    for row in pick(queued, Counter(self._clients.values()), self._last_start, free):
                        scope = trio.CancelScope()
                        self._running[row["job_id"]] = scope
                        self._clients[row["job_id"]] = row["client"]
                        self._last_start[row["client"]] = next(self._ticks)
                        nursery.start_soon(self._run, row, scope)
                # Wake at the next window opening too; the wall clock tells how far off it is.
                with trio.move_on_at(math.inf if opens is None else trio.current_time()
                                     + min(WINDOW_RECHECK_S, max(0.0, opens - self._jobs.wall()))):
                    await wake.wait()

    async def _run(self, row: Row, scope: trio.CancelScope) -> None:
        job_id: str = row["job_id"]
        client: str = row["client"]
        ctx = JobContext(row, self._jobs, self._remote, self._auth, self._live.current,
                         self._bandwidth.join(client, row["kind"]), self._tally, rates=self._rates,
                         memory=self._memory)
        try:
            with scope:
                try:
                    opens = self._jobs.window_opens(row.get("window"))
                    if opens is not None:
                        # Its window closed while it waited for a slot.
                        await self._jobs.transition(job_id, "scheduled", fields={"not_before": opens},
                                                    only_from=("queued",))
                        return
                    await self._jobs.transition(job_id, "running", only_from=("queued",))
                except DataeraiError:
                    return  # cancelled or paused before it started
                try:
                    with first_error():
                        fields = await self._move(row, ctx, scope)
                except DataeraiError as exc:
                    ctx.log.warning("job failed", code=exc.code, error=exc.message)
                    await self._finish(job_id, "failed", {"error_code": exc.code, "error_message": exc.message})
                except Exception as exc:
                    ctx.log.exception("job crashed")
                    await self._finish(job_id, "failed", {"error_code": "internal", "error_message": repr(exc)})
                else:
                    await self._finish(job_id, "completed", fields)
        finally:
            self._bandwidth.leave(client, row["kind"])
            del self._running[job_id]
            del self._clients[job_id]
            self._jobs.live_progress.pop(job_id, None)
            self._jobs.wake_scheduler()

    async def _move(self, row: Row, ctx: JobContext, scope: trio.CancelScope) -> dict[str, Any]:
        """The engine's run, stopped when the job's transfer window closes."""
        if "params" not in row:
            # The queue's reads leave a job's params (an upload's manifest) undecoded: the engine
            # reads them once, now (``ctx.job`` is this row).
            params = await self._jobs.store.job_params(row["job_id"])
            if params is None:
                raise DataeraiError("not_found", f"job {row['job_id']} is gone")
            row["params"] = params
        async with trio.open_nursery() as guard:
            if row.get("window"):
                guard.start_soon(self._close_window, row, scope)
            fields = await self._engines[row["kind"]](ctx)
            guard.cancel_scope.cancel()
        return fields

    async def _close_window(self, row: Row, scope: trio.CancelScope) -> None:
        """Sleep until the job's window closes, then make it ``scheduled`` and stop it."""
        job_id: str = row["job_id"]
        while True:
            closes = self._jobs.window_closes(row["window"])
            if closes is None:
                return
            now = self._jobs.wall()
            if closes > now:
                await trio.sleep(min(WINDOW_RECHECK_S, closes - now))
                continue
            opens = self._jobs.window_opens(row["window"])
            if opens is not None:
                break
        try:
            await self._jobs.transition(job_id, "scheduled", fields={"not_before": opens},
                                        only_from=("running", "waiting_for_network", "waiting_for_auth"))
        except DataeraiError:
            return  # it ended, or was paused or cancelled, meanwhile: that stands
        _log.info("transfer window closed: job scheduled", job_id=job_id, window=row["window"], not_before=opens)
        scope.cancel()

    async def _finish(self, job_id: str, state: str, fields: dict[str, Any]) -> None:
        try:
            await self._jobs.transition(job_id, state, fields=fields)
        except DataeraiError as exc:
            # Cancelled while finishing: the cancel won, and the outcome is dropped.
            _log.info("job outcome dropped", job_id=job_id, outcome=state, reason=exc.message)
