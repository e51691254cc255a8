"""One job's bytes, in the one place they are counted, paced and reported.

As rclone's ``fs/accounting`` wraps every transfer's reader, every block an engine
moves passes through :meth:`Accounting.moved`: it waits for the job's bandwidth
share, counts the block in the metrics (bytes on the wire, retries included) and
adds it to the job's progress. The engines only say what they moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dataeraid.engine.bandwidth import Spender
from dataeraid.engine.progress import Progress, Reporter
from dataeraid.fileset import FileSet
from dataeraid.observe.tally import Tally


class LinkRates:
    """The rate the daemon's last job in each direction moved its bytes at, for a job
    that has not measured its own yet (whether speculating on deduplication can pay,
    :func:`dataeraid.engine.upload.worth_speculating`). One for the daemon (its
    scheduler's); a job that moved too little to say (under :data:`MIN_BYTES`) leaves
    it as it was.
    """

    #: Bytes a job must have moved for its rate to say something about the link.
    MIN_BYTES = 1 << 20

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def remember(self, direction: str, rate_bps: float) -> None:
        if rate_bps > 0:
            self._last[direction] = rate_bps

    def last(self, direction: str) -> float:
        """The rate last remembered for ``direction``; 0 before any."""
        return self._last.get(direction, 0.0)


#: What the daemon's jobs hold of their sources in memory at once, together (:class:`MemoryBudget`).
#: With the daemon's own 80-120 MiB, this keeps it under the 150 MiB issue 14 allows whatever
#: runs at once (docs/benchmarks.md, "The 10,000-file upload's fixed costs").
STREAMS_IN_MEMORY_BYTES = 32 * 1024 * 1024


class MemoryBudget:
    """The bytes of sources the daemon's jobs hold in memory at once: one for the daemon (its
    scheduler's). A small upload reads its whole stream into memory and sends its parts from
    there (:data:`dataeraid.engine.upload.SMALL_STREAM_BYTES`); with several such jobs running,
    the ones that find the budget spent read from their files instead, so that the daemon's
    memory stays bounded whatever runs at once. Used from the event loop only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def hold(self, n: int) -> Iterator[bool]:
        """Whether ``n`` bytes may be held for the block (never waits); given back after it."""
        if n > self.limit - self.held:
            yield False
            return
        self.held += n
        try:
            yield True
        finally:
            self.held -= n


class Accounting:
    """The bytes of one job, in its direction (``upload``, ``download``).

    :meth:`begin` once the job knows its size and its files; then :meth:`moved` for
    each block, :meth:`take_back` for the blocks of an attempt that failed (they are
    moved again; the metrics keep them, as they did cross the wire), :meth:`chunk_done`
    per checkpointed part or range, and :meth:`finish` for the last event.
    """

    def __init__(self, reporter: Reporter, interval_s: float, bandwidth: Spender, tally: Tally,
                 direction: str, rates: LinkRates | None = None) -> None:
        self._reporter = reporter
        self._direction = direction
        self._rates = rates
        self._interval_s = interval_s
        self._spender = tally.counting(bandwidth, direction)
        self._files: FileSet | None = None
        #: The job's progress, from :meth:`begin` on.
        self.progress: Progress | None = None

    def begin(self, bytes_total: int, chunk_count: int, files: FileSet, file_name: str, *,
              bytes_done: int = 0, chunks_done: int = 0) -> Progress:
        """Start counting a run of ``files``' stream, of which ``bytes_done`` bytes in
        ``chunks_done`` chunks are already there, and publish that at once."""
        self.progress = Progress(self._reporter, self._interval_s, bytes_total=bytes_total,
                                 chunk_count=chunk_count, file_name=file_name)
        # Which file a block belongs to is only worth looking up when there are several.
        self._files = files if len(files.files) > 1 else None
        self.resume(bytes_done, chunks_done)
        return self.progress

    def resume(self, bytes_done: int, chunks_done: int) -> None:
        """Go on from ``bytes_done`` bytes in ``chunks_done`` chunks (what the other side holds)."""
        progress = self._started()
        progress.bytes_done = bytes_done
        progress.chunks_done = chunks_done
        progress.publish_now()

    async def moved(self, n: int, chunk_index: int, offset: int) -> None:
        """``n`` bytes of chunk ``chunk_index``, from ``offset`` of the stream: paced, counted, reported."""
        await self._spender.spend(n)
        progress = self._started()
        if self._files is not None:
            index = self._files.index_at(offset)
            progress.at_file(index, self._files.files[index].path)
        progress.add(n, chunk_index)

    def burst_bytes(self) -> int | None:
        """The most one :meth:`moved` should carry now for the job's bandwidth limit to hold
        evenly; None while nothing limits the job (:meth:`Spender.burst_bytes`)."""
        return self._spender.burst_bytes()

    def take_back(self, n: int) -> None:
        """``n`` bytes reported by :meth:`moved` did not arrive: they will be moved again."""
        if n:
            self._started().add(-n)

    def chunk_done(self) -> None:
        self._started().chunk_finished()

    @property
    def chunks_done(self) -> int:
        return self._started().chunks_done

    @property
    def bytes_done(self) -> int:
        return self._started().bytes_done

    def sending_rate(self, min_window_s: float) -> float:
        """The job's rate lately (:meth:`Progress.sending_rate`); until it has one, the rate
        the daemon's last job in this direction moved at; 0 while neither is known."""
        own = self._started().sending_rate(min_window_s)
        if own > 0 or self._rates is None:
            return own
        return self._rates.last(self._direction)

    def finish(self) -> None:
        """The last event of the run, with its average rate; the link's rate remembered."""
        progress = self._started()
        progress.finish()
        if self._rates is not None:
            self._rates.remember(self._direction, progress.moving_rate(min_bytes=LinkRates.MIN_BYTES))

    def _started(self) -> Progress:
        assert self.progress is not None, "Accounting.begin first"
        return self.progress
