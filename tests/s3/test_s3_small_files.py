"""Many small files on S3 storage: one asset, parts straight to the store, a handful of requests.

The server keeps its bytes in SeaweedFS (``?parts=direct``): the daemon PUTs the
packed stream's parts at presigned URLs and reads it back in presigned ranges, so
the server sees only the session's requests, and the store one PUT per part and one
GET per range. SQLite is enough here: the point is the storage, not the database.
"""

from __future__ import annotations

import time
from typing import Any

from smallfiles import make_tree, requests_since, tree
from stack import Stack

MiB = 1024 * 1024
FILES = 10_000


def test_ten_thousand_small_files_on_s3(seaweed: Any, s3_bucket: str, tmp_path_factory: Any) -> None:
    root = tmp_path_factory.mktemp("s3sf", numbered=True)
    with Stack(root) as stack:
        stack.start_server(storage=f"s3://{s3_bucket}/small-files", env=seaweed.env)
        stack.login(stack.add_user("small@example.org", scope="write"))
        stack.start_daemon()
        top = root / "frames"
        expected = make_tree(top, FILES)
        log = stack.root / "server.log"
        with stack.client() as client:
            project_id = client.create_project("small files").project_id
            before = log.stat().st_size
            started = time.monotonic()
            # 8 MiB parts: the ~24 MiB stream is 4 parts (S3: at least 5 MiB but the last).
            result = client.upload(top, title="frames", owner_type="project", owner_id=project_id, chunk_size_mb=8)
            up_s = time.monotonic() - started
            up = requests_since(log, before)
            before = log.stat().st_size
            started = time.monotonic()
            dl = client.download(result.asset_id, dest_dir=root / "out")
            down_s = time.monotonic() - started
            down = requests_since(log, before)
        assert len(dl.files) == FILES
        assert tree(root / "out") == expected
    targets = [r for r in up if r["method"] == "POST" and r["path"].endswith("/target")]
    print(f"\n{FILES:,} files on S3: upload {up_s:.2f} s, {len(up)} requests to the server "
          f"({len(targets)} part URLs, each one PUT at the store); download {down_s:.2f} s, "
          f"{len(down)} requests to the server")
    assert len(targets) == 4, targets  # one presigned URL per part, none per file
    assert not [r for r in up if r["method"] == "PUT"], "the parts went straight to the store"
    assert len(up) <= 20, up
    assert len(down) <= 10, down
