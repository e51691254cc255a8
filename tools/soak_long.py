"""`make soak-long`: an hour of a watch folder fed without pause while a few faults happen, and
the daemon's resources sampled throughout, to show that nothing grows once warm.

    .venv/bin/python tools/soak_long.py                            # 1 hour, a sample a minute
    .venv/bin/python tools/soak_long.py --duration 300 --sample 10 # the short mode, to try it

A real server and daemon (tools/stack.py) with the server behind the soak's TCP proxy
(tools/chaos_proxy.py), and one watch (``complete_when=stable:2s``, ``after_upload=keep``).
A writer thread puts a small file (1-64 KiB) into it every ``--small-every`` seconds and a large
one (8-32 MiB) every ``--large-every``, each written beside its place as ``*.part`` (which a
watch excludes) and renamed over it: a fixed set of paths (``--paths`` small ones, 4 large) is
written again and again, so every write is a new version (a new job, a new content of the same
asset) while the watch's ledger keeps one row per path. The jobs and events that brings are
what must not pile up: the daemon prunes them (``job_retention_days`` and
``event_retention_days`` set to ``--retention-s``, ``housekeeping_interval_s`` to
``--housekeeping-s``), as it does over 30 days in service.

Faults: every ``--fault-every`` seconds one of a network cut, an outage of 2-5 s, a server
restart or a server SIGKILL; and once, halfway through the warm-up, a SIGKILL of the daemon
(started again at once). The daemon is killed only during the warm-up so that its memory is
measured over one process's life afterwards.

Every ``--sample`` seconds: the daemon's RSS and open descriptors (psutil), the queue database
and its ``-wal``, the daemon's own log (``daemon.log*`` in its state directory: its stderr goes
nowhere, so it writes and rotates its log itself, as when the SDK starts it), and the jobs
and events the queue holds. After the warm-up (``--warmup``, a sixth of the duration by default),
a least-squares line through each series; its slope, per hour, must be within its tolerance:

    RSS           1 MiB/h  (what an hour resolves over a Python heap's noise; a leak of a few
                           hundred bytes a job shows, at about 2 jobs/s)
    fds           2 /h     (the connections in flight move the count by 2 or 3 at any instant; a
                           descriptor lost every thousand jobs, about 7 an hour, shows)
    queue.sqlite3 1 MiB/h  (pruning and incremental vacuum keep it at what the retention holds)
    -wal          not a slope: SQLite keeps the file at its working size between checkpoints, a
                  step, not a trend; its largest sample must be at most ``journal_size_limit``
    log           reported, not judged: it grows with work and is bounded by its rotation (4 x 10 MiB)

Written to ``--out`` (default ``soak-long-<time>`` in the current directory): ``samples.csv``,
``report.json`` (the slopes, tolerances, verdicts and the run's figures) and ``soak-long.png``
(five panels, matplotlib from the ``bench`` extra; skipped with a note when it is missing).
Exit status 0 when every judged slope is within its tolerance. ``--memory-layers``: the daemon also
writes its memory's layers (RSS, Python's arenas, glibc's malloc in use and kept free, its arenas)
to ``OUT/memory`` every sample (``DATAERAI_MEMORY_TRACE``, docs/operations.md), to tell a leak from
an allocator keeping pages.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_proxy import ChaosProxy
from soak import Soak
from stack import Stack

MiB = 1024 * 1024
DAY_S = 86400.0
#: Slopes (units per hour) within which a series counts as not growing, by series.
TOLERANCE_PER_H = {"rss_bytes": 1.0 * MiB, "fds": 2.0, "db_bytes": 1.0 * MiB}
COLUMNS = ("t_s", "daemon_pid", "rss_bytes", "fds", "db_bytes", "wal_bytes", "queue_bytes", "log_bytes",
           "jobs", "events", "files_written", "faults")


def start_daemon_quiet(stack: Stack, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """The stack's daemon with its stderr going nowhere, so it keeps and rotates its own ``daemon.log``."""
    stack.spawn_daemon(quiet=True)
    return stack.wait_for_daemon(timeout)


class Writer:
    """Small files every ``small_every`` s and large ones every ``large_every`` s, over a fixed set of paths."""

    def __init__(self, root: Path, paths: int, small_every: float, large_every: float, seed: int) -> None:
        self.root, self.paths = root, paths
        self.small_every, self.large_every = small_every, large_every
        self.rng = random.Random(seed)
        self.written = 0
        self.stop = threading.Event()

    def _put(self, name: str, size: int) -> None:
        target = self.root / name
        part = self.root / f"{name}.part"
        with open(part, "wb") as f:
            left = size
            while left:
                n = min(left, MiB)
                f.write(self.rng.randbytes(n))
                left -= n
        os.replace(part, target)
        self.written += 1

    def run(self) -> None:
        next_large = time.monotonic() + self.large_every
        while not self.stop.wait(self.small_every):
            self._put(f"small/s_{self.rng.randrange(self.paths):04}.dat", self.rng.randint(1024, 64 * 1024))
            if time.monotonic() >= next_large:
                next_large += self.large_every
                self._put(f"large/L_{self.rng.randrange(4)}.bin", self.rng.randint(8 * MiB, 32 * MiB))


def fit(samples: list[dict[str, Any]], key: str, after_s: float) -> dict[str, Any]:
    """The least-squares slope of ``key`` over the samples after ``after_s``, per hour."""
    points = [(s["t_s"], float(s[key])) for s in samples if s["t_s"] >= after_s and s[key] is not None]
    if len(points) < 3:
        return {"slope_per_h": None, "points": len(points)}
    slope, _intercept = statistics.linear_regression([p[0] for p in points], [p[1] for p in points])
    values = [p[1] for p in points]
    return {"slope_per_h": slope * 3600, "points": len(points), "first": values[0], "last": values[-1],
            "min": min(values), "max": max(values), "mean": statistics.fmean(values)}


def plot(samples: list[dict[str, Any]], warmup: float, out: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (the bench extra: pip install -e '.[bench]'); no plot"
    t = [s["t_s"] / 60 for s in samples]
    panels = (("rss_bytes", "daemon RSS (MiB)", MiB), ("fds", "open descriptors", 1),
              ("db_bytes", "queue.sqlite3 (MiB)", MiB), ("wal_bytes", "queue.sqlite3-wal (MiB)", MiB),
              ("log_bytes", "daemon.log* (MiB)", MiB))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 10), sharex=True)
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        ax.plot(t, [float("nan") if s[key] is None else s[key] / scale for s in samples], marker=".", linewidth=1)
        ax.axvline(warmup / 60, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    fig.suptitle("make soak-long: the daemon under a steady watch feed and faults", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of feed and faults (default 3600)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the fit (default duration/6)")
    parser.add_argument("--fault-every", type=float, default=None, help="seconds between faults (default duration/12)")
    parser.add_argument("--small-every", type=float, default=0.5, help="seconds between small files")
    parser.add_argument("--large-every", type=float, default=30.0, help="seconds between large files")
    parser.add_argument("--paths", type=int, default=200, help="small files' paths, written again and again")
    parser.add_argument("--retention-s", type=float, default=None,
                        help="job and event retention (default warm-up / 2)")
    parser.add_argument("--housekeeping-s", type=float, default=None, help="housekeeping interval (default sample)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="where samples.csv, report.json, soak-long.png go")
    parser.add_argument("--memory-layers", action="store_true",
                        help="the daemon records its memory's layers every --sample in OUT/memory "
                             "(DATAERAI_MEMORY_TRACE without tracemalloc; docs/operations.md)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    warmup = args.warmup if args.warmup is not None else args.duration / 6
    fault_every = args.fault_every if args.fault_every is not None else args.duration / 12
    retention = args.retention_s if args.retention_s is not None else warmup / 2
    housekeeping = args.housekeeping_s if args.housekeeping_s is not None else args.sample
    out = args.out or Path(f"soak-long-{time.strftime('%Y%m%dT%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dataerai-soak-long-"))
    print(f"soak-long: {args.duration:.0f} s, a sample every {args.sample:.0f} s, warm-up {warmup:.0f} s, a fault "
          f"every {fault_every:.0f} s, retention {retention:.0f} s, seed {seed}; in {root}, output to {out}",
          flush=True)
    config = {"max_active_jobs": 2, "parts_per_job": 2, "default_chunk_size": MiB, "retry_base_s": 0.2,
              "retry_cap_s": 2.0, "job_retention_days": retention / DAY_S, "event_retention_days": retention / DAY_S,
              "housekeeping_interval_s": float(housekeeping)}
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    faults: list[tuple[float, str]] = []
    state = root / "stack" / "state" / "dataerai"
    environ = dict(os.environ)
    if args.memory_layers:
        environ.update(DATAERAI_MEMORY_TRACE=str((out / "memory").resolve()), DATAERAI_MEMORY_TRACE_FRAMES="0",
                       DATAERAI_MEMORY_TRACE_INTERVAL_S=str(args.sample))
    try:
        with Stack(root / "stack", daemon_config=config, environ=environ) as stack:
            stack.start_server()
            assert stack.port is not None
            proxy = ChaosProxy(stack.port)
            soak = Soak(stack, proxy, rng)
            soak.login()
            start_daemon_quiet(stack)
            project = soak.call(lambda c: c.create_project("soak-long")).project_id
            watched = root / "watched"
            (watched / "small").mkdir(parents=True)
            (watched / "large").mkdir()
            soak.call(lambda c: c.call("watch.add", {"root": str(watched), "project_id": project,
                                                     "complete_when": "stable:2s", "after_upload": "keep"}))
            writer = Writer(watched, args.paths, args.small_every, args.large_every, seed)
            feeder = threading.Thread(target=writer.run, name="writer", daemon=True)
            started = time.monotonic()
            feeder.start()
            killed = False
            next_fault = started + fault_every
            next_sample = started
            while True:
                now = time.monotonic()
                elapsed = now - started
                if elapsed >= args.duration:
                    break
                if not killed and elapsed >= warmup / 2:
                    stack.stop_daemon(signal.SIGKILL)
                    start_daemon_quiet(stack)
                    killed = True
                    faults.append((elapsed, "daemon_kill"))
                    print(f"  {elapsed:6.0f} s  daemon_kill", flush=True)
                if now >= next_fault:
                    next_fault += fault_every
                    kind = rng.choice(["network_cut", "outage", "server_restart", "server_kill"])
                    if kind == "network_cut":
                        proxy.cut()
                    elif kind == "outage":
                        proxy.outage(rng.uniform(2, 5))
                    else:
                        stack.stop_server(signal.SIGKILL if kind == "server_kill" else signal.SIGTERM)
                        stack.start_server()
                    faults.append((elapsed, kind))
                    print(f"  {elapsed:6.0f} s  {kind}", flush=True)
                if now >= next_sample:
                    next_sample += args.sample
                    samples.append(sample(stack, state, soak, elapsed, writer.written, len(faults)))
                    s = samples[-1]
                    print(f"  {elapsed:6.0f} s  rss {s['rss_bytes'] / MiB:6.1f} MiB  fds {s['fds']:3}  queue "
                          f"{s['queue_bytes'] / MiB:6.2f} MiB  log {s['log_bytes'] / MiB:5.2f} MiB  jobs {s['jobs']}  "
                          f"events {s['events']}  files {s['files_written']}", flush=True)
                time.sleep(min(1.0, max(0.0, min(next_sample, next_fault) - time.monotonic())))
            writer.stop.set()
            feeder.join()
            samples.append(sample(stack, state, soak, time.monotonic() - started, writer.written, len(faults)))
            soak.close()
            proxy.close()
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    with open(out / "samples.csv", "w", newline="") as f:
        table = csv.DictWriter(f, fieldnames=COLUMNS)
        table.writeheader()
        table.writerows(samples)
    fits = {key: fit(samples, key, warmup) for key in ("rss_bytes", "fds", "queue_bytes", "db_bytes", "log_bytes",
                                                         "jobs", "events")}
    verdicts = {}
    for key, tolerance in TOLERANCE_PER_H.items():
        slope = fits[key]["slope_per_h"]
        verdicts[key] = {"slope_per_h": slope, "tolerance_per_h": tolerance,
                         "ok": slope is not None and slope <= tolerance}
    from dataeraid.store import WAL_SIZE_LIMIT

    wal_peak = max(s["wal_bytes"] for s in samples)
    verdicts["wal_bytes"] = {"max": wal_peak, "bound": WAL_SIZE_LIMIT, "ok": wal_peak <= WAL_SIZE_LIMIT}
    note = plot(samples, warmup, out / "soak-long.png")
    report = {"duration_s": args.duration, "sample_s": args.sample, "warmup_s": warmup, "retention_s": retention,
              "housekeeping_s": housekeeping, "seed": seed, "files_written": samples[-1]["files_written"],
              "faults": faults, "fits": fits, "verdicts": verdicts, "plot": note or "soak-long.png"}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    for key, v in verdicts.items():
        if key == "wal_bytes":
            print(f"  {key:12} largest {v['max'] / MiB:.2f} MiB (bound {v['bound'] / MiB:.0f} MiB, "
                  f"journal_size_limit): {'ok' if v['ok'] else 'GROWS'}")
            continue
        slope = v["slope_per_h"]
        scale, unit = (MiB, "MiB") if key != "fds" else (1, "")
        shown = "n/a" if slope is None else f"{slope / scale:+.3f} {unit}/h"
        print(f"  {key:12} slope {shown} (tolerance {v['tolerance_per_h'] / scale:.1f} {unit}/h): "
              f"{'ok' if v['ok'] else 'GROWS'}")
    log_slope = fits["log_bytes"]["slope_per_h"]
    print(f"  log_bytes    slope {0 if log_slope is None else log_slope / MiB:+.3f} MiB/h (bounded by rotation, "
          f"4 x 10 MiB)")
    if note:
        print(f"  {note}")
    ok = all(v["ok"] for v in verdicts.values())
    print(f"soak-long: {'nothing grows once warm' if ok else 'something grows'}; {out}/report.json")
    return 0 if ok else 1


def sample(stack: Stack, state: Path, soak: Soak, elapsed: float, written: int, faults: int) -> dict[str, Any]:
    daemon = stack.daemon
    rss = fds = None
    if daemon is not None and daemon.poll() is None:
        try:
            process = psutil.Process(daemon.pid)
            rss, fds = process.memory_info().rss, process.num_fds()
        except psutil.Error:
            pass

    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    db, wal = size(state / "queue.sqlite3"), size(state / "queue.sqlite3-wal")
    logs = sum(size(p) for p in state.glob("daemon.log*"))
    status = soak.call(lambda c: c.call("daemon.status", {}))
    jobs = sum((status.get("jobs") or {}).values())
    events = None
    try:
        import sqlite3

        with sqlite3.connect(f"file:{state / 'queue.sqlite3'}?mode=ro", uri=True, timeout=5) as conn:
            events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        pass
    return {"t_s": round(elapsed, 1), "daemon_pid": daemon.pid if daemon else None, "rss_bytes": rss, "fds": fds,
            "db_bytes": db, "wal_bytes": wal, "queue_bytes": db + wal, "log_bytes": logs, "jobs": jobs,
            "events": events, "files_written": written, "faults": faults}


if __name__ == "__main__":
    sys.exit(main())
