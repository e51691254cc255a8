"""One watch at work: its root, its news, its files' way from ``seen`` to ``cleaned``.

    Watcher.run()                      one task per watch, in the manager's nursery
     ├─ root check                     missing, unmounted, replaced: ``unavailable``, wait, deleting nothing
     └─ watching (nursery)
         ├─ _read_events               inotify batches into a small channel; a full one means "rescan"
         └─ the loop                   scan when due, then: news → judge → queue → verify → clean
                                       → free space; then sleep until the next thing is due

News comes from file events where the filesystem gives them (``notify.TreeNotifier``)
and from full scans: at start (catch-up: what was written while the daemon was down),
every ``rescan_interval_s`` (the safety net, and the only source on network shares), after
an inotify overflow and on ``watch.rescan``. Every step reads and writes the ledger in
batches, so a tree of 100,000 files costs a few hundred transactions, not 100,000.

Files are judged complete by the watch's rule (``rules.CompleteWhen``; docs/watch.md), and
only a file no process has open for writing is taken, where that can be seen
(``writers``). The version taken is the version the job records, and the upload engine
fails the job with ``source_changed`` if the file moves on before it is committed: the
ledger then sees it again, from scratch. Nothing here deletes or moves a file that the
repository has not confirmed with its SHA-256, and then only if the local file still has
the size, mtime and inode that were uploaded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa
import trio
from dataerai import contract
from sqlalchemy.engine import Connection

from dataeraid import log
from dataeraid.config import LiveSettings, Settings
from dataeraid.errors import DataeraiError, TransientError
from dataeraid.events import EventBus
from dataeraid.fileset import scan_source
from dataeraid.jobs import Jobs
from dataeraid.remote import Remote
from dataeraid.watch import ledger, rules
from dataeraid.watch.config import WatchConfig
from dataeraid.watch.excludes import Excludes
from dataeraid.watch.mounts import events_trustworthy
from dataeraid.watch.notify import Change, NotifyUnavailable, TreeNotifier, WatchLimitReached
from dataeraid.watch.scan import Entry, Skipped, dataset_dirs, walk
from dataeraid.watch.template import TemplateError
from dataeraid.watch.writers import writing_verdicts

_log = log.get("dataeraid.watch")

#: Rows handled per transaction, and jobs created per batch.
BATCH = 500
#: How often an unavailable root is looked at again.
ROOT_POLL_S = 5.0
#: A verification or a move that failed is tried again after this long.
CLEAN_RETRY_S = 60.0
#: How many inotify batches may wait for the loop before news is dropped for a rescan.
EVENT_BACKLOG = 64


class RootProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Nudges:
    """What the loop was asked to do, by events, RPCs and job ends, since it last looked."""

    rescan: bool = True  # the catch-up scan at start
    changed: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    root_gone: bool = False


def root_identity(root: str) -> tuple[int, int]:
    st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise RootProblem("root_missing", f"{root} is no longer a directory")
    return st.st_dev, st.st_ino


def check_root(root: str, dev: int | None, inode: int | None, marker: str | None) -> None:
    """Raise ``RootProblem`` unless ``root`` is the folder the watch was added for. Blocking."""
    try:
        now_dev, now_inode = root_identity(root)
    except FileNotFoundError:
        raise RootProblem("root_missing", f"{root} does not exist (renamed, deleted or not mounted)") from None
    except OSError as exc:
        raise RootProblem("root_unreadable", f"{root} cannot be read: {exc.strerror or exc}") from None
    if dev is not None and now_dev != dev:
        raise RootProblem("root_unmounted", f"{root} is on another filesystem than when it was added "
                                            "(a share not mounted, or something else mounted there)")
    if inode is not None and now_inode != inode:
        raise RootProblem("root_replaced", f"{root} is another directory than the one the watch was added for; "
                                           "`dataerai watch resume` adopts it")
    if marker and not os.path.exists(os.path.join(root, marker)):
        raise RootProblem("root_replaced", f"{root} lost the watch's marker file {marker}; "
                                           "`dataerai watch resume` adopts it as it is")


def leave_marker(root: str, marker: str) -> bool:
    """Write the marker file into the root; False if the root is not writable (then the device
    and inode alone tell the folder). Blocking."""
    try:
        fd = os.open(os.path.join(root, marker), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.write(fd, b"This folder is watched by dataerai; deleting this file pauses the watch.\n")
    finally:
        os.close(fd)
    return True


def _stat_many(cfg: WatchConfig, rels: Sequence[str]) -> tuple[list[ledger.Observation], list[str]]:
    """What is at each of ``rels`` now: regular files as observations, and the paths gone."""
    found: list[ledger.Observation] = []
    missing: list[str] = []
    for rel in rels:
        try:
            st = os.lstat(cfg.local(rel))
        except FileNotFoundError:
            missing.append(rel)
            continue
        except OSError:
            continue  # the next scan says what it is
        if stat.S_ISREG(st.st_mode) and not cfg.excludes.excluded(rel, False):
            found.append(ledger.Observation(rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return found, missing


def dataset_version(path: str) -> tuple[int, int, int]:
    """A dataset directory's version: its files' total size, newest mtime, and the directory's inode."""
    _, files, _ = scan_source(path)
    total = sum(f.size for f in files)
    newest = max((f.mtime_ns or 0 for f in files), default=0)
    return total, newest, os.stat(path).st_ino


class Watcher:
    """Works one watch until cancelled. ``poke`` wakes it (a job ended, an RPC asked)."""

    def __init__(self, row: dict[str, Any], jobs: Jobs, remote: Remote, settings: Settings | LiveSettings,
                 on_state: Callable[[str], None]) -> None:
        self.watch_id: str = row["watch_id"]
        self.cfg = WatchConfig.from_row(row)
        self._row = row
        self._jobs = jobs
        self._bus: EventBus = jobs.bus
        self._remote = remote
        self._settings = LiveSettings.of(settings)
        self._on_state = on_state
        self._wake = trio.Event()
        self.nudges = Nudges()
        self.mode: str = "polling" if self.cfg.force_polling else "events"
        self.mode_reason: tuple[str, str] | None = None
        self._host = socket.gethostname()
        self._log = _log.bind(watch_id=self.watch_id)
        self._scan_gen: int = row.get("scan_gen") or 0
        self._next_scan = 0.0

    # --- wake-ups ---------------------------------------------------------------

    def poke(self, *, rescan: bool = False) -> None:
        if rescan:
            self.nudges.rescan = True
        self._wake.set()

    async def _sleep_until(self, deadline: float | None) -> None:
        """Until poked or ``deadline`` (wall clock); a poke that came meanwhile returns at once."""
        if not self._wake.is_set():
            with trio.move_on_after(max(0.0, deadline - time.time()) if deadline is not None else float("inf")):
                await self._wake.wait()
        self._wake = trio.Event()

    # --- the root ---------------------------------------------------------------

    async def _root_ok(self) -> bool:
        """Is the root the folder the watch was added for? If not: ``unavailable`` and False."""
        row = self._row
        try:
            await trio.to_thread.run_sync(check_root, self.cfg.root, row["root_dev"], row["root_inode"],
                                          row["marker"])
        except RootProblem as problem:
            await self._set_problem(problem.code, problem.message)
            return False
        if row["problem_code"]:
            await self._set_problem(None, None)
        return True

    async def _set_problem(self, code: str | None, message: str | None) -> None:
        if self._row["problem_code"] == code:
            return
        if code:
            self._log.warning("watch unavailable", code=code, reason=message)
        else:
            self._log.info("watch available again")
            self.nudges.rescan = True
        self._row = {**self._row, "problem_code": code, "problem_message": message}
        self._on_state(self.watch_id)

    # --- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not await self._root_ok():
                await self._sleep_until(time.time() + ROOT_POLL_S)
                continue
            try:
                await self._watch()
            except RootProblem as problem:
                await self._set_problem(problem.code, problem.message)

    async def _watch(self) -> None:
        notifier: TreeNotifier | None = None
        if not self.cfg.force_polling:
            notifier = await self._start_notifier()
        problem: RootProblem | None = None
        try:
            async with trio.open_nursery() as nursery:
                if notifier is not None:
                    nursery.start_soon(self._read_events, notifier)
                try:
                    while True:
                        await self._step()
                        await self._sleep_until(await self._next_wake())
                except RootProblem as found:
                    # Out of the nursery as itself, not in an exception group: ``run`` waits for the root.
                    problem = found
                    nursery.cancel_scope.cancel()
        finally:
            if notifier is not None:
                notifier.close()
        if problem is not None:
            raise problem

    async def _start_notifier(self) -> TreeNotifier | None:
        trustworthy, why = await trio.to_thread.run_sync(events_trustworthy, self.cfg.root)
        if not trustworthy:
            self._fall_back("no_file_events", why)
            return None
        notifier = TreeNotifier(self.cfg.root, skip_dir=lambda rel: self.cfg.excludes.excluded(rel, True))
        try:
            await notifier.start()
        except (NotifyUnavailable, WatchLimitReached) as exc:
            notifier.close()
            code = "watch_limit" if isinstance(exc, WatchLimitReached) else "no_file_events"
            self._fall_back(code, str(exc))
            return None
        self.mode, self.mode_reason = "events", None
        return notifier

    def _fall_back(self, code: str, message: str) -> None:
        """No file events: poll, say why, and never go blind."""
        self._log.warning("file events unavailable; polling", code=code, reason=message,
                          rescan_interval_s=self.cfg.rescan_interval_s)
        self.mode, self.mode_reason = "polling", (code, message)
        self._on_state(self.watch_id)

    async def _read_events(self, notifier: TreeNotifier) -> None:
        try:
            while True:
                changes = await notifier.changes()
                self._take(changes)
                self._wake.set()
        except WatchLimitReached as exc:
            self._fall_back("watch_limit", str(exc))
            self.nudges.rescan = True
            self._wake.set()
        except trio.ClosedResourceError:
            pass

    def _take(self, changes: Sequence[Change]) -> None:
        n = self.nudges
        for change in changes:
            if change.kind == "overflow":
                n.rescan = True
            elif change.kind == "root_gone":
                n.root_gone = True
            elif change.is_dir:
                if change.kind in ("dir_created", "dir_moved_in"):
                    n.dirs.add(change.rel)
                elif change.kind in ("dir_gone", "moved_out", "deleted"):
                    n.rescan = True  # a whole subtree went: the scan sorts out which rows
            elif change.kind in ("deleted", "moved_out"):
                n.gone.add(change.rel)
                n.changed.discard(change.rel)
                n.closed.discard(change.rel)
            else:
                n.changed.add(change.rel)
                n.gone.discard(change.rel)
                if change.kind in ("closed", "moved_in"):
                    n.closed.add(change.rel)
        if len(n.changed) + len(n.gone) > 100_000:
            # Too much news to keep one by one: a scan finds all of it with flat memory.
            n.changed.clear()
            n.gone.clear()
            n.closed.clear()
            n.rescan = True

    async def _next_wake(self) -> float | None:
        states = ["seen", "complete", "uploaded"]
        if self.cfg.after_upload.kind != "keep":
            states.append("verified")
        nxt = await self._jobs.store.transaction(lambda conn: ledger.next_due(conn, self.watch_id, states))
        wake = self._next_scan
        if nxt is not None:
            wake = min(wake, nxt)
        if self.cfg.free_space_below is not None:
            wake = min(wake, time.time() + self.cfg.rescan_interval_s)
        return wake

    async def _step(self) -> None:
        n = self.nudges
        if n.root_gone:
            n.root_gone = False
            await trio.to_thread.run_sync(check_root, self.cfg.root, self._row["root_dev"],
                                          self._row["root_inode"], self._row["marker"])
        if n.rescan or time.time() >= self._next_scan:
            n.rescan = False
            n.changed.clear()
            n.gone.clear()
            n.closed.clear()
            n.dirs.clear()
            await self._full_scan()
        else:
            await self._news()
        await self._judge()
        await self._enqueue()
        await self._verify()
        await self._clean()
        await self._free_space()

    # --- news ---------------------------------------------------------------------

    async def _news(self) -> None:
        n = self.nudges
        if self.cfg.complete_when.kind == "sentinel":
            # Any news under a directory may complete or change a dataset: look at those directories.
            dirs = {rel.rpartition("/")[0] for rel in n.changed | n.gone} | n.dirs
            n.changed.clear()
            n.gone.clear()
            n.closed.clear()
            n.dirs.clear()
            for rel in sorted(dirs):
                await self._scan_datasets(rel)
            return
        for sub in sorted(n.dirs):
            n.dirs.discard(sub)
            await self._scan_tree(sub, None)
        while n.changed or n.gone:
            rels = [n.changed.pop() for _ in range(min(BATCH, len(n.changed)))]
            closed = {r for r in rels if r in n.closed}
            n.closed.difference_update(closed)
            gone = [n.gone.pop() for _ in range(min(BATCH, len(n.gone)))]
            found, missing = await trio.to_thread.run_sync(_stat_many, self.cfg, rels)
            found = [ledger.Observation(o.rel, o.size, o.mtime_ns, o.inode, closed=o.rel in closed) for o in found]
            await self._observe(found, None)
            if gone or missing:
                now = time.time()
                await self._jobs.store.transaction(
                    partial(ledger.gone, watch_id=self.watch_id, rels=gone + missing, now=now))

    async def _observe(self, found: Sequence[ledger.Observation], scan_gen: int | None,
                       skipped: Sequence[tuple[str, str, str]] = ()) -> None:
        window = self.cfg.window_s()
        now = time.time()

        def write(conn: Connection) -> list[str]:
            closed = ledger.observe(conn, self.watch_id, found, window, now, scan_gen)
            if skipped:
                ledger.ignore(conn, self.watch_id, skipped, now, scan_gen)
            return closed

        closed = await self._jobs.store.transaction(write)
        if closed and self.cfg.complete_when.kind == "close":
            await self._judge_rows(closed, closed_by_writer=True)

    async def _full_scan(self) -> None:
        """Every path under the root, in batches; then what the scan did not find is gone."""
        started = time.time()
        self._scan_gen += 1
        gen = self._scan_gen
        if self.cfg.complete_when.kind == "sentinel":
            found = await self._scan_datasets("", gen)
        else:
            found = await self._scan_tree("", gen)
        # A root that is suddenly empty while files are on record is more likely unmounted or
        # swapped than emptied: forget nothing, and wait (docs/watch.md).
        known = await self._jobs.store.transaction(lambda conn: ledger.known_here(conn, self.watch_id))
        await trio.to_thread.run_sync(check_root, self.cfg.root, self._row["root_dev"], self._row["root_inode"],
                                      self._row["marker"])
        if found == 0 and known > 0:
            raise RootProblem("root_empty", f"{self.cfg.root} is empty while {known} of its files are on record "
                                            "(not moved or deleted by the watch); it is not taken as deleted. "
                                            "`dataerai watch resume` adopts it as it is")
        now = time.time()

        def finish(conn: Connection) -> int:
            changed = ledger.gone(conn, self.watch_id, None, now, before_gen=gen)
            ledger.update_watch(conn, self.watch_id, scan_gen=gen, last_scan_at=now)
            return changed

        changed = await self._jobs.store.transaction(finish)
        self._row = {**self._row, "scan_gen": gen, "last_scan_at": now}
        self._next_scan = time.time() + self.cfg.rescan_interval_s
        self._log.info("scanned", files=found, gone=changed, seconds=round(time.time() - started, 3))

    async def _scan_tree(self, under: str, gen: int | None) -> int:
        """Observe every file under ``under`` (a rel path, "" for the root); how many were found."""
        base = self.cfg.local(under) if under else self.cfg.root
        excludes = self.cfg.excludes if not under else _Under(self.cfg.excludes, under)
        found = 0
        batches = walk(base, excludes, batch_size=BATCH)
        while True:
            batch = await trio.to_thread.run_sync(next, batches, None)
            if batch is None:
                break
            seen: list[ledger.Observation] = []
            skipped: list[tuple[str, str, str]] = []
            for item in batch:
                rel = f"{under}/{item.rel}" if under else item.rel
                if rel == self.cfg.marker:
                    continue  # the watch's own marker is no file of the folder's
                if isinstance(item, Entry):
                    seen.append(ledger.Observation(rel, item.size, item.mtime_ns, item.inode))
                elif isinstance(item, Skipped):
                    skipped.append((rel, item.reason, item.detail))
            found += len(seen)
            await self._observe(seen, gen, skipped)
        return found

    async def _scan_datasets(self, under: str, gen: int | None = None) -> int:
        """``sentinel:NAME``: each directory holding NAME is one dataset, complete as it is now."""
        sentinel = self.cfg.complete_when.sentinel
        base = self.cfg.local(under) if under else self.cfg.root
        excludes = self.cfg.excludes if not under else _Under(self.cfg.excludes, under)

        def find() -> list[ledger.Observation]:
            if not os.path.isdir(base):
                return []
            out = []
            for rel in dataset_dirs(base, sentinel, excludes):
                full_rel = "/".join(p for p in (under, rel) if p)
                if not full_rel:
                    continue  # the root itself is no dataset of the watch
                try:
                    size, mtime_ns, inode = dataset_version(self.cfg.local(full_rel))
                except (OSError, DataeraiError):
                    continue
                out.append(ledger.Observation(full_rel, size, mtime_ns, inode, kind="dataset", closed=True))
            return out

        found = await trio.to_thread.run_sync(find)
        for start in range(0, len(found), BATCH):
            await self._observe(found[start:start + BATCH], gen)
        if gen is None and under:
            # A dataset directory that lost its marker or vanished is no longer complete.
            present = {o.rel for o in found}
            await self._jobs.store.transaction(
                lambda conn: ledger.gone(conn, self.watch_id, [under] if under not in present else [], time.time()))
        return len(found)

    # --- judging ------------------------------------------------------------------

    async def _judge(self) -> None:
        now = time.time()
        rows = await self._jobs.store.transaction(lambda conn: ledger.due(conn, self.watch_id, "seen", now, BATCH))
        if rows:
            await self._judge_rows([r["rel"] for r in rows], closed_by_writer=False)

    async def _judge_rows(self, rels: Sequence[str], *, closed_by_writer: bool) -> None:
        """Is each of ``rels`` complete now? Stat, ask who writes it, and settle its row."""
        rule = self.cfg.complete_when
        window = self.cfg.window_s()

        def look() -> list[tuple[str, tuple[int, int, int] | None, bool | None]]:
            versions: dict[str, tuple[int, int, int] | None] = {}
            for rel in rels:
                path = self.cfg.local(rel)
                try:
                    if rule.kind == "sentinel":
                        versions[rel] = dataset_version(path)
                        continue
                    st = os.lstat(path)
                except (OSError, DataeraiError):
                    versions[rel] = None
                    continue
                versions[rel] = (st.st_size, st.st_mtime_ns, st.st_ino) if stat.S_ISREG(st.st_mode) else None
            if rule.kind == "sentinel":
                writing: dict[str, bool | None] = dict.fromkeys(rels, False)
            else:
                present = [self.cfg.local(rel) for rel, v in versions.items() if v is not None]
                by_path = writing_verdicts(present)
                writing = {rel: by_path.get(self.cfg.local(rel)) for rel in rels}
            return [(rel, versions[rel], writing[rel]) for rel in rels]

        looked = await trio.to_thread.run_sync(look)
        now = time.time()

        def settle(conn: Connection) -> None:
            rows = ledger.fetch_files(conn, self.watch_id, list(rels))
            for rel, version, writing in looked:
                row = rows.get(rel)
                if row is None or row["state"] != "seen":
                    continue
                quiet = now - (row["stable_since"] or now)
                if rule.kind == "sentinel":
                    complete = True
                elif writing:
                    complete = False
                elif rule.kind == "stable":
                    complete = quiet >= rule.stable_s
                elif closed_by_writer:
                    complete = True
                else:
                    complete = quiet >= (rules.CLOSE_SETTLE_S if writing is False
                                         else rules.CLOSE_SETTLE_UNKNOWN_WRITERS_S)
                recheck = now + max(window, 1.0)
                if writing is None and rule.kind == "close" and not complete:
                    recheck = (row["stable_since"] or now) + rules.CLOSE_SETTLE_UNKNOWN_WRITERS_S
                ledger.judge(conn, self.watch_id, rel, now, version=version, complete=complete,
                             recheck_at=recheck)

        await self._jobs.store.transaction(settle)

    # --- queueing -----------------------------------------------------------------

    async def _enqueue(self) -> None:
        while True:
            now = time.time()
            rows = await self._jobs.store.transaction(
                partial(ledger.due, watch_id=self.watch_id, state="complete", now=now, limit=BATCH))
            if not rows:
                return
            jobs: list[dict[str, Any]] = []
            taken: list[tuple[str, str]] = []
            for row in rows:
                if row["job_id"] is not None and await retry_failed_job(self._jobs, self.watch_id, row):
                    self._log.info("upload tried again", path=row["rel"], job_id=row["job_id"])
                    continue
                try:
                    job = await trio.to_thread.run_sync(self._job_row, row)
                except (TemplateError, DataeraiError, OSError) as exc:
                    code = getattr(exc, "code", None) or ("template_mismatch" if isinstance(exc, TemplateError)
                                                          else "io_error")
                    message = getattr(exc, "message", None) or str(exc)
                    await self._bus.commit(partial(ledger.quarantine, watch_id=self.watch_id, rel=row["rel"],
                                                   code=code, message=message))
                    continue
                jobs.append(job)
                taken.append((row["rel"], job["job_id"]))
            if jobs:
                await self._jobs.create_many(
                    jobs, also=partial(_mark_queued, watch_id=self.watch_id, queued=taken))
                self._log.info("queued", files=len(jobs))
            if len(rows) < BATCH:
                return

    def _job_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The upload job for a complete file (or dataset), as ``upload.start`` would queue it. Blocking."""
        cfg = self.cfg
        rel: str = row["rel"]
        path = cfg.local(rel)
        if row["kind"] == "dataset":
            root, files, skipped = scan_source(path)
            if not files:
                raise DataeraiError("invalid_argument", f"{path} holds no regular files")
        else:
            root, name = os.path.split(path)
            files_json = [[name, row["size"], row["mtime_ns"], row["inode"]]]
            skipped = []
        rendered = (cfg.template.render(rel, row["mtime_ns"] or 0, self._host) if cfg.template is not None else None)
        tags = list(dict.fromkeys([*cfg.tags, *(rendered.tags if rendered else [])]))
        total = sum(f.size for f in files) if row["kind"] == "dataset" else row["size"]
        chunk = self._settings.current.default_chunk_size
        per_part = -(-total // contract.MAX_PARTS)
        chunk = max(chunk, -(-per_part // contract.MIN_PART_SIZE) * contract.MIN_PART_SIZE)
        params: dict[str, Any] = {
            "title": rendered.title if rendered else os.path.basename(rel),
            "owner_type": "project", "owner_id": cfg.project_id,
            "description": rendered.description if rendered else None, "alias": None, "tags": tags,
            "metadata": rendered.metadata if rendered else {}, "collection_id": cfg.collection_id,
            "asset_id": row["asset_id"], "path": cfg.asset_path(rel), "source_root": root,
            "source_files": [f.to_json() for f in files] if row["kind"] == "dataset" else files_json,
            "skipped": skipped, "watch_id": self.watch_id,
        }
        single = row["kind"] != "dataset"
        return {
            "job_id": contract.new_job_id(), "kind": "upload", "priority": cfg.priority, "params": params,
            "local_path": path, "file_name": os.path.basename(path), "source_size": total,
            "source_mtime_ns": row["mtime_ns"] if single else None,
            "source_inode": row["inode"] if single else None, "chunk_size": chunk,
            "chunk_count": max(1, -(-total // chunk)), "bytes_total": total, "deadline": None,
            "client": f"watch:{self.watch_id}", "window": cfg.transfer_window,
        }

    # --- verifying and cleaning -------------------------------------------------------

    async def _verify(self) -> None:
        """``uploaded`` → ``verified``: the repository holds this content with this SHA-256, and the
        local file is still the version that was uploaded."""
        now = time.time()
        rows = await self._jobs.store.transaction(lambda conn: ledger.due(conn, self.watch_id, "uploaded", now, BATCH))
        keep = self.cfg.after_upload.kind == "keep"
        for row in rows:
            try:
                target = await self._remote.download_target(row["asset_id"], row["content_id"])
            except (DataeraiError, TransientError) as exc:
                retry = time.time() + CLEAN_RETRY_S
                code = getattr(exc, "code", None) or "unavailable"
                self._log.info("cannot verify yet", path=row["rel"], code=code)
                await self._jobs.store.transaction(partial(
                    ledger.clean_failed, watch_id=self.watch_id, rel=row["rel"], code=code,
                    message=f"verifying with the repository: {exc}", retry_at=retry))
                continue
            if target.get("sha256") != row["sha256"] or not row["sha256"]:
                message = (f"the repository holds {target.get('sha256')} for content {row['content_id']}, "
                           f"not the {row['sha256']} uploaded")
                await self._bus.commit(partial(ledger.quarantine, watch_id=self.watch_id, rel=row["rel"],
                                               code="checksum_mismatch", message=message))
                continue
            await self._bus.commit(partial(ledger.verified, watch_id=self.watch_id, rel=row["rel"], keep=keep))

    def _unchanged(self, row: dict[str, Any]) -> bool:
        """The local file (or dataset) still has the version that was uploaded. Blocking."""
        path = self.cfg.local(row["rel"])
        try:
            if row["kind"] == "dataset":
                return dataset_version(path) == (row["size"], row["mtime_ns"], row["inode"])
            st = os.lstat(path)
        except (OSError, DataeraiError):
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns, st.st_ino) == (
            row["size"], row["mtime_ns"], row["inode"])

    async def _clean(self) -> None:
        """``verified`` → ``cleaned``: move or delete the local file, only if it is unchanged."""
        action = self.cfg.after_upload
        if action.kind == "keep":
            return
        now = time.time()
        # A verified row without ``retry_at`` is not to be cleaned (kept, or changed since its upload).
        rows = await self._jobs.store.transaction(
            lambda conn: ledger.due(conn, self.watch_id, "verified", now, BATCH, unset=False))
        for row in rows:
            try:
                await trio.to_thread.run_sync(self._clean_one, row, action)
            except OSError as exc:
                message = f"could not {action.kind} {self.cfg.local(row['rel'])}: {exc.strerror or exc}; it stays"
                self._log.warning("after-upload action failed", path=row["rel"], error=message)
                await self._jobs.store.transaction(partial(
                    ledger.clean_failed, watch_id=self.watch_id, rel=row["rel"], code=f"{action.kind}_failed",
                    message=message, retry_at=time.time() + CLEAN_RETRY_S))
                continue
            except _Changed:
                # Not the version that was verified: it is news, not something to clean.
                self.nudges.changed.add(row["rel"])
                await self._jobs.store.transaction(partial(
                    ledger.clean_failed, watch_id=self.watch_id, rel=row["rel"], code="source_changed",
                    message="changed since its upload; not cleaned", retry_at=None))
                continue
            await self._bus.commit(partial(ledger.cleaned, watch_id=self.watch_id, rel=row["rel"]))

    def _clean_one(self, row: dict[str, Any], action: rules.AfterUpload) -> None:
        source = self.cfg.local(row["rel"])
        if not os.path.lexists(source) and row["kind"] != "dataset":
            # Stopped after the move or delete, before it was recorded: done, if it is where it went.
            if action.kind == "delete":
                return
            target = os.path.join(action.target, row["rel"])
            if os.path.lexists(target) and _holds(target, row["size"], row["sha256"]):
                return
        if not self._unchanged(row):
            raise _Changed()
        if action.kind == "delete":
            if row["kind"] == "dataset":
                shutil.rmtree(source)
            else:
                os.unlink(source)
            return
        target = os.path.join(action.target, row["rel"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            if row["kind"] != "dataset" and _holds(target, row["size"], row["sha256"]):
                # A move that copied across filesystems and stopped before removing the source.
                os.unlink(source)
                return
            raise OSError(errno.EEXIST, f"{target} exists already (and is not this file)")
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy under a temporary name, make it durable, put it in place in
            # one rename, then remove the source. A stop half-way leaves only the temporary copy,
            # which the next try overwrites; never a half file under the target's name.
            partial = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.dataerai-partial")
            if row["kind"] == "dataset":
                shutil.rmtree(partial, ignore_errors=True)
                shutil.copytree(source, partial)
                _fsync_tree(partial)
                os.rename(partial, target)
                _fsync_dir(os.path.dirname(target))
                shutil.rmtree(source)
            else:
                shutil.copy2(source, partial)
                with open(partial, "rb") as copied:
                    os.fsync(copied.fileno())
                os.rename(partial, target)
                _fsync_dir(os.path.dirname(target))
                os.unlink(source)

    async def _free_space(self) -> None:
        """The staging quota: while the disk has less free than asked, delete verified files, oldest first.

        At most ``BATCH`` files a step: a file that cannot go (changed, or the delete failed)
        is passed over, and the next step looks again."""
        quota = self.cfg.free_space_below
        if quota is None:
            return
        usage = await trio.to_thread.run_sync(shutil.disk_usage, self.cfg.root)
        short = quota.wanted(usage.total) - usage.free
        if short <= 0:
            return
        rows = await self._jobs.store.transaction(lambda conn: _oldest_verified(conn, self.watch_id, BATCH))
        for row in rows:
            if short <= 0:
                return
            try:
                await trio.to_thread.run_sync(self._clean_one, row, rules.AfterUpload("delete"))
            except (OSError, _Changed):
                continue
            short -= row["size"] or 0
            await self._bus.commit(partial(ledger.cleaned, watch_id=self.watch_id, rel=row["rel"]))
        if rows:
            self._log.info("freed space", files=len(rows), still_short_bytes=max(short, 0))


def _holds(path: str, size: int | None, sha256: str | None) -> bool:
    """Whether the file at ``path`` has exactly this size and SHA-256. Blocking."""
    if size is None or sha256 is None or os.path.getsize(path) != size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest() == sha256


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(top: str) -> None:
    for directory, _dirs, files in os.walk(top):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(directory)


class _Changed(Exception):
    pass


class _Under(Excludes):
    """Excludes for a walk of a subdirectory: patterns see paths from the watch's root."""

    def __init__(self, inner: Excludes, under: str) -> None:
        super().__init__(inner.patterns)
        self._under = under

    def matches(self, rel: str, is_dir: bool) -> bool:
        return super().matches(f"{self._under}/{rel}", is_dir)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        return super().excluded(f"{self._under}/{rel}", is_dir)


def _mark_queued(conn: Connection, _emit: Any, *, watch_id: str, queued: list[tuple[str, str]]) -> None:
    ledger.mark_queued(conn, watch_id, queued)


async def retry_failed_job(jobs: Jobs, watch_id: str, row: dict[str, Any]) -> bool:
    """A complete file whose upload job failed and whose backoff is over: that same job goes
    again (resuming from its checkpoints, into the asset it may have made already) rather than
    a new one that could make a second asset. False when that job is gone or ended otherwise,
    and a new one must be made."""
    job_id: str = row["job_id"]
    mark = partial(_mark_queued, watch_id=watch_id, queued=[(row["rel"], job_id)])
    try:
        await jobs.transition(job_id, "queued", only_from=("failed",), also=mark)
    except DataeraiError as exc:
        state = exc.data.get("state") if exc.code == "conflict" else None
        if state is None or state in contract.TERMINAL_JOB_STATES:
            return False
        # Retried by hand already, and not ended: the file waits for that job.
        await jobs.store.transaction(lambda conn: mark(conn, None))
    return True


def _oldest_verified(conn: Connection, watch_id: str, limit: int) -> list[dict[str, Any]]:
    w = ledger.W
    query = (sa.select(w).where(w.c.watch_id == watch_id, w.c.state == "verified", w.c.gone_at.is_(None))
             .order_by(w.c.mtime_ns).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]

