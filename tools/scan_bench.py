"""How long a watch folder's scan takes and how much memory it holds, as the tree grows.

    .venv/bin/python tools/scan_bench.py                 # 10,000 and 100,000 files, 10 a directory
    .venv/bin/python tools/scan_bench.py --files 1000000 --dir /data/tmp

Builds each tree (empty files, ``--per-dir`` to a directory, directories 100 to a
parent) in a temporary directory, walks it once to warm the page cache and the
interpreter, then measures three more walks of it with ``dataeraid.watch.scan.walk``
dropping each batch as it comes, as the watch does: the wall time (the best of
three, without tracing); the growth of the process's RSS from before a walk to its
highest point during it (sampled at every batch); the tracemalloc peak over a walk
(what the walk itself allocates); and, for comparison, the tracemalloc peak of
keeping every entry in one list, as a walk that returned the whole tree would. The figures go into the module docstring
of dataeraid/watch/scan.py. Memory that stays flat while the files grow tenfold is
the point.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

from dataeraid.watch.excludes import DEFAULT_EXCLUDES, Excludes
from dataeraid.watch.scan import Entry, walk

MiB = 1 << 20


def make_tree(top: Path, files: int, per_dir: int) -> int:
    """``files`` empty files below ``top``, ``per_dir`` to a directory, 100 directories to a
    parent; returns the number of directories made."""
    dirs = (files + per_dir - 1) // per_dir
    for d in range(dirs):
        folder = top / f"p{d // 100:04}" / f"d{d % 100:02}"
        folder.mkdir(parents=True)
        for f in range(min(per_dir, files - d * per_dir)):
            os.close(os.open(folder / f"f{f:03}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
    return dirs


def count(root: Path, excludes: Excludes) -> int:
    return sum(isinstance(item, Entry) for batch in walk(str(root), excludes) for item in batch)


def measure(root: Path, excludes: Excludes, expected: int) -> dict[str, float]:
    assert count(root, excludes) == expected  # the warm-up, and a check that the walk saw them all
    times = []
    for _ in range(3):
        started = time.perf_counter()
        count(root, excludes)
        times.append(time.perf_counter() - started)

    process = psutil.Process()
    before = process.memory_info().rss
    highest = before
    for _batch in walk(str(root), excludes):
        highest = max(highest, process.memory_info().rss)

    tracemalloc.start()
    count(root, excludes)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    # For comparison: what keeping the whole tree's entries (as os.walk-style lists do) would hold.
    kept = [item for batch in walk(str(root), excludes) for item in batch]
    _, kept_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return {"seconds": min(times), "traced_peak": traced_peak, "rss_growth": highest - before, "kept": kept_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--per-dir", type=int, default=10)
    parser.add_argument("--dir", help="where to build the trees (a temporary directory below it)")
    args = parser.parse_args()
    excludes = Excludes(DEFAULT_EXCLUDES)
    print("| tree | walk | per file | tracemalloc peak | RSS growth | all entries kept |")
    print("|---|---|---|---|---|---|")
    for files in args.files:
        top = Path(tempfile.mkdtemp(prefix="scan-bench-", dir=args.dir))
        try:
            dirs = make_tree(top, files, args.per_dir)
            figures = measure(top, excludes, files)
        finally:
            shutil.rmtree(top)
        print(f"| {files:,} files in {dirs:,} director{'y' if dirs == 1 else 'ies'} | {figures['seconds']:.2f} s "
              f"| {figures['seconds'] / files * 1e6:.0f} µs | {figures['traced_peak'] / MiB:.2f} MiB "
              f"| {figures['rss_growth'] / MiB:.1f} MiB | {figures['kept'] / MiB:.1f} MiB |", flush=True)


if __name__ == "__main__":
    main()
