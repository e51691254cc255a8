"""A/B of the daemon's download in one run: CPU s/GB and MB/s of two source trees (say a
worktree at main and a branch), each on S3 (SeaweedFS, presigned range GETs) and on the
server's own directory storage (loopback), rounds interleaved, the order alternating,
median of the rounds (docs/benchmarks.md, "Range GETs without httpx").

    .venv/bin/python tools/ab_download.py --before /work/wt/x-before --after /work/wt/x --runs 5 DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_s3 import cpu_seconds, group_cpu_seconds
from seaweed import Seaweed
from stack import Stack, make_file

MiB = 1 << 20
CHUNK = 16 * MiB
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--before", required=True, help="a source tree (its daemon and server run with it on PYTHONPATH)")
parser.add_argument("--after", required=True)
parser.add_argument("--runs", type=int, default=5)
parser.add_argument("--size-mib", type=int, default=256)
parser.add_argument("root", type=Path, help="an empty directory for the stacks and the file")
args = parser.parse_args()
VARIANTS = {"before": args.before, "after": args.after}
SIZE = args.size_mib * MiB
RUNS = args.runs
root = args.root
root.mkdir(parents=True, exist_ok=True)


def env_for(tree: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree}:{tree}/client:{tree}/server"}


source = make_file(root / "bench.bin", SIZE, seed=11)
seaweed = Seaweed(root / "weed")
(root / "weed").mkdir(parents=True, exist_ok=True)
seaweed.start()
stacks: dict[tuple[str, str], Stack] = {}
assets: dict[tuple[str, str], str] = {}
results: dict[str, list[dict[str, float]]] = {}
try:
    for storage in ("s3", "loopback"):
        for variant, tree in VARIANTS.items():
            stack = Stack(root / f"{storage}-{variant}", environ=env_for(tree),
                          daemon_config={"default_chunk_size": CHUNK, "parts_per_job": 4})
            if storage == "s3":
                bucket = seaweed.create_bucket(f"ab-{variant}")
                stack.start_server(storage=f"s3://{bucket}/dataerai", env=seaweed.env)
            else:
                stack.start_server()
            stack.login(stack.add_user("bench@example.org"))
            stack.start_daemon()
            stacks[(storage, variant)] = stack
            with stack.client() as client:
                project = client.create_project("ab").project_id
                assets[(storage, variant)] = client.upload(source, title="ab", owner_type="project",
                                                           owner_id=project, chunk_size_mb=CHUNK // MiB).asset_id
    for run in range(RUNS):
        for storage in ("s3", "loopback"):
            order = list(VARIANTS) if run % 2 == 0 else list(VARIANTS)[::-1]
            for variant in order:
                stack = stacks[(storage, variant)]
                assert stack.daemon is not None and stack.server is not None
                dest = root / f"down-{storage}-{variant}"
                dest.mkdir(exist_ok=True)
                d0, s0 = cpu_seconds(stack.daemon.pid), cpu_seconds(stack.server.pid)
                w0 = group_cpu_seconds(seaweed.process.pid) if seaweed.process else 0.0
                t0 = time.monotonic()
                with stack.client() as client:
                    client.download(assets[(storage, variant)], dest_dir=dest)
                wall = time.monotonic() - t0
                d1, s1 = cpu_seconds(stack.daemon.pid), cpu_seconds(stack.server.pid)
                w1 = group_cpu_seconds(seaweed.process.pid) if seaweed.process else 0.0
                got = (dest / "bench.bin").stat().st_size
                assert got == SIZE, got
                shutil.rmtree(dest)
                gb = SIZE / 1e9
                row = {"s": wall, "mb_s": SIZE / 1e6 / wall, "daemon_cpu_s_gb": (d1 - d0) / gb,
                       "server_cpu_s_gb": (s1 - s0) / gb, "store_cpu_s_gb": (w1 - w0) / gb,
                       "load": os.getloadavg()[0]}
                results.setdefault(f"{storage}/{variant}", []).append(row)
                print(storage, variant, run, {k: round(v, 3) for k, v in row.items()}, flush=True)
finally:
    for stack in stacks.values():
        stack.close()
    seaweed.stop()
    source.unlink(missing_ok=True)

summary = {}
for key, rows in results.items():
    summary[key] = {m: round(statistics.median(r[m] for r in rows), 3) for m in rows[0]}
for storage in ("s3", "loopback"):
    b, a = summary.get(f"{storage}/before"), summary.get(f"{storage}/after")
    if a and b:
        summary[f"{storage}/after_over_before"] = {
            "mb_s": round(a["mb_s"] / b["mb_s"], 2),
            "daemon_cpu_s_gb": round(a["daemon_cpu_s_gb"] / b["daemon_cpu_s_gb"], 2)}
print(json.dumps({"size_mib": SIZE // MiB, "runs": RUNS, "summary": summary, "rows": results}, indent=1))
