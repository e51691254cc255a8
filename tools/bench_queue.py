"""`make bench-queue`: the queue database's size while jobs churn through it for months, the
cost of a watch's file counts at a million rows, and a one-time conversion to incremental vacuum
(issue 13's "bounded growth, measured").

    .venv/bin/python tools/bench_queue.py                          # all sections, defaults below
    .venv/bin/python tools/bench_queue.py --section churn --jobs 1000000 --keep-batches 10
    .venv/bin/python tools/bench_queue.py --section counts --ledger-rows 1000000 --json

``churn``: the real ``Store``, ``EventBus`` and ``Jobs`` on a queue opened and migrated as the
daemon opens it (``Store.open``), without a daemon process (a million jobs through the daemon
would take days). ``--jobs`` upload jobs go through it in batches of ``--batch`` (1,000): each
batch is created with ``Jobs.create_many`` (a ``job.state`` event each), moved to ``running``
and ``completed`` with their events (``Store.update_job`` and ``emit``, as ``Jobs.transition``
writes them, one transaction a batch; a completed job has no checkpoints left), seen by a client
(``jobs.acknowledge``), and then the daemon's housekeeping round runs
(``dataeraid.housekeeping.tidy``: events and jobs pruned 1,000 a transaction, free pages given back
by ``incremental_vacuum``, the WAL truncated) with a retention that keeps the newest
``--keep-batches`` batches: each batch stands for a day of a busy instrument PC, and the
retention for ``job_retention_days``. Every ``--sample`` batches: the files' sizes (database,
``-wal``), SQLite's pages and free pages, the rows kept, and the longest single store
transaction of the housekeeping (how long RPCs and jobs waited for the store's thread at most).
``synchronous=OFF`` on this connection (``--durable`` keeps the daemon's FULL): file sizes do
not depend on it, the run's time does (an ``fdatasync`` a transaction).

``counts``: a watch's ledger of ``--ledger-rows`` rows (inserted through the triggers that keep
``watch_file_counts``, migration 0007), then ``ledger.counts`` (the kept counts) and
``ledger.count_rows`` (what ``counts`` did before: every row of the watch), median of 5; and the
same rows inserted into a queue without the triggers, for what they cost the writes.

``convert``: a queue made without incremental vacuum (``auto_vacuum=NONE``, as before 0007),
filled with ``--convert-jobs`` finished jobs, opened with ``open_queue``, which converts it
with one ``VACUUM``: the time that takes for the live megabytes (``VACUUM_AT_START_MAX``).

The figures are in docs/benchmarks.md ("The queue over a million jobs") and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

MiB = 1 << 20
SECTIONS = ("churn", "counts", "convert")


def files_of(path: Path) -> dict[str, int]:
    sizes = {"db": path.stat().st_size}
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        sizes[suffix[1:]] = side.stat().st_size if side.exists() else 0
    return sizes


def job_rows(count: int, first: int) -> list[dict[str, Any]]:
    from dataerai.contract import new_job_id

    rows = []
    for i in range(first, first + count):
        rel = f"run_{i // 100_000:04}/sample_{i // 1000 % 100:02}/img_{i:07}.tif"
        rows.append({
            "job_id": new_job_id(), "kind": "upload", "priority": 0, "client": "watch:wat_benchqueue0000",
            "chunk_size": 64 * MiB, "local_path": f"/data/instrument/{rel}", "file_name": rel.rsplit("/", 1)[1],
            "source_size": 3 * MiB + i % 1000, "source_mtime_ns": 1_700_000_000_000_000_000 + i,
            "source_inode": 10_000_000 + i,
            "params": {"project_id": "prj_bench0000", "title": rel, "tags": ["raw"], "path": rel,
                       "watch_id": "wat_benchqueue0000", "metadata": {"run": i // 100_000, "sample": i // 1000 % 100}},
        })
    return rows


async def churn(args: argparse.Namespace, top: Path) -> dict[str, Any]:
    import dataeraid.store as store_module
    from dataeraid.config import Settings
    from dataeraid.events import EventBus
    from dataeraid.housekeeping import DAY_S, tidy
    from dataeraid.jobs import Jobs, acknowledge
    from dataeraid.store import Store

    path = top / "queue.sqlite3"
    store = await Store.open(path)
    if not args.durable:
        await store._run(lambda: store._conn.connection.dbapi_connection.execute("PRAGMA synchronous=OFF"))
    bus = EventBus(store)
    await bus.start()
    jobs = Jobs(bus)
    # The longest single store call while housekeeping runs.
    longest = [0.0]
    run = store._run

    async def timed_run(fn: Any, *a: Any) -> Any:
        began = time.perf_counter()
        try:
            return await run(fn, *a)
        finally:
            longest[0] = max(longest[0], time.perf_counter() - began)

    batches = args.jobs // args.batch
    ended_at: list[float] = []
    samples: list[dict[str, Any]] = []
    settings = Settings(job_retention_days=1, event_retention_days=1)
    started = time.perf_counter()
    tidy_s = 0.0
    for b in range(batches):
        made = await jobs.create_many(job_rows(args.batch, b * args.batch))

        def finish(conn: Any, emit: Any, made: list[dict[str, Any]] = made) -> None:
            for job in made:
                job_id = job["job_id"]
                Store.update_job(conn, job_id, {"state": "running"})
                emit("job.state", job_id, {"state": "running", "previous_state": "queued",
                                           "job": {**job, "state": "running"}})
                done = {"state": "completed", "asset_id": f"ast_{job_id[4:]}", "content_id": f"cnt_{job_id[4:]}",
                        "sha256": f"{random.getrandbits(256):064x}", "bytes_total": 3 * MiB, "chunk_count": 1}
                Store.update_job(conn, job_id, done)
                emit("job.state", job_id, {"state": "completed", "previous_state": "running",
                                           "job": {**job, **done}})
            acknowledge(conn, [{"job_id": j["job_id"], "state": "completed", "acknowledged_at": None}
                               for j in made])

        await bus.commit(finish)
        ended_at.append(time.time())
        # Housekeeping with a retention that keeps the newest --keep-batches batches.
        if len(ended_at) > args.keep_batches:
            store_module.Store._run = timed_run  # type: ignore[method-assign]
            try:
                store._run = timed_run  # type: ignore[method-assign]
                began = time.perf_counter()
                done = await tidy(jobs, settings, now=ended_at[-args.keep_batches - 1] + DAY_S)
                tidy_s += time.perf_counter() - began
            finally:
                store._run = run  # type: ignore[method-assign]
        else:
            done = None
        if (b + 1) % args.sample == 0 or b + 1 == batches:
            def look(conn: Any) -> dict[str, int]:
                counts = {t: int(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one())
                          for t in ("jobs", "events", "chunks")}
                return {**Store.space(conn), **counts}

            seen = await store.transaction(look)
            sizes = files_of(path)
            samples.append({
                "jobs_through": (b + 1) * args.batch, "seconds": round(time.perf_counter() - started, 1),
                "db_bytes": sizes["db"], "wal_bytes": sizes["wal"], "pages": seen["page_count"],
                "free_pages": seen["freelist_count"], "jobs_kept": seen["jobs"], "events_kept": seen["events"],
                "chunks_kept": seen["chunks"], "longest_housekeeping_transaction_ms": round(longest[0] * 1000, 1),
                "last_round": None if done is None else {"jobs_pruned": done.jobs_pruned,
                                                         "events_pruned": done.events_pruned,
                                                         "pages_freed": done.pages_freed},
            })
            longest[0] = 0.0
            if not args.json:
                s = samples[-1]
                print(f"{s['jobs_through']:>9,} jobs {s['seconds']:>7.1f} s  db {s['db_bytes'] / MiB:7.2f} MiB  "
                      f"wal {s['wal_bytes'] / MiB:6.2f} MiB  free pages {s['free_pages']:>5}  "
                      f"kept {s['jobs_kept']:,} jobs {s['events_kept']:,} events  "
                      f"longest {s['longest_housekeeping_transaction_ms']} ms", flush=True)
    await store.close()
    peak = max(s["db_bytes"] + s["wal_bytes"] for s in samples)
    return {"jobs": batches * args.batch, "batch": args.batch, "keep_batches": args.keep_batches,
            "durable": args.durable, "seconds": round(time.perf_counter() - started, 1),
            "housekeeping_seconds": round(tidy_s, 1), "peak_db_plus_wal_bytes": peak,
            "final": samples[-1], "samples": samples}


def counts_section(args: argparse.Namespace, top: Path) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_watch import LEDGER_COLUMNS, ledger_rows

    from dataeraid.store import open_queue
    from dataeraid.watch import ledger

    path = top / "ledger.sqlite3"
    engine = open_queue(path)
    watch_id = "wat_benchcounts0000"
    now = time.time()
    with engine.begin() as conn:
        conn.execute(ledger.WATCHES.insert().values(watch_id=watch_id, root="/data/instrument", params={},
                                                    created_at=now, updated_at=now))
    insert = (f"INSERT INTO watch_files ({', '.join(LEDGER_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(LEDGER_COLUMNS))})")
    raw = engine.raw_connection()
    began = time.perf_counter()
    rows = list(ledger_rows(watch_id, 0, args.ledger_rows, now, random.Random(11)))
    made_s = time.perf_counter() - began
    began = time.perf_counter()
    cursor = raw.cursor()
    for start in range(0, len(rows), 20_000):
        cursor.executemany(insert, rows[start:start + 20_000])
        raw.commit()
    insert_s = time.perf_counter() - began
    cursor.close()
    raw.close()

    def median_ms(fn: Any) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(5):
            with engine.connect() as conn:
                began = time.perf_counter()
                result = fn(conn, watch_id)
                times.append((time.perf_counter() - began) * 1000)
        return round(statistics.median(times), 3), result

    kept_ms, kept = median_ms(ledger.counts)
    full_ms, full = median_ms(ledger.count_rows)
    engine.dispose()
    # What the triggers cost the writes: the same rows into a queue without them.
    bare = top / "bare.sqlite3"
    engine = open_queue(bare)
    with engine.begin() as conn:
        conn.execute(ledger.WATCHES.insert().values(watch_id=watch_id, root="/data/instrument", params={},
                                                    created_at=now, updated_at=now))
        for name in ("watch_files_count_insert", "watch_files_count_delete", "watch_files_count_update"):
            conn.exec_driver_sql(f"DROP TRIGGER {name}")
    raw = engine.raw_connection()
    began = time.perf_counter()
    cursor = raw.cursor()
    for start in range(0, len(rows), 20_000):
        cursor.executemany(insert, rows[start:start + 20_000])
        raw.commit()
    bare_s = time.perf_counter() - began
    cursor.close()
    raw.close()
    engine.dispose()
    return {"rows": args.ledger_rows, "insert_seconds_with_triggers": round(insert_s, 1),
            "insert_seconds_without_triggers": round(bare_s, 1),
            "rows_generated_seconds": round(made_s, 1), "counts_ms": kept_ms, "count_rows_ms": full_ms,
            "equal": kept == full, "counts": kept}


def convert_section(args: argparse.Namespace, top: Path) -> dict[str, Any]:
    import sqlite3

    from dataeraid.store import open_queue

    path = top / "old.sqlite3"
    engine = open_queue(path)  # the schema; then made as an older daemon made it: no auto_vacuum
    engine.dispose()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=DELETE")
    raw.execute("PRAGMA auto_vacuum=NONE")
    raw.execute("VACUUM")
    assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    rows = job_rows(args.convert_jobs, 0)
    columns = ("job_id", "kind", "state", "priority", "seq", "created_at", "updated_at", "params", "local_path",
               "file_name", "chunk_size", "client", "source_size", "source_mtime_ns", "source_inode")
    raw.executemany(
        f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [(r["job_id"], "upload", "completed", 0, i, 1.0, 1.0, json.dumps(r["params"]), r["local_path"],
          r["file_name"], r["chunk_size"], r["client"], r["source_size"], r["source_mtime_ns"], r["source_inode"])
         for i, r in enumerate(rows)])
    raw.commit()
    raw.execute("PRAGMA journal_mode=WAL")
    raw.close()
    size = files_of(path)["db"]
    began = time.perf_counter()
    engine = open_queue(path)
    seconds = time.perf_counter() - began
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one()
    engine.dispose()
    return {"jobs": args.convert_jobs, "db_bytes": size, "open_seconds": round(seconds, 2),
            "mib_per_s": round(size / MiB / seconds, 1), "auto_vacuum_after": mode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=SECTIONS, action="append", help="one section (repeatable); all by default")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument("--save", metavar="FILE", help="also write that JSON document to FILE")
    parser.add_argument("--dir", help="where the temporary databases go (a directory below it)")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs churned through")
    parser.add_argument("--batch", type=int, default=1000, help="jobs a batch (a 'day')")
    parser.add_argument("--keep-batches", type=int, default=10, help="batches the retention keeps")
    parser.add_argument("--sample", type=int, default=50, help="batches between samples")
    parser.add_argument("--durable", action="store_true", help="keep synchronous=FULL (slower)")
    parser.add_argument("--ledger-rows", type=int, default=1_000_000, help="rows of the counts section's ledger")
    parser.add_argument("--convert-jobs", type=int, default=200_000, help="jobs in the convert section's old queue")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="dataerai-bench-queue-", dir=args.dir))
    report: dict[str, Any] = {"sqlite": __import__("sqlite3").sqlite_version, "cpus": os.cpu_count()}
    try:
        for section in args.section or SECTIONS:
            if section == "churn":
                report["churn"] = trio.run(churn, args, top)
            elif section == "counts":
                report["counts"] = counts_section(args, top)
            else:
                report["convert"] = convert_section(args, top)
            if not args.json:
                shown = {k: v for k, v in report[section].items() if k != "samples"}
                print(f"{section}: {json.dumps(shown)}", flush=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.save:
        Path(args.save).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
