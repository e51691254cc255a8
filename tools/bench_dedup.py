"""Deduplication figures (docs/benchmarks.md#deduplication): one file uploaded four ways.

    .venv/bin/python tools/bench_dedup.py [--size-mib 1024] [--limit-mib-s 100]

1. the file, first time (nothing held: sent whole);
2. a copy of it (another inode, so not in the daemon's digest cache): deduplicated
   speculatively once the whole-file hash is done;
3. the copy again (unchanged: the digest cache proves possession up front);
4. another file of the same size (the speculative proof is refused and sending goes on).

For each: wall time from enqueue to completion, and the part bytes the server read
(the session's ``bytes_received``). Default daemon settings (64 MiB parts, 4 in flight).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from stack import Stack, make_file

MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--limit-mib-s", type=int, default=0, help="the daemon's bandwidth limit (0: none)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    config = {"bandwidth_limit_bps": args.limit_mib_s * MiB} if args.limit_mib_s else None
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp, \
            Stack(Path(tmp) / "st", daemon_config=config) as stack:
        root = Path(tmp)
        stack.start_server()
        stack.login(stack.add_user("ada@example.org", scope="write"))
        stack.start_daemon()
        with stack.client() as client:
            project = client.create_project("bench").project_id
        original = make_file(root / "a.bin", size, seed=1)
        copy = root / "copy.bin"
        shutil.copyfile(original, copy)
        other = make_file(root / "b.bin", size, seed=2)
        limit = f", limit {args.limit_mib_s} MiB/s" if args.limit_mib_s else ""
        print(f"{args.size_mib} MiB, 64 MiB parts, 4 in flight, loopback{limit}")
        for label, source in (("first upload", original), ("a copy (speculative)", copy),
                              ("the copy again (digest cache)", copy), ("another file, same size", other)):
            with stack.client() as client:
                started = time.perf_counter()
                job = client.upload(source, title=label, owner_type="project", owner_id=project, wait=False)
                done = client.wait(job.job_id, timeout_s=3600)
                elapsed = time.perf_counter() - started
            assert done.state == "completed", done
            with stack.api() as api:
                received = api.get(f"/uploads/{done.upload_id}").json()["bytes_received"]
            hashed = [line for line in (stack.root / "daemon.log").read_text().splitlines()
                      if "stream hashed" in line and done.job_id in line]
            print(f"  {label:32} {elapsed:6.2f} s   part bytes sent {received / MiB:7.1f} MiB"
                  f"   deduplicated {done.deduplicated}")
            if hashed:
                print(f"    {hashed[-1]}")


if __name__ == "__main__":
    main()
