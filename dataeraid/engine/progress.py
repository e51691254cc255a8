"""A job's progress: its counts, its rate, and the throttled ``job.progress`` events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import trio


class Reporter(Protocol):
    """Where a job's progress goes (its :class:`~dataeraid.engine.context.JobContext`)."""

    #: The job's state now: the rate is only measured while it is ``running``.
    state: str

    def note_progress(self, bytes_done: int, chunks_done: int) -> None:
        """The latest counts, for whoever reads the job now (every change, unthrottled)."""

    def publish_progress(self, **fields: Any) -> None:
        """A ``job.progress`` event with ``fields``."""


@dataclass
class Progress:
    """Counts a job's bytes and publishes throttled ``job.progress`` events, at most one
    every ``interval_s`` but when forced.

    ``rate_bps`` is a moving average while bytes move, 0 while the job waits (a rate
    that stood still would lie), and in the last event (:meth:`finish`) the average
    of the whole run: the bytes it moved over the seconds since it started.
    """

    reporter: Reporter
    interval_s: float
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
    _first_moved: float | None = None
    _last_moved: float = 0.0

    def add(self, n: int, chunk_index: int | None = None) -> None:
        self.bytes_done += n
        self._moved += n
        if n > 0:
            now = trio.current_time()
            if self._first_moved is None:
                self._first_moved = now
            self._last_moved = now
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

    def sending_rate(self, min_window_s: float) -> float:
        """Bytes per second lately: the moving average, or until there is one, this run's bytes
        over the time they were moving (first block to latest), once that spans at least
        ``min_window_s`` (the first blocks leave faster than the link: a burst, the socket's
        buffers); 0 when neither is known."""
        if self.rate_bps > 0:
            return self.rate_bps
        if self._first_moved is None or self._last_moved - self._first_moved < min_window_s:
            return 0.0
        return self._moved / (self._last_moved - self._first_moved)

    def moving_rate(self, min_bytes: int = 0) -> float:
        """This run's bytes over the time they were moving (first block to latest); 0 if it
        moved fewer than ``min_bytes`` (too few to say what the link does)."""
        if self._first_moved is None or self._last_moved <= self._first_moved or self._moved < min_bytes:
            return 0.0
        return self._moved / (self._last_moved - self._first_moved)

    def publish_now(self) -> None:
        self._maybe_publish(force=True)

    def finish(self) -> None:
        """Publish the last event of the run, with the run's average rate."""
        elapsed = trio.current_time() - self._started
        self.rate_bps = self._moved / elapsed if elapsed > 0 and self._moved > 0 else 0.0
        self._emit(trio.current_time())

    def _maybe_publish(self, force: bool) -> None:
        now = trio.current_time()
        self.reporter.note_progress(self.bytes_done, self.chunks_done)
        if not force and now - self._last_emit < self.interval_s:
            return
        if self.reporter.state != "running":
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
        self.reporter.publish_progress(
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            chunk_index=self.chunk_index,
            chunk_count=self.chunk_count,
            rate_bps=round(self.rate_bps, 1),
            file_index=self.file_index,
            file_name=self.file_name,
        )
