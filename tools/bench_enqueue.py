"""`make bench-enqueue`: how fast the daemon queues uploads, one call each (``upload.start``)
and many a call (``upload.start_many``), and how fast ``job.get`` answers with the queue full
(issue 14's "enqueueing at least 2,000 jobs/s through a batch call").

    .venv/bin/python tools/bench_enqueue.py                       # 10,000 batched, 2,000 single
    .venv/bin/python tools/bench_enqueue.py --jobs 10000 --batch 1000 --single 2000 --json

A real stack (``tools/stack.py``): the repository server and the daemon as processes, the
daemon with ``max_active_jobs = 1``. The server is held still (SIGSTOP, ``Stack.server_held``)
while the jobs are queued, so the one job the scheduler starts hangs on its first request and
the queue only grows: the figures are the enqueue path alone (the RPC, the checks of the
source, one durable commit), with the scheduler looking at a growing queue as it does in use.

Each job uploads one of ``--jobs`` existing 1 KiB files. First ``--single`` uploads through the
SDK's ``upload(..., wait=False)``, one ``upload.start`` each, then ``--jobs`` through
``upload_many`` in calls of ``--batch``; each rate is jobs over wall seconds from the first call
to the last answer, with the daemon's CPU seconds meanwhile (``/proc``). Then ``--gets`` calls of
``job.get`` for random jobs of the full queue: p50 and p99.

What a long queue costs when nothing else happens (issue 14: an idle daemon under 1% of a core;
with 10,000 jobs queued and a few running, under 5% besides the transfer itself; RSS under 200
MiB with 10,000 queued):

- **idle**: the daemon's share of a core over ``--quiet-s`` with nothing queued, before anything.
- **the transfer alone**: one ``--big-mib`` upload with the queue empty: its wall time and the
  daemon's CPU seconds.
- **the same transfer before the full queue**: a second such upload is the job the scheduler
  starts while the server is held (so it hangs and the others queue behind it); with the queue
  full, the daemon's share of a core over ``--quiet-s`` (nothing moves: what the queue costs
  by itself) and its RSS; then the server goes on and the upload ends with every other job
  still queued behind it. Its CPU seconds over the alone's are what the queue costs the
  transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import Stack

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def core_share(pid: int, seconds: float) -> float:
    """The share of one core ``pid`` used over the next ``seconds``, in percent."""
    cpu0, started = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu0) / (time.perf_counter() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    files = root / "files"
    files.mkdir()
    paths = []
    for i in range(args.jobs):
        path = files / f"f{i:06d}.dat"
        path.write_bytes(os.urandom(1024))
        paths.append(path)
    bigs = []
    for i in range(2):
        big = root / f"big{i}.dat"
        with big.open("wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1 << 20))
        bigs.append(big)
    with Stack(root / "stack", daemon_config={"max_active_jobs": 1}) as stack:
        stack.start_server()
        stack.login(stack.add_user("bench@example.org"))
        daemon = stack.start_daemon()
        with stack.client(request_timeout_s=120) as client:
            project = client.create_project("bench").project_id

            def item(path: Path) -> dict[str, Any]:
                return {"local_path": path, "title": path.name, "owner_type": "project", "owner_id": project}

            def upload_big(path: Path) -> tuple[str, float]:
                return client.upload(path, title=path.name, owner_type="project", owner_id=project,
                                     wait=False).job_id, cpu_seconds(daemon.pid)

            idle_pct = core_share(daemon.pid, args.quiet_s)
            started = time.perf_counter()
            alone_id, cpu0 = upload_big(bigs[0])
            assert client.wait(alone_id).state == "completed"
            alone_s, alone_cpu = time.perf_counter() - started, cpu_seconds(daemon.pid) - cpu0

            with stack.server_held():
                behind_id, _ = upload_big(bigs[1])
                cpu0, started = cpu_seconds(daemon.pid), time.perf_counter()
                for path in paths[:args.single]:
                    client.upload(path, title=path.name, owner_type="project", owner_id=project, wait=False)
                single_s, single_cpu = time.perf_counter() - started, cpu_seconds(daemon.pid) - cpu0

                cpu0, started = cpu_seconds(daemon.pid), time.perf_counter()
                job_ids: list[str] = []
                call_s: list[float] = []
                for start in range(0, args.jobs, args.batch):
                    before = time.perf_counter()
                    jobs = client.upload_many([item(p) for p in paths[start:start + args.batch]])
                    call_s.append(time.perf_counter() - before)
                    job_ids.extend(job.job_id for job in jobs)
                batch_s, batch_cpu = time.perf_counter() - started, cpu_seconds(daemon.pid) - cpu0

                queued = len(client.list_jobs())
                gets = []
                for job_id in random.Random(1).choices(job_ids, k=args.gets):
                    before = time.perf_counter()
                    client.get_job(job_id)
                    gets.append(time.perf_counter() - before)
                full_pct, full_rss = core_share(daemon.pid, args.quiet_s), rss_mib(daemon.pid)
                behind_cpu0, started = cpu_seconds(daemon.pid), time.perf_counter()
            ended = client.wait(behind_id)
            behind_s, behind_cpu = time.perf_counter() - started, cpu_seconds(daemon.pid) - behind_cpu0
            assert ended.state == "completed", ended
            still = len(client.list_jobs(["queued"]))
    return {
        "quiet": {"idle_pct": round(idle_pct, 2), "queue_full_pct": round(full_pct, 2),
                  "queue_full_rss_mib": round(full_rss, 1), "seconds": args.quiet_s},
        "transfer": {"mib": args.big_mib, "alone_s": round(alone_s, 2), "alone_cpu_s": round(alone_cpu, 2),
                     "behind_queue_s": round(behind_s, 2), "behind_queue_cpu_s": round(behind_cpu, 2),
                     "queued_meanwhile": still,
                     "queue_cost_pct_of_core": round(100 * max(0.0, behind_cpu - alone_cpu) / behind_s, 2)},
        "single": {"jobs": args.single, "seconds": round(single_s, 3), "jobs_per_s": round(args.single / single_s),
                   "daemon_cpu_s": round(single_cpu, 2)},
        "batch": {"jobs": args.jobs, "batch": args.batch, "seconds": round(batch_s, 3),
                  "jobs_per_s": round(args.jobs / batch_s), "daemon_cpu_s": round(batch_cpu, 2),
                  "call_p50_ms": round(statistics.median(call_s) * 1000, 1),
                  "call_max_ms": round(max(call_s) * 1000, 1)},
        "job_get": {"queued": queued, "calls": args.gets, "p50_ms": round(percentile(gets, 0.5) * 1000, 2),
                    "p99_ms": round(percentile(gets, 0.99) * 1000, 2)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="uploads queued through upload.start_many")
    parser.add_argument("--batch", type=int, default=1_000, help="uploads a call")
    parser.add_argument("--single", type=int, default=2_000, help="uploads queued one upload.start each")
    parser.add_argument("--gets", type=int, default=2_000, help="job.get calls with the queue full")
    parser.add_argument("--big-mib", type=int, default=256, help="size of the transfer measured beside the queue")
    parser.add_argument("--quiet-s", type=float, default=10.0, help="seconds over which idle CPU is measured")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args()
    args.single = min(args.single, args.jobs)
    with tempfile.TemporaryDirectory(prefix="dq") as tmp:
        result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return 0
    s, b, g = result["single"], result["batch"], result["job_get"]
    print(f"upload.start, one call each: {s['jobs']} jobs in {s['seconds']} s = {s['jobs_per_s']} jobs/s "
          f"(daemon CPU {s['daemon_cpu_s']} s)")
    print(f"upload.start_many, {b['batch']} a call: {b['jobs']} jobs in {b['seconds']} s = {b['jobs_per_s']} "
          f"jobs/s (daemon CPU {b['daemon_cpu_s']} s; a call p50 {b['call_p50_ms']} ms, max {b['call_max_ms']} ms)")
    print(f"job.get with {g['queued']} jobs queued: p50 {g['p50_ms']} ms, p99 {g['p99_ms']} ms ({g['calls']} calls)")
    q, t = result["quiet"], result["transfer"]
    print(f"daemon, {q['seconds']} s with nothing to do: {q['idle_pct']}% of a core; with {g['queued']} queued and "
          f"one job held: {q['queue_full_pct']}% of a core, RSS {q['queue_full_rss_mib']} MiB")
    print(f"a {t['mib']} MiB upload alone: {t['alone_s']} s, daemon CPU {t['alone_cpu_s']} s; before "
          f"{t['queued_meanwhile']} queued jobs: {t['behind_queue_s']} s, daemon CPU {t['behind_queue_cpu_s']} s "
          f"(the queue's cost: {t['queue_cost_pct_of_core']}% of a core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
