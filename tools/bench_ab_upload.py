"""Uploads on S3, two versions of the daemon and server side by side in one run (an A/B).

One SeaweedFS; per version a server on a bucket of its own and a daemon (16 MiB parts, 4 at
once, as the bench's S3 section), each started with that version's sources first on
``PYTHONPATH``. Rounds alternate which version goes first. Each round uploads one large file
and the small-file trees, with content changed each round so that nothing deduplicates. The
figures: wall seconds, and the daemon's, the server's and the store's CPU seconds over each
upload (``tools/bench_s3.py``'s ``timed``).

    .venv/bin/python tools/bench_ab_upload.py --before /work/wt/X-before --after . --runs 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_s3 import timed
from seaweed import Seaweed
from smallfiles import make_tree, requests_since
from stack import Stack, make_file

MiB = 1024 * 1024


def _stack(root: Path, sources: Path, seaweed: Seaweed, bucket: str, chunk: int, concurrency: int) -> Stack:
    sources = sources.resolve()
    path = os.pathsep.join(str(sources / sub) for sub in ("", "client", "server"))
    stack = Stack(root, daemon_config={"default_chunk_size": chunk, "parts_per_job": concurrency},
                  environ={**os.environ, "PYTHONPATH": path})
    stack.start_server(storage=f"s3://{bucket}/dataerai", env=seaweed.env)
    stack.login(stack.add_user("bench@example.org"))
    stack.start_daemon()
    return stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the A version's source tree")
    parser.add_argument("--after", type=Path, required=True, help="the B version's source tree")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, nargs="*", default=[2000, 10000])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="work here and keep it (the logs), instead of a temporary directory")
    args = parser.parse_args()
    chunk, concurrency = 16 * MiB, 4
    versions = {"before": args.before, "after": args.after}
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    #: Speculative deduplication requests (challenge, proof) the server logged per upload.
    dedup: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        root.mkdir(parents=True, exist_ok=True)
        big = make_file(root / "big.bin", args.size_mib * MiB, seed=11)
        trees = {n: root / f"tree{n}" for n in args.files}
        for n, top in trees.items():
            make_tree(top, n)
        seaweed = Seaweed(root / "weed")
        (root / "weed").mkdir()
        seaweed.start()
        tag = secrets.token_hex(3)
        stacks: dict[str, Stack] = {}
        projects: dict[str, str] = {}
        try:
            for name, sources in versions.items():
                bucket = seaweed.create_bucket(f"ab-{name}-{tag}")
                stacks[name] = _stack(root / name, sources, seaweed, bucket, chunk, concurrency)
                with stacks[name].client() as client:
                    projects[name] = client.create_project("bench").project_id
            assert seaweed.process is not None
            for run in range(args.runs):
                order = list(versions) if run % 2 == 0 else list(reversed(versions))
                for name in order:
                    stack = stacks[name]
                    assert stack.daemon is not None and stack.server is not None
                    pids = {"daemon": stack.daemon.pid, "server": stack.server.pid}
                    workloads: list[tuple[str, Path]] = [("large", big), *((f"small{n}", t) for n, t in trees.items())]
                    for workload, source in workloads:
                        # New content each upload: nothing may deduplicate.
                        first = source if source.is_file() else min(source.rglob("*.dat"))
                        with open(first, "r+b") as f:
                            f.write(f"{name} {run} {time.time_ns()}".encode().ljust(64, b"."))
                        since = (stack.root / "server.log").stat().st_size
                        with stack.client() as client, timed(pids, seaweed.process.pid) as t:
                            done = client.upload(source, title=f"{workload} {run}", owner_type="project",
                                                 owner_id=projects[name], chunk_size_mb=chunk // MiB)
                        if done.deduplicated:
                            raise RuntimeError(f"{name} {workload}: deduplicated; the content was meant to be new")
                        key = f"{name}_{workload}"
                        dedup.setdefault(key, []).append(sum(
                            1 for r in requests_since(stack.root / "server.log", since) if "/dedup" in r["path"]))
                        seconds.setdefault(key, []).append(t.seconds)
                        for process, value in t.cpu.items():
                            cpu.setdefault(f"{key}_{process}", []).append(value)
        finally:
            for stack in stacks.values():
                stack.close()
            seaweed.stop()
    size = args.size_mib * MiB
    report: dict[str, Any] = {"runs": args.runs, "size_bytes": size, "files": args.files,
                              "runs_s": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
                              "median_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
                              "dedup_requests": dedup,
                              "median_cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()}}
    med_s, med_cpu = report["median_s"], report["median_cpu_s"]
    for name in versions:
        report[f"{name}_large_mb_s"] = round(size / 1e6 / med_s[f"{name}_large"], 1)
        for process in ("daemon", "server", "store"):
            report[f"{name}_large_{process}_cpu_s_per_gb"] = round(med_cpu[f"{name}_large_{process}"] / (size / 1e9), 2)
        for n in args.files:
            report[f"{name}_small{n}_files_s"] = round(n / med_s[f"{name}_small{n}"])
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for key, value in report.items():
            print(key, value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
