"""Trees of many small files and the server's request log: what the small-files test and bench share."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any


def make_tree(top: Path, count: int, seed: int = 10_000) -> dict[str, str]:
    """``count`` files of 1-4 KiB of random bytes below ``top``, in directories of 100.

    Returns path -> SHA-256, the paths relative to ``top``'s parent (``top.name/d000/f00000.dat``),
    as a directory upload of ``top`` names them.
    """
    rng = random.Random(seed)
    digests = {}
    for i in range(count):
        folder = top / f"d{i // 100:03}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        data = rng.randbytes(rng.randint(1024, 4096))
        (folder / f"f{i:05}.dat").write_bytes(data)
        digests[f"{top.name}/{folder.name}/f{i:05}.dat"] = hashlib.sha256(data).hexdigest()
    return digests


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file below ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def requests_since(log: Path, offset: int, settle: float = 0.2) -> list[dict[str, Any]]:
    """The server's request lines (event ``request``) written after byte ``offset`` of its log.

    A request's line is written once it has been answered, so this reads until the log
    has stopped growing for ``settle`` seconds.
    """
    seen = -1
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            tail = f.read()
        found = []
        for line in tail.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "request":
                found.append(entry)
        if len(found) == seen:
            return found
        seen = len(found)
        time.sleep(settle)
