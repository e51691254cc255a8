"""`make bench-watch`: a watch folder's catch-up at scale through the real daemon, and its
ledger's growth (issue 11's "measure it").

    .venv/bin/python tools/bench_watch.py                        # both sections, defaults below
    .venv/bin/python tools/bench_watch.py --section catchup --files 10000 100000
    .venv/bin/python tools/bench_watch.py --section ledger --ledger-rows 1000000 --json

``catchup``: for each size in ``--files`` (2,000, 10,000 and 100,000 by default), a real
server and daemon (``tools/stack.py``, the daemon's default settings), a project, and a watch
(``complete_when=stable:1s``, ``after_upload=keep``) added on an empty folder; then the daemon
is stopped, the tree is written (``--per-dir`` files of 16-64 distinct bytes to a
directory, 100 directories to a parent) and the daemon started again, so the whole tree is
what a daemon finds at start after files were written while it was down. The bench polls
``watch.get`` once a second and reports, from the daemon's start: the catch-up scan (the
daemon's own ``scanned`` log line) and when every file was queued (none ``seen`` or
``complete``). With the queue then at its longest it times 300 ``job.get`` calls through the
SDK and 20 ``watch.get`` calls (which count the watch's files), holds the server (SIGSTOP)
for 10 s and measures the daemon's CPU meanwhile (thousands of queued jobs and nothing that
can move should cost nothing), then counts the files verified over ``--upload-window-s``
(60 s) and the CPU each cost the daemon and the server. Trees up to ``--to-the-end`` files
(2,000) are followed until every file is verified, then the daemon's CPU over 10 s of
idleness. Throughout: the daemon's RSS at start, after the scan, with every file queued,
at its highest (sampled every 0.5 s) and at the end, its ``VmHWM``, and the CPU seconds of
both processes; at the end, the daemon's queue database (its files, and the rows and
bytes of ``jobs``, ``watch_files`` and ``events``, from SQLite's ``dbstat`` where it has
it). Memory that stays flat from 10,000 to 100,000 files, and a scan, a queue and a
per-file cost that grow no faster than the files, are the point.

Every file is its own upload job (four requests to the server, and the daemon's and the
server's durable bookkeeping), about 13 files/s on the project's shared 2-core machine:
uploading 100,000 would take two to three hours, which is why only the smallest tree is
followed to the end. The catch-up section takes about 13 minutes (the 100,000-file tree 8
of them), the ledger section about 4, `make bench-watch` 17 in all.

``ledger``: the queue database of a watch that has seen ``--ledger-rows`` (1,000,000)
files, without a daemon: a queue opened and migrated as the daemon opens it
(``dataeraid.store.open_queue``), one watch, and rows in the ledger's shape
(``run_0123/sample_45/img_000123.tif``, asset, content and job ids, SHA-256): 99% of
them ``cleaned`` 31-365 days ago, 1% ``verified`` files still on disk. Reported after each
step: the database file and its ``-wal`` (after a passive checkpoint, as the daemon's
autocheckpoint leaves it, then truncated), bytes per row, SQLite's ``freelist_count``;
the time of ``ledger.counts``, ``ledger.oldest_pending``, ``ledger.due``, ``ledger.next_due``,
``ledger.known_here``, a prune with nothing old enough and ``open_queue`` (whose
``quick_check`` reads every page) with every row there and after pruning, with SQLite's
plans; and of ``ledger.prune`` at the daemon's ``FORGET_AFTER_S``. Then another
``--ledger-rows`` rows of new files and a second prune: the file grows only by the rows
that stayed, since the pages the first prune freed are used again.

The figures are in docs/benchmarks.md ("Watch folders: catch-up and ledger").
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import Stack, wait_for

MiB = 1 << 20
DAY = 86400.0
SECTIONS = ("catchup", "ledger")
#: Every watched-file state but ``ignored`` (the watch's marker is not among the files).
PENDING_BEFORE_QUEUE = ("seen", "complete")
PENDING = ("seen", "complete", "queued", "uploaded")


# --- catch-up through the daemon ------------------------------------------------------


def make_tree(top: Path, files: int, per_dir: int, seed: int = 0) -> int:
    """``files`` files of 16-64 distinct bytes below ``top``, ``per_dir`` to a directory and
    100 directories to a parent; the number of directories."""
    rng = random.Random(seed)
    dirs = (files + per_dir - 1) // per_dir
    for d in range(dirs):
        folder = top / f"run_{d // 100:04}" / f"sample_{d % 100:02}"
        folder.mkdir(parents=True)
        for f in range(min(per_dir, files - d * per_dir)):
            name = f"img_{f:03}.tif"
            head = f"{d}/{name}\n".encode()
            body = head + rng.randbytes(max(0, rng.randint(16, 64) - len(head)))
            fd = os.open(folder / name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
    return dirs


class RssSampler(threading.Thread):
    """The daemon's resident set every ``every_s`` seconds, its highest, and a sparse timeline."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.started_at = time.monotonic()
        self.peak = self.process.memory_info().rss
        self.timeline: list[tuple[float, int]] = []
        self._done = threading.Event()

    def now(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def run(self) -> None:
        last_kept = -1e9
        while not self._done.wait(self.every_s):
            try:
                rss = self.now()
            except psutil.Error:
                return
            at = time.monotonic() - self.started_at
            if at - last_kept >= 10.0:
                self.timeline.append((round(at, 1), rss))
                last_kept = at

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def cpu_percent_over(process: psutil.Process, seconds: float) -> float:
    """The process's CPU use over the next ``seconds``, in percent of one core."""
    before, started = cpu_seconds(process), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(process) - before) / (time.monotonic() - started)


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def timed_calls(call: Callable[[int], object], times: int) -> dict[str, float]:
    """Milliseconds per call of ``call(i)``: p50, p99, max."""
    took = []
    for i in range(times):
        started = time.perf_counter()
        call(i)
        took.append((time.perf_counter() - started) * 1000)
    return {"calls": times, "p50_ms": round(percentile(took, 0.5), 2), "p99_ms": round(percentile(took, 0.99), 2),
            "max_ms": round(max(took), 2)}


def scanned_lines(log: Path, offset: int) -> list[dict[str, Any]]:
    """The daemon's ``scanned`` log lines written after ``offset`` (JSON lines: its stderr is a file)."""
    found = []
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == "scanned":
                    found.append(entry)
    return found


class Progress:
    """``watch.get`` once a second: the file counts, and a line on stderr every 30 s."""

    def __init__(self, client: Any, watch_id: str, files: int, t0: float, deadline: float) -> None:
        self.client = client
        self.watch_id = watch_id
        self.files = files
        self.t0 = t0
        self.deadline = deadline
        self.lines: list[dict[str, Any]] = []
        self._next_line = 0.0

    def look(self) -> dict[str, Any]:
        watch: dict[str, Any] = self.client.call("watch.get", {"watch_id": self.watch_id})
        now = time.monotonic() - self.t0
        counts = watch["files"]
        if now >= self._next_line:
            self.lines.append({"s": round(now, 1), **{s: n for s, n in counts.items() if n}})
            print(f"  [{self.files:,}] {now:6.0f} s  " + "  ".join(f"{s} {n}" for s, n in counts.items() if n),
                  file=sys.stderr, flush=True)
            self._next_line = now + 30.0
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"{self.files:,} files: not there after {self.deadline - self.t0:.0f} s: {counts}")
        return watch

    def until(self, done: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]]:
        """Look once a second until ``done(watch)``; the seconds since ``t0`` then, and the watch."""
        while True:
            watch = self.look()
            if done(watch):
                return time.monotonic() - self.t0, watch
            time.sleep(1.0)


def _known(counts: dict[str, int]) -> int:
    return sum(n for state, n in counts.items() if state != "ignored")


def queue_db_figures(state: Path) -> dict[str, Any]:
    """The daemon's queue database as it is now: its files, the rows of its growing tables, and
    (where SQLite has ``dbstat``) the bytes each table holds with its indexes."""
    path = next(state.rglob("queue.sqlite3"))
    figures: dict[str, Any] = {"files": db_files(path)}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        figures["rows"] = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                           for table in ("jobs", "watch_files", "events", "chunks")}
        with contextlib.suppress(sqlite3.Error):
            figures["bytes"] = dict(conn.execute(
                "SELECT s.tbl_name, sum(d.pgsize) FROM dbstat d JOIN sqlite_schema s ON s.name = d.name "
                "GROUP BY s.tbl_name").fetchall())
    return figures


def catchup_run(files: int, per_dir: int, top: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One tree through the daemon; to the end (every file verified) if ``files <= args.to_the_end``."""
    data = top / "data"
    data.mkdir()
    report: dict[str, Any] = {"files": files, "per_dir": per_dir, "to_the_end": files <= args.to_the_end}
    with Stack(top / "stack") as stack:
        stack.start_server()
        stack.login(stack.add_user("bench@example.org", scope="write"))
        stack.start_daemon()
        with stack.client() as client:
            project_id = client.create_project(f"bench-watch-{files}").project_id
            watch_id = client.add_watch(data, project_id=project_id, complete_when="stable:1s",
                                        after_upload="keep").watch_id
            first_scan = wait_for(lambda: client.call("watch.get", {"watch_id": watch_id})["last_scan_at"], 60,
                                  "the watch's first scan of its empty folder", interval=0.1)
        stack.stop_daemon()

        # Written while the daemon is down: what it must find at start.
        started = time.monotonic()
        report["dirs"] = make_tree(data, files, per_dir)
        report["tree_written_s"] = round(time.monotonic() - started, 1)
        log = stack.root / "daemon.log"
        log_offset = log.stat().st_size
        assert stack.server is not None
        server = psutil.Process(stack.server.pid)
        server_cpu0 = cpu_seconds(server)

        t0 = time.monotonic()
        daemon = psutil.Process(stack.start_daemon().pid)
        report["listening_s"] = round(time.monotonic() - t0, 2)
        sampler = RssSampler(daemon.pid)
        report["rss_start"] = sampler.now()
        sampler.start()
        milestones: dict[str, float] = {}
        try:
            with stack.client() as client:
                progress = Progress(client, watch_id, files, t0, t0 + args.timeout)
                milestones["scanned"], _ = progress.until(lambda w: w["last_scan_at"] != first_scan)
                report["rss_after_scan"] = sampler.now()
                milestones["queued"], watch = progress.until(
                    lambda w: _known(w["files"]) >= files and not any(w["files"][s] for s in PENDING_BEFORE_QUEUE))
                report["rss_queued"] = sampler.now()
                report["at_longest_queue"] = queue_figures(stack, client, watch_id, daemon, watch["files"], args)
                report["uploads"] = upload_window(progress, daemon, server, args.upload_window_s)
                report["rss_after_window"] = sampler.now()
                if report["to_the_end"]:
                    milestones["uploaded"], _ = progress.until(
                        lambda w: _known(w["files"]) >= files and not any(w["files"][s] for s in PENDING[:3]))
                    milestones["verified"], watch = progress.until(lambda w: w["files"]["verified"] >= files)
                    report["quarantined"] = watch["files"]["quarantined"]
                    report["rss_end"] = sampler.now()
                    report["files_per_s"] = round(files / milestones["verified"], 1)
                    report["idle_cpu_percent"] = round(cpu_percent_over(daemon, args.idle_s), 2)
                    report["watch_get_idle"] = timed_calls(
                        lambda _: client.call("watch.get", {"watch_id": watch_id}), 20)
                report["queue_db"] = queue_db_figures(stack.root / "state")
                report["daemon_cpu_s"] = round(cpu_seconds(daemon), 1)
                report["server_cpu_s"] = round(cpu_seconds(server) - server_cpu0, 1)
                report["progress"] = progress.lines
        finally:
            sampler.stop()
        report["rss_peak"] = sampler.peak
        report["vm_hwm"] = vm_hwm(daemon.pid)
        report["rss_timeline"] = sampler.timeline
        report["milestones_s"] = {k: round(v, 1) for k, v in milestones.items()}
        scans = scanned_lines(log, log_offset)
        if scans:
            report["scan_s"] = scans[0].get("seconds")
            report["scan_found"] = scans[0].get("files")
    return report


def upload_window(progress: Progress, daemon: psutil.Process, server: psutil.Process,
                  seconds: float) -> dict[str, Any]:
    """Files verified over ``seconds`` with the queue long, and the CPU each cost the daemon and the server."""
    before = after = progress.look()["files"]
    daemon_cpu, server_cpu, started = cpu_seconds(daemon), cpu_seconds(server), time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        after = progress.look()["files"]
    took = time.monotonic() - started
    done = after["verified"] - before["verified"]
    return {"seconds": round(took, 1), "verified": done, "files_per_s": round(done / took, 1),
            "queued_before": before["queued"], "queued_after": after["queued"],
            "daemon_cpu_ms_per_file": round(1000 * (cpu_seconds(daemon) - daemon_cpu) / done, 1) if done else None,
            "server_cpu_ms_per_file": round(1000 * (cpu_seconds(server) - server_cpu) / done, 1) if done else None}


def queue_figures(stack: Stack, client: Any, watch_id: str, daemon: psutil.Process, counts: dict[str, int],
                  args: argparse.Namespace) -> dict[str, Any]:
    """With every file queued: ``job.get`` and ``watch.get`` latency, and the daemon's CPU while
    the server is held and nothing can move."""
    page = client.call("watch.files", {"watch_id": watch_id, "states": ["queued"], "limit": 100})
    job_ids = [f["job_id"] for f in page["files"] if f["job_id"]]
    figures: dict[str, Any] = {"queued": counts["queued"]}
    if job_ids:
        figures["job_get"] = timed_calls(lambda i: client.get_job(job_ids[i % len(job_ids)]), args.latency_calls)
    figures["watch_get"] = timed_calls(lambda _: client.call("watch.get", {"watch_id": watch_id}), 20)
    with stack.server_held():
        time.sleep(1.0)  # the transfers in flight stop at the held server first
        queued_before = client.call("watch.get", {"watch_id": watch_id})["files"]["queued"]
        figures["held_cpu_percent"] = round(cpu_percent_over(daemon, args.idle_s), 2)
        figures["held_queued"] = queued_before
    return figures


def catchup_section(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for files in args.files:
        top = Path(tempfile.mkdtemp(prefix=f"dataerai-bench-watch-{files}-", dir=args.dir))
        try:
            runs.append(catchup_run(files, args.per_dir, top, args))
        finally:
            if not args.keep:
                shutil.rmtree(top, ignore_errors=True)
    return {"runs": runs}


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f} MiB"


def print_catchup(report: dict[str, Any]) -> None:
    runs = report["runs"]
    print("\nCatch-up: a tree written while the daemon was stopped, found by the scan at start "
          "(stable:1s, keep; one upload job per file)")

    def q(r: dict[str, Any], *keys: str) -> Any:
        value: Any = r.get("at_longest_queue", {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def m(r: dict[str, Any], key: str) -> str:
        value = r["milestones_s"].get(key)
        return "-" if value is None else f"{value} s"

    def u(r: dict[str, Any], key: str) -> str:
        value = r.get("uploads", {}).get(key)
        return "-" if value is None else f"{value:,}"

    def table_size(r: dict[str, Any], table: str) -> str:
        rows, size = r["queue_db"]["rows"][table], r["queue_db"].get("bytes", {}).get(table)
        return f"{rows:,}" + ("" if size is None else f", {_mib(size)} ({size / max(rows, 1):.0f} B/row)")

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("directories", lambda r: f"{r['dirs']:,}"),
        ("tree written (daemon stopped)", lambda r: f"{r['tree_written_s']} s"),
        ("daemon listening after start", lambda r: f"{r['listening_s']} s"),
        ("catch-up scan (the daemon's log)", lambda r: f"{r.get('scan_s')} s"),
        ("every file queued, from the start", lambda r: m(r, "queued")),
        ("queued jobs then", lambda r: f"{q(r, 'queued'):,}"),
        ("job.get p50 / p99 then", lambda r: f"{q(r, 'job_get', 'p50_ms')} / {q(r, 'job_get', 'p99_ms')} ms"),
        ("watch.get p50 / p99 then",
         lambda r: f"{q(r, 'watch_get', 'p50_ms')} / {q(r, 'watch_get', 'p99_ms')} ms"),
        ("daemon CPU, server held 10 s then", lambda r: f"{q(r, 'held_cpu_percent')} %"),
        ("uploads in the window after, files/s", lambda r: u(r, "files_per_s")),
        ("  daemon CPU per file", lambda r: f"{u(r, 'daemon_cpu_ms_per_file')} ms"),
        ("  server CPU per file", lambda r: f"{u(r, 'server_cpu_ms_per_file')} ms"),
        ("every file uploaded", lambda r: m(r, "uploaded")),
        ("every file verified", lambda r: m(r, "verified")),
        ("files/s, start to verified", lambda r: str(r.get("files_per_s", "-"))),
        ("daemon CPU, idle 10 s after the end",
         lambda r: f"{r['idle_cpu_percent']} %" if "idle_cpu_percent" in r else "-"),
        ("daemon RSS at start", lambda r: _mib(r["rss_start"])),
        ("daemon RSS after the scan", lambda r: _mib(r.get("rss_after_scan"))),
        ("daemon RSS, every file queued", lambda r: _mib(r.get("rss_queued"))),
        ("daemon RSS, highest (every 0.5 s)", lambda r: _mib(r["rss_peak"])),
        ("daemon RSS at the end", lambda r: _mib(r.get("rss_end", r.get("rss_after_window")))),
        ("daemon VmHWM", lambda r: _mib(r["vm_hwm"])),
        ("queue database at the end (db + -wal)",
         lambda r: _mib(r["queue_db"]["files"]["db"] + r["queue_db"]["files"]["wal"])),
        ("  jobs: rows, bytes with indexes", lambda r: table_size(r, "jobs")),
        ("  watch_files: rows, bytes with indexes", lambda r: table_size(r, "watch_files")),
        ("  events: rows, bytes with indexes", lambda r: table_size(r, "events")),
        ("daemon CPU seconds, in all", lambda r: f"{r['daemon_cpu_s']} s"),
        ("server CPU seconds, in all", lambda r: f"{r['server_cpu_s']} s"),
    ]
    print("| | " + " | ".join(f"{r['files']:,} files" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for label, show in rows:
        print(f"| {label} | " + " | ".join(show(r) for r in runs) + " |")
    for r in runs:
        if r.get("quarantined"):
            print(f"  {r['files']:,} files: {r['quarantined']} quarantined")
    sys.stdout.flush()


# --- the ledger at a million rows ------------------------------------------------------


def db_files(path: Path) -> dict[str, int]:
    size = {"db": path.stat().st_size}
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        size[suffix[1:]] = side.stat().st_size if side.exists() else 0
    return size


def ledger_rows(watch_id: str, first: int, count: int, now: float, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """``count`` rows as a watch leaves them, for files ``first`` on: one in a hundred ``verified``
    (still on disk), the rest ``cleaned`` 31-365 days ago."""
    from dataerai import contract

    for i in range(first, first + count):
        rel = f"run_{i // 100_000:04}/sample_{i // 1000 % 100:02}/img_{i:07}.tif"
        kept = i % 100 == 0
        seen = now - (rng.uniform(1, 30) if kept else rng.uniform(31, 365)) * DAY
        done = seen + rng.uniform(5, 600)
        yield (watch_id, rel, "file", "verified" if kept else "cleaned", rng.randint(1 << 20, 1 << 28),
               int(seen * 1e9), 10_000_000 + i, seen, contract.new_job_id(), contract.new_id("asset"),
               contract.new_id("content"), hashlib.sha256(rel.encode()).hexdigest(), 0, None, None, None,
               seen, done, 1, None if kept else done)


LEDGER_COLUMNS = ("watch_id", "rel", "kind", "state", "size", "mtime_ns", "inode", "stable_since", "job_id",
                  "asset_id", "content_id", "sha256", "attempts", "retry_at", "error_code", "error_message",
                  "seen_at", "updated_at", "scan_gen", "gone_at")


def ledger_section(args: argparse.Namespace) -> dict[str, Any]:
    import sqlalchemy as sa

    from dataeraid.store import open_queue
    from dataeraid.watch import ledger
    from dataeraid.watch.manager import FORGET_AFTER_S

    top = Path(tempfile.mkdtemp(prefix="dataerai-bench-ledger-", dir=args.dir))
    path = top / "queue.sqlite3"
    rows_per_round = args.ledger_rows
    watch_id = "wat_benchledger0000"
    rng = random.Random(11)
    steps: list[dict[str, Any]] = []
    timings: dict[str, Any] = {}
    try:
        engine = open_queue(path)
        now = time.time()
        with engine.begin() as conn:
            conn.execute(ledger.WATCHES.insert().values(
                watch_id=watch_id, root="/data/instrument", params={"project_id": "prj_bench"},
                user_paused=False, created_at=now - 400 * DAY, updated_at=now, scan_gen=1))
        insert = (f"INSERT INTO watch_files ({', '.join(LEDGER_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(LEDGER_COLUMNS))})")

        def measure(step: str, seconds: float | None = None, **extra: Any) -> None:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(sa.func.count()).select_from(ledger.W)).scalar_one()
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                wal_left = db_files(path)["wal"]
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            size = db_files(path)
            steps.append({"step": step, "rows": rows, "db_bytes": size["db"], "wal_bytes_after_passive": wal_left,
                          "wal_bytes": size["wal"], "page_size": page_size, "pages": pages, "freelist_pages": free,
                          "bytes_per_live_row": round((pages - free) * page_size / rows) if rows else None,
                          "seconds": None if seconds is None else round(seconds, 2), **extra})

        def fill(first: int) -> float:
            started = time.perf_counter()
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                rows = ledger_rows(watch_id, first, rows_per_round, now, rng)
                while True:
                    chunk = list(itertools.islice(rows, 20_000))
                    if not chunk:
                        break
                    cursor.executemany(insert, chunk)
                    raw.commit()
                cursor.close()
            finally:
                raw.close()
            return time.perf_counter() - started

        def prune() -> tuple[int, float, float]:
            """As the daemon prunes (``WatchManager._prune_forever``): ``PRUNE_BATCH`` rows a
            transaction until a batch comes back short; the whole, and the longest transaction
            (how long the store's one thread is taken from RPCs and jobs at once)."""
            started = time.perf_counter()
            older_than = time.time() - FORGET_AFTER_S
            pruned, longest = 0, 0.0
            while True:
                began = time.perf_counter()
                with engine.begin() as conn:
                    batch = ledger.prune(conn, older_than, limit=ledger.PRUNE_BATCH)
                longest = max(longest, time.perf_counter() - began)
                pruned += batch
                if batch < ledger.PRUNE_BATCH:
                    break
            return pruned, time.perf_counter() - started, longest

        def queries(label: str) -> None:
            found: dict[str, Any] = {}
            calls: dict[str, Callable[[Any], Any]] = {
                "counts": lambda c: ledger.counts(c, watch_id),
                "oldest_pending": lambda c: ledger.oldest_pending(c, watch_id),
                "due_seen": lambda c: ledger.due(c, watch_id, "seen", time.time(), 500),
                "due_verified": lambda c: ledger.due(c, watch_id, "verified", time.time(), 500, unset=False),
                "next_due": lambda c: ledger.next_due(c, watch_id, ["seen", "complete", "uploaded", "verified"]),
                "known_here": lambda c: ledger.known_here(c, watch_id),
                # The hourly prune when nothing is old enough: what it costs to look.
                "prune_nothing_due": lambda c: ledger.prune(c, time.time() - 400 * DAY),
            }
            with engine.connect() as conn:
                for name, call in calls.items():
                    took = []
                    for _ in range(5):
                        started = time.perf_counter()
                        call(conn)
                        took.append((time.perf_counter() - started) * 1000)
                    found[name] = round(statistics.median(took), 2)
            started = time.perf_counter()
            open_queue(path).dispose()
            found["open_queue"] = round((time.perf_counter() - started) * 1000, 1)
            timings[label] = found

        print(f"  [ledger] inserting {rows_per_round:,} rows", file=sys.stderr, flush=True)
        measure(f"{rows_per_round:,} rows written", fill(0))
        queries("first_peak")
        timings["plans"] = query_plans(path, watch_id)
        pruned, seconds, longest = prune()
        measure("pruned", seconds, pruned=pruned, longest_transaction_ms=round(longest * 1000, 1))
        queries("after_prune")
        print(f"  [ledger] inserting {rows_per_round:,} more rows", file=sys.stderr, flush=True)
        measure(f"{rows_per_round:,} more rows written", fill(rows_per_round))
        pruned, seconds, longest = prune()
        measure("pruned", seconds, pruned=pruned, longest_transaction_ms=round(longest * 1000, 1))
        engine.dispose()
    finally:
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    return {"rows_per_round": rows_per_round, "steps": steps, "query_ms": timings,
            "forget_after_days": FORGET_AFTER_S / DAY}


def query_plans(path: Path, watch_id: str) -> dict[str, list[str]]:
    """SQLite's plan for the ledger's hourly and per-request queries (the statements ``ledger`` sends)."""
    from dataeraid.watch import ledger

    statements = {
        "counts": "SELECT state, count(*) FROM watch_files WHERE watch_id = ? GROUP BY state",
        "oldest_pending": "SELECT rel, seen_at FROM watch_files WHERE watch_id = ? AND state = 'seen' "
                          "ORDER BY seen_at LIMIT 1",
        "due_seen": "SELECT * FROM watch_files WHERE watch_id = ? AND state = 'seen' AND "
                    "(retry_at IS NULL OR retry_at <= 0) ORDER BY retry_at, seen_at LIMIT 500",
        "prune": str(ledger.prunable(0.0, ledger.PRUNE_BATCH).compile(
            dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True})),
    }
    plans = {}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for name, sql in statements.items():
            params = (watch_id,) if "?" in sql else ()
            plans[name] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    return plans


def print_ledger(report: dict[str, Any]) -> None:
    print(f"\nLedger: one watch, {report['rows_per_round']:,} files a round (99% cleaned 31-365 days ago, "
          f"1% verified and on disk); pruned at {report['forget_after_days']:.0f} days")
    print("| step | rows | seconds | longest transaction | file (db) | -wal as autocheckpoint leaves it "
          "| bytes/live row | free pages |")
    print("|---|---|---|---|---|---|---|---|")
    for s in report["steps"]:
        took = "" if s["seconds"] is None else f"{s['seconds']} s"
        pruned = f" ({s['pruned']:,} rows)" if "pruned" in s else ""
        longest = f"{s['longest_transaction_ms']} ms" if "longest_transaction_ms" in s else ""
        print(f"| {s['step']}{pruned} | {s['rows']:,} | {took} | {longest} | {_mib(s['db_bytes'])} "
              f"| {_mib(s['wal_bytes_after_passive'])} | {s['bytes_per_live_row']} | {s['freelist_pages']:,} |")
    print("\n| query (ms, median of 5) | " + " | ".join(k for k in report["query_ms"] if k != "plans") + " |")
    labels = [k for k in report["query_ms"] if k != "plans"]
    print("|---|" + "---|" * len(labels))
    for name in report["query_ms"][labels[0]]:
        print(f"| {name} | " + " | ".join(str(report["query_ms"][k][name]) for k in labels) + " |")
    print("\nSQLite's plans:")
    for name, plan in report["query_ms"]["plans"].items():
        print(f"  {name}: {'; '.join(plan)}")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); default: both")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    parser.add_argument("--save", metavar="FILE", help="also write that JSON document to FILE")
    parser.add_argument("--dir", help="where the temporary trees and databases go (a directory below it)")
    parser.add_argument("--keep", action="store_true", help="leave the temporary directories behind")
    catchup = parser.add_argument_group("catchup")
    catchup.add_argument("--files", type=int, nargs="+", default=[2_000, 10_000, 100_000],
                         help="tree sizes, in turn")
    catchup.add_argument("--to-the-end", type=int, default=2_000,
                         help="trees up to this size are followed until every file is verified")
    catchup.add_argument("--upload-window-s", type=float, default=60.0,
                         help="how long the upload rate is measured once every file is queued")
    catchup.add_argument("--per-dir", type=int, default=10, help="files to a directory")
    catchup.add_argument("--latency-calls", type=int, default=300, help="job.get calls timed")
    catchup.add_argument("--idle-s", type=float, default=10.0, help="the windows the daemon's CPU is measured over")
    catchup.add_argument("--timeout", type=float, default=1800.0, help="seconds a size may take before it fails")
    led = parser.add_argument_group("ledger")
    led.add_argument("--ledger-rows", type=int, default=1_000_000, help="rows written in each of the two rounds")
    args = parser.parse_args()
    reports: dict[str, Any] = {}
    for section in args.section or SECTIONS:
        if section == "catchup":
            reports[section] = catchup_section(args)
            if not args.json:
                print_catchup(reports[section])
        else:
            reports[section] = ledger_section(args)
            if not args.json:
                print_ledger(reports[section])
    document = json.dumps({**reports, "cpus": os.cpu_count(), "args": sys.argv[1:]}, indent=2)
    if args.save:
        Path(args.save).write_text(document + "\n")
    if args.json:
        print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
