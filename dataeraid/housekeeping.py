"""The daemon's hourly housekeeping: what keeps a queue that runs for months the same size.

Each round, in order (docs/reliability.md, "Bounded growth"):

1. stored events older than ``event_retention_days`` go, 1,000 a transaction;
2. finished jobs whose end a client saw more than ``job_retention_days`` ago go, with their
   checkpoints, 1,000 a transaction (never one a client follows, nor one a watched file still
   waits on: ``Store.prune_jobs_batch``);
3. the pages that freed are given back to the filesystem, ``VACUUM_STEP_PAGES`` a transaction
   (``Store.vacuum``), and the WAL is truncated;
4. the memory glibc's malloc holds free is given back to the system (:func:`trim_malloc`).

Every transaction is short, so the store's one thread serves RPCs and jobs between them. The
watch ledger prunes its own rows on its own hour (``WatchManager``); its freed pages go back in
the next round here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import trio

from dataeraid import log
from dataeraid.config import LiveSettings, Settings
from dataeraid.jobs import Jobs

_log = log.get("dataeraid.housekeeping")

DAY_S = 86400.0


@dataclass(frozen=True)
class Round:
    """What one round did and what it left: rows deleted, events kept, pages given back, the file's size."""

    events_pruned: int
    jobs_pruned: int
    events_kept: int
    pages_freed: int
    file_bytes: int


async def tidy(jobs: Jobs, settings: Settings, now: float | None = None) -> Round:
    """One round of housekeeping at ``now`` (default: the clock)."""
    now = time.time() if now is None else now
    store = jobs.store
    events_pruned = await store.prune_events(now - settings.event_retention_days * DAY_S)
    jobs_pruned = await jobs.prune_finished(now - settings.job_retention_days * DAY_S)
    pages_freed = await store.vacuum()
    events_kept = await store.count_events()
    space = await store.transaction(store.space)
    return Round(events_pruned, jobs_pruned, events_kept, pages_freed, space["page_count"] * space["page_size"])


@functools.cache
def glibc() -> Any | None:
    """The C library when it is glibc (whose malloc keeps freed memory), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's alone
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


#: mallopt's M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def one_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main arena; whether it could (False off glibc).

    glibc gives threads arenas of their own so that they need not wait on one lock, but nearly
    every malloc in CPython is made holding the GIL, so the daemon's worker threads gain nothing
    from them; what they cost is that each keeps the free space at its top, which ``malloc_trim``
    does not give back (it trims the main arena's top only): a 1 MiB chunk buffer freed in a new
    arena is a 1 MiB step of RSS. Called at start, before any worker thread. An operator's own
    ``MALLOC_ARENA_MAX`` is left as it is.
    """
    libc = glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, 1))


def trim_malloc() -> bool:
    """Give the pages glibc's malloc holds free back to the system; whether it gave any (False off glibc).

    Why: the engines' 1 MiB chunk buffers come from malloc's heap (glibc raises its mmap threshold
    once a buffer that size is freed), and a burst (the retries after a network cut or a server
    restart, several parts read again at once) leaves free space there, at the top and between
    what stays, that glibc keeps for reuse: the daemon's RSS rose by such steps while the Python
    objects (tracemalloc) and the bytes malloc had in use (mallinfo2) stayed flat
    (docs/reliability.md, "make soak-long"). ``malloc_trim(0)`` gives back every whole free page
    and the main arena's top (the only arena, :func:`one_malloc_arena`), in about a millisecond.
    """
    libc = glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


async def serve_housekeeping(jobs: Jobs, live: LiveSettings) -> None:
    """At start and then every ``housekeeping_interval_s``: a round of :func:`tidy`, logged when it did
    something (so a daemon whose queue is tidy says nothing). Each round reads the settings in force,
    so a reload's retention applies from the next round."""
    while True:
        settings = live.current
        done = await tidy(jobs, settings)
        trim_malloc()
        if done.events_pruned or done.jobs_pruned or done.pages_freed:
            _log.info("housekeeping", events_pruned=done.events_pruned, jobs_pruned=done.jobs_pruned,
                      events_kept=done.events_kept, pages_freed=done.pages_freed, queue_bytes=done.file_bytes)
        await trio.sleep(settings.housekeeping_interval_s)
