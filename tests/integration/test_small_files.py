"""Many small files through real processes: a directory costs a few requests, not one per file.

A directory upload is one content whose files lie end to end in one byte stream
(``dataeraid/fileset.py``), cut into parts like any file; the download reads that
stream back in ranges. So the number of HTTP requests depends on the total size and
the part size, not on the number of files. Counted from the server's request log,
one JSON line per request.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from smallfiles import make_tree, requests_since, tree

MiB = 1024 * 1024
FILES = 10_000


def test_ten_thousand_small_files_take_a_handful_of_requests(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack()
    top = tmp_path / "frames"
    expected = make_tree(top, FILES)
    total = sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
    log = stack.root / "server.log"
    with stack.client() as client:
        before = log.stat().st_size
        started = time.monotonic()
        # One 64 MiB part holds the whole ~24 MiB stream.
        result = client.upload(top, title="frames", owner_type="project", owner_id=stack.project_id,
                               chunk_size_mb=64)
        up_s = time.monotonic() - started
        up = requests_since(log, before)

        before = log.stat().st_size
        started = time.monotonic()
        dl = client.download(result.asset_id, dest_dir=tmp_path / "out")
        down_s = time.monotonic() - started
        down = requests_since(log, before)

    assert len(dl.files) == FILES
    assert tree(tmp_path / "out") == expected, "every file comes back with its bytes"
    with stack.api() as api:
        asset = api.get(f"/assets/{result.asset_id}").json()
        one = api.get(f"/assets/{result.asset_id}/files", params={"path": "frames/d042/f04217.dat"}).json()
    assert one["sha256"] == expected["frames/d042/f04217.dat"]
    assert asset["asset_id"] == result.asset_id

    def summary(lines: list[dict[str, Any]]) -> str:
        counts: dict[str, int] = {}
        for r in lines:
            path = "/".join("{}" if re.match(r"^([a-z]+_|\d+$)", seg) else seg for seg in r["path"].split("/"))
            key = f"{r['method']} {path.removeprefix('/api/v1')}"
            counts[key] = counts.get(key, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))

    print(f"\n{FILES:,} files, {total / MiB:.1f} MiB: upload {up_s:.2f} s with {len(up)} requests ({summary(up)}); "
          f"download {down_s:.2f} s with {len(down)} requests ({summary(down)})")
    # One content: a session, one part, a completion; one download target and a range.
    # Far below one request per file; a little room for retries and status reads.
    assert len(up) <= 20, up
    assert len(down) <= 20, down
    parts = [r for r in up if r["method"] == "PUT" and "/parts/" in r["path"]]
    assert len(parts) == 1, parts
