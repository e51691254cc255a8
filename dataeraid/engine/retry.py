"""The retry policy of a job's remote calls (the product's own, so written here rather
than borrowed): which failures are retried, how long to wait, and until when.

A transient failure (network, timeout, 5xx, 429) is retried without limit while the
job's deadline allows, after an exponential backoff with full jitter that honours
``Retry-After``. :class:`~dataeraid.engine.context.JobContext` runs the loop and
shows it in the job's state; this module holds what that loop decides with, and a
clock that tests replace (``RetryPolicy.wall``), so the policy is tested on a fake clock.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from dataeraid.config import Settings
from dataeraid.errors import DataeraiError, leaves
from dataeraid.redact import origin

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


def backoff_delay(attempt: int, settings: Settings, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * (2 ** min(attempt, 30)))
    delay = rng.uniform(settings.retry_base_s / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, 3600.0))
    return delay


@dataclass
class RetryPolicy:
    """How one job retries: the settings' backoff, its own jitter, and the wall clock its
    deadline and its next retry time (both Unix time) are read on."""

    settings: Settings
    rng: random.Random = field(default_factory=random.Random)
    #: Unix time now; tests pass one that follows Trio's (fake) clock.
    wall: Callable[[], float] = time.time

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` failed so far)."""
        return backoff_delay(attempt, self.settings, retry_after, self.rng)

    def check_deadline(self, deadline: float | None, cause: Exception) -> None:
        """``timeout`` once ``deadline`` (Unix time) has passed: retrying stops there."""
        if deadline is not None and self.wall() > deadline:
            raise DataeraiError("timeout", f"the job's deadline passed while retrying: {transient_reason(cause)}")


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
