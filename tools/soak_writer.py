"""A writer process for the watch scenario of ``make soak`` (tools/soak_watch.py): it keeps
writing into a watched folder, as an instrument or a pipeline does, until told to stop.

Why a process of its own: the watch must see a real writer, another process holding the file
open (the daemon asks the kernel who writes a file: a read lease, or /proc), exactly as on an
instrument PC. And why its bytes are a function of a seed: the soak checks every content the
server holds against every prefix of the file it came from, and the watch that deletes after
upload leaves no file to read, so the soak makes any prefix again from the seed.

``files`` mode writes files of varied sizes into subdirectories it creates as it goes: edge
sizes (0, 1, a block and a byte), small ones in one write, medium ones in a few bursts, and
large ones (3 to 6 MiB) in bursts with pauses of up to 2.5 s, longer than the ``stable:2s``
window and the ``close`` rule's settle time, all while the file stays open. Some small files
are written as ``NAME.part`` (a default exclude) and renamed into place; a few repeat an
earlier file's bytes under a new name (the repository deduplicates them).

``datasets`` mode writes run directories of a few frames each (one of them sometimes slowly,
held open) and then the sentinel, renamed into place last, as ``sentinel:NAME`` expects.

Each entry is recorded in the manifest (one JSON line, flushed and fsynced) only after its
files were closed: the manifest lists exactly what the writer finished, with the SHA-256 it
computed over the bytes it wrote. The writer stops between entries once the stop file exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

KiB, MiB = 1024, 1024 * 1024
#: Content is made in blocks of this size: each begins with its index, so no two blocks of a file are alike.
BLOCK = 64 * KiB
#: Sizes around the edges a reader gets wrong: empty, one byte, a block less, exactly and one more.
EDGE_SIZES = (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, MiB, MiB + 1)
#: The longest pause inside a large file; above the watch's 2 s windows on purpose.
LONGEST_PAUSE_S = 2.5


def content(seed: int, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of the entry made from ``seed``, in blocks. A function of the seed alone,
    and ``content(seed, n)`` is a prefix of ``content(seed, m)`` for ``n < m``."""
    base = random.Random(seed).randbytes(BLOCK)
    index, left = 0, size
    while left > 0:
        block = (index.to_bytes(8, "little") + base[8:])[:min(left, BLOCK)]
        yield block
        left -= len(block)
        index += 1


def digest(seed: int, size: int) -> str:
    """SHA-256 of ``content(seed, size)``."""
    h = hashlib.sha256()
    for block in content(seed, size):
        h.update(block)
    return h.hexdigest()


class Writer:
    def __init__(self, root: Path, name: str, manifest: Path, stop: Path, seed: int) -> None:
        self.root = root
        self.name = name
        self.stop = stop
        self.rng = random.Random(seed)
        self.seed = seed * 1_000_003
        self.count = 0
        self.made: list[tuple[int, int]] = []  # (seed, size) of finished files, for repeats
        self.manifest: IO[str] = open(manifest, "a", encoding="utf-8")  # noqa: SIM115 - closed in run()

    def stopped(self) -> bool:
        return self.stop.exists()

    def record(self, entry: dict[str, Any]) -> None:
        entry["closed_at"] = time.time()
        self.manifest.write(json.dumps(entry) + "\n")
        self.manifest.flush()
        os.fsync(self.manifest.fileno())

    def write_file(self, path: Path, seed: int, size: int, bursts: int, pause: tuple[float, float]) -> str:
        """Write ``content(seed, size)`` to ``path`` in about ``bursts`` writes with pauses between them,
        the file open throughout; its SHA-256 once closed."""
        h = hashlib.sha256()
        step = max(1, -(-size // max(1, bursts)))
        with open(path, "wb") as f:
            pending = bytearray()
            for block in content(seed, size):
                pending += block
                while len(pending) >= step:
                    chunk, pending = bytes(pending[:step]), pending[step:]
                    self._burst(f, h, chunk, pause)
            if pending:
                self._burst(f, h, bytes(pending), pause)
        return h.hexdigest()

    def _burst(self, f: IO[bytes], h: Any, chunk: bytes, pause: tuple[float, float]) -> None:
        f.write(chunk)
        f.flush()  # into the kernel, so the size a stat sees grows burst by burst
        h.update(chunk)
        if pause[1] > 0:
            time.sleep(self.rng.uniform(*pause))

    def next_seed(self) -> int:
        self.count += 1
        return self.seed + self.count

    # --- files ---------------------------------------------------------------------------

    def files(self) -> None:
        directory = self.root / self.name
        dirs = 0
        while not self.stopped():
            if self.count % 12 == 0:
                dirs += 1
                directory = self.root / self.name / f"d{dirs:02}"
                if self.rng.random() < 0.3:
                    directory = directory / "deep"
                directory.mkdir(parents=True, exist_ok=True)
            seed = self.next_seed()
            rel_dir = directory.relative_to(self.root).as_posix()
            name = f"f{self.count:04}.bin"
            roll = self.rng.random()
            bursts, pause, renamed = 1, (0.0, 0.0), False
            if roll < 0.05 and self.made:
                seed, size = self.rng.choice(self.made)  # the same bytes again, under a new name
            elif roll < 0.15:
                size = self.rng.choice(EDGE_SIZES)
            elif roll < 0.65:
                size = self.rng.randint(1, 256 * KiB)
                renamed = self.rng.random() < 0.3
            elif roll < 0.9:
                size = self.rng.randint(256 * KiB, 2 * MiB)
                bursts, pause = self.rng.randint(2, 4), (0.05, 0.5)
            else:
                size = self.rng.randint(3 * MiB, 6 * MiB)
                bursts, pause = self.rng.randint(5, 10), (0.2, LONGEST_PAUSE_S)
            path = directory / name
            if renamed:
                sha = self.write_file(path.with_name(name + ".part"), seed, size, 1, (0.0, 0.0))
                os.rename(path.with_name(name + ".part"), path)
            else:
                sha = self.write_file(path, seed, size, bursts, pause)
            self.made.append((seed, size))
            self.record({"kind": "file", "path": f"{rel_dir}/{name}", "seed": seed, "size": size, "sha256": sha})
            time.sleep(self.rng.uniform(1.0, 4.0))

    # --- datasets -----------------------------------------------------------------------

    def datasets(self, sentinel: str) -> None:
        runs = 0
        while not self.stopped():
            runs += 1
            parent = self.root / self.name
            if self.rng.random() < 0.3:
                parent = parent / f"day{runs // 5}"
            run = parent / f"run_{runs:04}"
            run.mkdir(parents=True)
            files = []
            slow = self.rng.randrange(4) if self.rng.random() < 0.4 else -1
            for i in range(self.rng.randint(1, 4)):
                seed = self.next_seed()
                size = self.rng.choice(EDGE_SIZES[:3]) if self.rng.random() < 0.2 else self.rng.randint(1, 768 * KiB)
                bursts, pause = (self.rng.randint(3, 6), (0.2, LONGEST_PAUSE_S)) if i == slow else (1, (0.0, 0.1))
                name = f"frame_{i:03}.raw"
                sha = self.write_file(run / name, seed, size, bursts, pause)
                files.append({"name": name, "seed": seed, "size": size, "sha256": sha})
            # The sentinel last, renamed into place: the dataset is complete the moment it appears.
            seed = self.next_seed()
            sha = self.write_file(run / f"{sentinel}.part", seed, 16, 1, (0.0, 0.0))
            os.rename(run / f"{sentinel}.part", run / sentinel)
            files.append({"name": sentinel, "seed": seed, "size": 16, "sha256": sha})
            self.record({"kind": "dataset", "path": run.relative_to(self.root).as_posix(), "files": files})
            time.sleep(self.rng.uniform(2.0, 6.0))

    def run(self, mode: str, sentinel: str) -> None:
        try:
            if mode == "files":
                self.files()
            else:
                self.datasets(sentinel)
        finally:
            self.manifest.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the watched folder")
    parser.add_argument("--name", required=True, help="this writer's subdirectory of the root")
    parser.add_argument("--manifest", type=Path, required=True, help="where finished entries are recorded")
    parser.add_argument("--stop", type=Path, required=True, help="stop once this file exists")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mode", choices=["files", "datasets"], default="files")
    parser.add_argument("--sentinel", default="DONE")
    args = parser.parse_args()
    Writer(args.root, args.name, args.manifest, args.stop, args.seed).run(args.mode, args.sentinel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
