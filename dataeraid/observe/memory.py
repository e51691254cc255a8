"""An opt-in record of where the daemon's memory is, to tell a leak from an allocator keeping pages.

Off unless ``DATAERAI_MEMORY_TRACE`` names a directory. Then tracemalloc starts
(``DATAERAI_MEMORY_TRACE_FRAMES`` frames a traceback, default 8; 0 leaves it off: it costs about as
much memory again as the heap, and time on every allocation) and every
``DATAERAI_MEMORY_TRACE_INTERVAL_S`` (default 60) the daemon appends one JSON line to ``memory.jsonl``
there and dumps ``snapshot-PID-NNNN.tracemalloc`` beside it (``python -m dataeraid.observe.memory
FIRST LAST`` prints what grew between two), and glibc's ``malloc_info`` as ``malloc-PID-NNNN.xml``.
A line holds the layers one inside the other:

    rss, anon, file     /proc/self/smaps_rollup (kB, as bytes): the process's resident pages
    traced              tracemalloc's total: the bytes Python objects hold
    pymalloc_arenas     CPython's small-object arenas (1 MiB each on 3.11), from sys._debugmallocstats
                        (None under tracemalloc, which wraps the allocator)
    malloc_*            glibc's mallinfo2 over all its arenas: in use, free but kept, mmapped
    sqlite_used         of malloc's in use, what SQLite holds (sqlite3_memory_used: its page cache,
                        statements, schema), None where the library cannot be asked
    threads             the process's threads (/proc/self/task): each one may have its own malloc arena

So anon growing with ``traced`` is Python objects kept (a leak: the snapshots name it); anon growing with
``malloc_free`` is glibc holding freed pages; with ``pymalloc_arenas``, partly used arenas.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import trio

from dataeraid import log
from dataeraid.housekeeping import glibc

_log = log.get("dataeraid.memory")

ENV_DIR = "DATAERAI_MEMORY_TRACE"
ENV_INTERVAL = "DATAERAI_MEMORY_TRACE_INTERVAL_S"
ENV_FRAMES = "DATAERAI_MEMORY_TRACE_FRAMES"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def smaps_rollup() -> dict[str, int]:
    """Rss, Anonymous and the file-backed rest, in bytes, from /proc/self/smaps_rollup ({} where there is none)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    except OSError:
        return {}
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return {"rss": rss, "anon": anon, "file": rss - anon}


def pymalloc_arenas() -> int | None:
    """CPython's small-object arenas in use, read from sys._debugmallocstats (which prints to fd 2 only)."""
    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", out.read())
    return int(found.group(1).replace(",", "")) if found else None


def sqlite_memory_used() -> int | None:
    """The bytes SQLite's allocator holds now (all connections of the process): the library
    the ``sqlite3`` module is linked with, asked by its soname, is the one already loaded."""
    import ctypes.util
    import sqlite3  # noqa: F401  (loads the library, if it was not yet)

    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        library.sqlite3_memory_used.restype = ctypes.c_int64
        return int(library.sqlite3_memory_used())
    except (OSError, AttributeError):
        return None


def sample() -> dict[str, Any]:
    """One line of memory.jsonl: the layers of the daemon's memory now."""
    line: dict[str, Any] = {"time": time.time(), **smaps_rollup()}
    line["traced"] = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
    line["pymalloc_arenas"] = pymalloc_arenas()
    libc = glibc()
    if libc is not None and hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        line.update(malloc_used=info.uordblks, malloc_free=info.fordblks, malloc_mmapped=info.hblkhd,
                    malloc_heap=info.arena, malloc_free_chunks=info.ordblks)
    line["sqlite_used"] = sqlite_memory_used()
    try:
        line["threads"] = len(os.listdir("/proc/self/task"))
    except OSError:
        line["threads"] = None
    return line


def record(directory: Path, n: int) -> None:
    """The ``n``-th line of ``memory.jsonl`` in ``directory``, and a tracemalloc snapshot when it runs."""
    line = {**sample(), "pid": os.getpid(), "n": n}
    with open(directory / "memory.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    libc = glibc()
    if libc is not None:  # glibc's own account, arena by arena, free chunks by size (XML)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        stream = libc.fopen(os.fsencode(directory / f"malloc-{os.getpid()}-{n:04}.xml"), b"w")
        if stream:
            libc.malloc_info(0, stream)
            libc.fclose(stream)
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"snapshot-{os.getpid()}-{n:04}.tracemalloc"))


async def serve_memory_trace(directory: Path, interval_s: float) -> None:
    """Every ``interval_s``: :func:`record`, off the Trio thread (it writes files)."""
    await trio.to_thread.run_sync(partial(directory.mkdir, parents=True, exist_ok=True))
    _log.warning("memory trace on: tracemalloc costs memory and time", directory=str(directory),
                 interval_s=interval_s)
    n = 0
    while True:
        await trio.to_thread.run_sync(record, directory, n)
        n += 1
        await trio.sleep(interval_s)


def configured() -> tuple[Path, float] | None:
    """The trace's directory and interval from the environment, tracemalloc started; None when it is off."""
    where = os.environ.get(ENV_DIR)
    if not where:
        return None
    frames = int(os.environ.get(ENV_FRAMES, "8"))
    if frames > 0:  # 0: the layers only, without tracemalloc's cost
        tracemalloc.start(frames)
    return Path(where), float(os.environ.get(ENV_INTERVAL, "60"))


def compare(first: Path, last: Path, top: int = 15) -> list[str]:
    """What grew between two snapshots, grouped by traceback, largest first (``python -m`` this module)."""
    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    lines = []
    for stat in after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+6} blocks (now {stat.size / 1024:.1f} KiB)")
        lines.extend(f"    {frame}" for frame in stat.traceback.format(limit=8))
    return lines


if __name__ == "__main__":
    print("\n".join(compare(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 15)))
