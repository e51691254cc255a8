"""What an engine gets to move one job's bytes: the job, the repository, the checkpoint
store, the accounting of its bytes, and retries that show in the job's state.

Retrying (:meth:`JobContext.retrying`, by the policy of :mod:`dataeraid.engine.retry`):
a transient failure is retried while the job's deadline allows; the job shows
``waiting_for_network`` meanwhile and goes back to ``running`` at the next success.
A missing or expired token puts the job in ``waiting_for_auth`` until the credentials
are reloaded. Any other error fails the job with its code. All waiting uses Trio's
clock, so tests can fake time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dataeraid import log
from dataeraid.auth import Auth
from dataeraid.config import Settings
from dataeraid.engine.accounting import STREAMS_IN_MEMORY_BYTES, Accounting, LinkRates, MemoryBudget
from dataeraid.engine.bandwidth import Spender
from dataeraid.engine.repository import Repository
from dataeraid.engine.retry import RetryPolicy, transient_reason
from dataeraid.errors import AuthProblem, DataeraiError, TransientError
from dataeraid.jobs import WAITING, Jobs
from dataeraid.observe.tally import Tally
from dataeraid.redact import redact
from dataeraid.store import Row

T = TypeVar("T")


class JobContext:
    """One running job, as its engine sees it: ``remote`` is the repository (the contract of
    :mod:`dataeraid.engine.repository`), ``accounting`` takes every byte moved, and
    :meth:`retrying` wraps every call to the repository. It is the job's progress
    :class:`~dataeraid.engine.progress.Reporter` too: its events carry the job's state."""

    def __init__(self, job: Row, jobs: Jobs, remote: Repository, auth: Auth, settings: Settings,
                 bandwidth: Spender, tally: Tally | None = None, retry: RetryPolicy | None = None,
                 rates: LinkRates | None = None, memory: MemoryBudget | None = None) -> None:
        self.job = job
        #: The daemon's budget for sources held in memory (a job alone: its own).
        self.memory = memory or MemoryBudget(STREAMS_IN_MEMORY_BYTES)
        #: Counts what it moves and retries (the metrics), when the daemon gave one.
        self.tally = tally or Tally()
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
        #: Every byte the job moves passes through here: paced, counted, reported.
        self.accounting = Accounting(self, settings.progress_interval_s, bandwidth, self.tally, job["kind"], rates)
        self.retry = retry or RetryPolicy(settings)
        self._state_lock = trio.Lock()
        # When each retry now sleeping starts again (Unix time): the job's next retry is the first.
        self._retries: dict[object, float] = {}

    def note_progress(self, bytes_done: int, chunks_done: int) -> None:
        """The counts ``job.get`` shows between events."""
        self.jobs.live_progress[self.job_id] = (bytes_done, chunks_done)

    def publish_progress(self, **fields: Any) -> None:
        """A ``job.progress`` event: ``fields``, with the job's state and why it waits."""
        self.jobs.bus.publish_transient("job.progress", self.job_id,
                                        {**fields, "state": self.state, "waiting": self.waiting})

    def _publish_status(self) -> None:
        """Tell followers at once what the job does now: its bar's rate stops while it waits."""
        if self.accounting.progress is not None:
            self.accounting.progress.publish_now()
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

    async def retrying(self, what: str, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt_once`` until it succeeds or fails for a reason retrying can't mend."""
        attempt = 0
        while True:
            auth_version = self.auth.version
            try:
                result = await attempt_once()
            except TransientError as exc:
                self.retry.check_deadline(self.job.get("deadline"), exc)
                delay = self.retry.delay(attempt, exc.retry_after)
                attempt += 1
                self.tally.retried(self.job["kind"], exc.code)
                self.log.warning("retrying", what=what, error=redact(str(exc)), attempt=attempt,
                                 delay_s=round(delay, 2))
                mine = object()
                self._retries[mine] = self.retry.wall() + delay
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
