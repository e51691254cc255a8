"""What the engines' unit tests put in place of a job's context: retrying without backoff,
a real :class:`Accounting` that records its events, and no-op store and log. The
repository they talk to is ``fake_repository.FakeRepository``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import trio

from dataeraid.engine.accounting import STREAMS_IN_MEMORY_BYTES, Accounting, MemoryBudget
from dataeraid.errors import TransientError
from dataeraid.fileset import FileSet
from dataeraid.observe.tally import Tally

T = TypeVar("T")


async def retrying(_what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``JobContext.retrying`` without backoff or deadline: transient errors are retried at once."""
    while True:
        try:
            return await attempt()
        except TransientError:
            await trio.lowlevel.checkpoint()


async def nothing(*_args: Any, **_fields: Any) -> None:
    return None


class Unlimited:
    """A bandwidth share that never makes a spend wait."""

    async def spend(self, n: int) -> None:
        return None

    def burst_bytes(self) -> int | None:
        return None


class Reporter:
    """Where a stand-in job's progress goes: every event it would publish, kept."""

    def __init__(self) -> None:
        self.state = "running"
        self.events: list[dict[str, Any]] = []
        self.live = (0, 0)

    def note_progress(self, bytes_done: int, chunks_done: int) -> None:
        self.live = (bytes_done, chunks_done)

    def publish_progress(self, **fields: Any) -> None:
        self.events.append(fields)


def job_context(remote: Any, settings: dict[str, Any], **fields: Any) -> SimpleNamespace:
    """A job context with ``remote``, ``settings``, an accounting without a limit, and no-op
    store and log; ``fields`` replace or add attributes (``store=...``, ``job=...``)."""
    job = fields.pop("job", {})
    reporter = Reporter()
    context = SimpleNamespace(
        job_id="job_1",
        job=job,
        settings=SimpleNamespace(**settings),
        remote=remote,
        retrying=retrying,
        reporter=reporter,
        accounting=Accounting(reporter, 0.0, Unlimited(), Tally(), str(job.get("kind", "upload"))),
        memory=MemoryBudget(STREAMS_IN_MEMORY_BYTES),
        store=SimpleNamespace(checkpoint=nothing, checkpoint_many=nothing),
        save=nothing,
        log=SimpleNamespace(debug=lambda *a, **k: None, info=lambda *a, **k: None, warning=lambda *a, **k: None),
    )
    for name, value in fields.items():
        setattr(context, name, value)
    return context


def begun(ctx: SimpleNamespace, files: FileSet, chunk_count: int) -> SimpleNamespace:
    """``ctx`` with its accounting begun on ``files``, as an engine begins it."""
    ctx.accounting.begin(files.size, chunk_count, files, files.files[0].path if files.files else "")
    return ctx
