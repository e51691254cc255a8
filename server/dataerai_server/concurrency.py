"""Small concurrency helpers shared by the storage and the routes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@contextmanager
def unwrap_single() -> Iterator[None]:
    """Re-raise a task group's exception group that holds one exception as that exception.

    Task groups always raise groups; where a task group is an implementation detail
    (a pump between the event loop and a worker thread), callers should still be able
    to write ``except ChecksumMismatch``. Groups of several exceptions pass unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
