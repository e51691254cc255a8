"""What the engines' unit tests put in place of a job's context: retrying and the parts of a
``JobContext`` that talk to the world, as plain objects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import trio

from dataeraid.errors import TransientError

T = TypeVar("T")


async def retrying(_what: str, attempt: Callable[[], Awaitable[T]], *, pause: float = 0.01) -> T:
    """``JobContext.retrying`` without backoff or deadline: transient errors are retried."""
    while True:
        try:
            return await attempt()
        except TransientError:
            await trio.sleep(pause)


async def nothing(*_args: Any) -> None:
    return None


def job_context(remote: Any, settings: dict[str, Any], **fields: Any) -> SimpleNamespace:
    """A job context with ``remote``, ``settings`` and no-op bandwidth, store and log; ``fields``
    replace or add attributes (``store=...``, ``job=...``)."""
    context = SimpleNamespace(
        job_id="job_1",
        settings=SimpleNamespace(**settings),
        remote=remote,
        retrying=retrying,
        bandwidth=SimpleNamespace(spend=nothing),
        store=SimpleNamespace(checkpoint=nothing, checkpoint_many=nothing),
        log=SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None),
    )
    for name, value in fields.items():
        setattr(context, name, value)
    return context
