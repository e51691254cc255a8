"""The watches of one daemon: their rows, their tasks, and what the ``watch.*`` methods do.

    WatchManager.serve()             in the daemon's root nursery, after the scheduler
     └─ one Watcher.run() per watch  each in its own cancel scope: pause and remove cancel it

A paused watch has no task. An unavailable one keeps its task, which looks at the root
every few seconds and goes on by itself when it is back. Job ends reach the ledger in the
job's own transaction (``record_job_end``, a ``Jobs`` end listener) and then wake the
watch the file belongs to, so an upload is verified and cleaned without waiting for a
timer.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import partial
from typing import Any

import trio
from dataerai import contract
from sqlalchemy.engine import Connection

from dataeraid import log
from dataeraid.config import LiveSettings, Settings
from dataeraid.errors import DataeraiError
from dataeraid.events import Emit
from dataeraid.jobs import Jobs
from dataeraid.remote import Remote
from dataeraid.store import Row
from dataeraid.watch import ledger
from dataeraid.watch.config import WatchConfig, check_params
from dataeraid.watch.mounts import events_trustworthy
from dataeraid.watch.watcher import RootProblem, Watcher, leave_marker, root_identity

_log = log.get("dataeraid.watch")

#: Rows of files cleaned, or gone from the disk, this long ago are forgotten (docs/watch.md).
FORGET_AFTER_S = 30 * 86400.0


class WatchManager:
    def __init__(self, jobs: Jobs, remote: Remote, settings: Settings | LiveSettings) -> None:
        self._jobs = jobs
        self._bus = jobs.bus
        self._store = jobs.store
        self._remote = remote
        # A reload's watch_retry_* and default_chunk_size apply from the next failure or file on.
        self._settings = LiveSettings.of(settings)
        self._watchers: dict[str, Watcher] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._windows: dict[str, float] = {}
        self._modes: dict[str, tuple[str, tuple[str, str] | None]] = {}
        jobs.add_end_listener(self._record_job_end, self._job_ended)

    def _retries(self) -> ledger.Retries:
        settings = self._settings.current
        return ledger.Retries(settings.watch_max_attempts, settings.watch_retry_base_s)

    # --- the daemon's side ----------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rows = await self._store.transaction(ledger.all_watches)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for row in rows:
                self._start(row)
            task_status.started()
            nursery.start_soon(self._prune_forever)
            await trio.sleep_forever()

    def _start(self, row: Row) -> None:
        watch_id = row["watch_id"]
        self._windows[watch_id] = WatchConfig.from_row(row).window_s()
        if row["user_paused"] or self._nursery is None:
            return
        watcher = Watcher(row, self._jobs, self._remote, self._settings, self._state_changed)
        scope = trio.CancelScope()
        self._watchers[watch_id] = watcher
        self._scopes[watch_id] = scope

        async def run() -> None:
            try:
                with scope:
                    await watcher.run()
            except Exception:
                # One watch's bug must not stop the daemon or the other watches; say so, and retry it later.
                _log.exception("watch crashed; starting it again in a minute", watch_id=watch_id)
                with trio.move_on_after(60):
                    await trio.sleep_forever()
                if self._watchers.get(watch_id) is watcher:
                    self._watchers.pop(watch_id, None)
                    self._scopes.pop(watch_id, None)
                    fresh = await self._store.transaction(lambda conn: ledger.fetch_watch(conn, watch_id))
                    if fresh is not None:
                        self._start(fresh)
            finally:
                if self._watchers.get(watch_id) is watcher and scope.cancel_called:
                    self._watchers.pop(watch_id, None)
                    self._scopes.pop(watch_id, None)

        self._nursery.start_soon(run)

    def _stop(self, watch_id: str) -> None:
        scope = self._scopes.pop(watch_id, None)
        self._watchers.pop(watch_id, None)
        if scope is not None:
            scope.cancel()

    async def _prune_forever(self) -> None:
        while True:
            older_than = time.time() - FORGET_AFTER_S
            pruned = 0
            while True:
                batch = await self._store.transaction(
                    partial(ledger.prune, older_than=older_than, limit=ledger.PRUNE_BATCH))
                pruned += batch
                if batch < ledger.PRUNE_BATCH:
                    break
            if pruned:
                _log.info("forgot old watched files", count=pruned)
            await trio.sleep(3600)

    # --- job ends -------------------------------------------------------------------

    def _record_job_end(self, conn: Connection, emit: Emit, job: Row, state: str) -> str | None:
        if state not in contract.TERMINAL_JOB_STATES:
            return None
        return ledger.record_job_end(conn, emit, job, state, self._windows, self._retries())

    def _job_ended(self, watch_id: str) -> None:
        watcher = self._watchers.get(watch_id)
        if watcher is not None:
            watcher.poke()

    # --- state as clients see it ---------------------------------------------------------

    def _state_changed(self, watch_id: str) -> None:
        """A watcher's root problem or mode changed: record it durably, with its event."""
        watcher = self._watchers.get(watch_id)
        if watcher is None or self._nursery is None:
            return
        row = watcher._row
        mode = (watcher.mode, watcher.mode_reason)
        self._nursery.start_soon(self._write_state, watch_id, row["problem_code"], row["problem_message"], mode)

    async def _write_state(self, watch_id: str, code: str | None, message: str | None,
                           mode: tuple[str, tuple[str, str] | None]) -> None:
        def write(conn: Connection, emit: Emit) -> None:
            before = ledger.fetch_watch(conn, watch_id)
            if before is None:
                return
            ledger.update_watch(conn, watch_id, problem_code=code, problem_message=message)
            after = ledger.fetch_watch(conn, watch_id)
            assert after is not None
            # A change of mode (file events lost: polling now) is news too, though the state is the same.
            self._emit_state(conn, emit, before, after, force=mode != self._modes.get(watch_id, ("events", None)))
            self._modes[watch_id] = mode

        await self._bus.commit(write)

    def _emit_state(self, conn: Connection, emit: Emit, before: Row | None, after: Row | None, *,
                    force: bool = False) -> None:
        old = self._state_of(before) if before else None
        new = self._state_of(after) if after else None
        if not force and before is not None and after is not None and old == new and (
                before["problem_code"], before["problem_message"]) == (after["problem_code"], after["problem_message"]):
            return
        watch_id = (after or before or {})["watch_id"]
        emit("watch.state", None, {"watch_id": watch_id, "state": new, "previous_state": old,
                                   "watch": self._wire(conn, after) if after else None})

    @staticmethod
    def _state_of(row: Row) -> str:
        if row["user_paused"]:
            return "paused"
        return "unavailable" if row["problem_code"] else "active"

    def _wire(self, conn: Connection, row: Row) -> contract.WatchObject:
        params = row["params"]
        watcher = self._watchers.get(row["watch_id"])
        now = time.time()
        oldest = ledger.oldest_pending(conn, row["watch_id"])
        polling = params.get("force_polling") or (watcher is not None and watcher.mode == "polling")
        reason = watcher.mode_reason if watcher is not None else None
        problem: contract.WatchProblemObject | None = None
        if row["problem_code"]:
            problem = {"code": row["problem_code"], "message": row["problem_message"] or ""}
        return {
            "watch_id": row["watch_id"],
            "root": row["root"],
            "state": self._state_of(row),  # type: ignore[typeddict-item]
            "mode": "polling" if polling else "events",
            "project_id": params["project_id"],
            "collection_id": params.get("collection_id"),
            "prefix": params.get("prefix"),
            "complete_when": params["complete_when"],
            "after_upload": params["after_upload"],
            "excludes": list(params.get("excludes") or []),
            "tags": list(params.get("tags") or []),
            "metadata_template": params.get("metadata_template"),
            "priority": int(params.get("priority", 0)),
            "rescan_interval_s": float(params["rescan_interval_s"]),
            "free_space_below": params.get("free_space_below"),
            "force_polling": bool(params.get("force_polling")),
            "window": params.get("window"),
            "problem": problem,
            "mode_reason": {"code": reason[0], "message": reason[1]} if reason else None,
            "files": ledger.counts(conn, row["watch_id"]),
            "lag_s": round(now - oldest[1], 3) if oldest else None,
            "oldest_pending": oldest[0] if oldest else None,
            "last_scan_at": ledger.iso(row["last_scan_at"]),
            "created_at": ledger.iso(row["created_at"]) or "",
            "updated_at": ledger.iso(row["updated_at"]) or "",
        }

    async def _read(self, watch_id: str) -> contract.WatchObject:
        def read(conn: Connection) -> contract.WatchObject:
            row = ledger.fetch_watch(conn, watch_id)
            if row is None:
                raise DataeraiError("not_found", f"no watch {watch_id}")
            return self._wire(conn, row)

        return await self._store.transaction(read)

    # --- what the watch.* methods do ------------------------------------------------------

    async def add(self, root: str, params: dict[str, Any], watch_id: str | None) -> contract.WatchObject:
        root = os.path.normpath(root)  # noqa: ASYNC240 - string work: `root` is absolute (LocalPath)
        try:
            dev, inode = await trio.to_thread.run_sync(root_identity, root)
        except FileNotFoundError:
            raise DataeraiError("not_found", f"{root} does not exist", param="root") from None
        except RootProblem as problem:
            raise DataeraiError("invalid_argument", problem.message, param="root") from None
        except OSError as exc:
            raise DataeraiError("permission_denied" if isinstance(exc, PermissionError) else "io_error",
                                f"cannot read {root}: {exc.strerror or exc}", param="root") from None
        if not await trio.to_thread.run_sync(os.access, root, os.R_OK | os.X_OK):
            raise DataeraiError("permission_denied", f"{root} cannot be read by the daemon's user", param="root")
        usable, _ = await trio.to_thread.run_sync(events_trustworthy, root)
        try:
            stored = check_params(root, params, events_usable=usable)
        except ValueError as exc:
            param, _, message = str(exc).partition(": ")
            raise DataeraiError("invalid_argument", message, param=param) from None
        watch_id = watch_id or contract.new_id("watch")
        marker = f"{WatchConfig.from_row({'watch_id': watch_id, 'root': root, 'params': stored}).marker}"
        now = time.time()

        def write(conn: Connection, emit: Emit) -> tuple[Row, bool]:
            existing = ledger.fetch_watch(conn, watch_id)
            if existing is not None:
                return existing, False
            for other in ledger.all_watches(conn):
                a, b = other["root"].rstrip("/") + "/", root.rstrip("/") + "/"
                if a.startswith(b) or b.startswith(a):
                    raise DataeraiError("conflict", f"{root} overlaps the folder of watch {other['watch_id']} "
                                                    f"({other['root']}); a file must belong to one watch",
                                        param="root", watch_id=other["watch_id"])
            row = {"watch_id": watch_id, "root": root, "params": stored, "user_paused": False,
                   "root_dev": dev, "root_inode": inode, "marker": None, "created_at": now,
                   "updated_at": now, "scan_gen": 0}
            conn.execute(ledger.WATCHES.insert().values(**row))
            fresh = ledger.fetch_watch(conn, watch_id)
            self._emit_state(conn, emit, None, fresh)
            assert fresh is not None
            return fresh, True

        if await trio.to_thread.run_sync(leave_marker, root, marker):
            row, created = await self._bus.commit(write)
            if created:
                await self._store.transaction(
                    lambda conn: ledger.update_watch(conn, watch_id, marker=marker))
                row = {**row, "marker": marker}
        else:
            row, created = await self._bus.commit(write)
        if created:
            _log.info("watch added", watch_id=watch_id, root=root, complete_when=stored["complete_when"],
                      after_upload=stored["after_upload"])
            self._start(row)
        return await self._read(watch_id)

    async def all(self) -> list[contract.WatchObject]:
        def read(conn: Connection) -> list[contract.WatchObject]:
            return [self._wire(conn, row) for row in ledger.all_watches(conn)]

        return await self._store.transaction(read)

    async def get(self, watch_id: str) -> contract.WatchObject:
        return await self._read(watch_id)

    async def files(self, watch_id: str, states: list[str] | None, after: str | None,
                    limit: int) -> dict[str, Any]:
        def read(conn: Connection) -> dict[str, Any]:
            if ledger.fetch_watch(conn, watch_id) is None:
                raise DataeraiError("not_found", f"no watch {watch_id}")
            rows = ledger.list_files(conn, watch_id, states, after, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            return {"files": [ledger.file_to_wire(r) for r in rows],
                    "next_after": rows[-1]["rel"] if more and rows else None}

        return await self._store.transaction(read)

    async def _change(self, watch_id: str, **fields: Any) -> tuple[Row, Row]:
        def write(conn: Connection, emit: Emit) -> tuple[Row, Row]:
            before = ledger.fetch_watch(conn, watch_id)
            if before is None:
                raise DataeraiError("not_found", f"no watch {watch_id}")
            ledger.update_watch(conn, watch_id, **fields)
            after = ledger.fetch_watch(conn, watch_id)
            assert after is not None
            self._emit_state(conn, emit, before, after)
            return before, after

        return await self._bus.commit(write)

    async def pause(self, watch_id: str) -> contract.WatchObject:
        await self._change(watch_id, user_paused=True)
        self._stop(watch_id)
        return await self._read(watch_id)

    async def resume(self, watch_id: str) -> contract.WatchObject:
        """Go on; a root that was replaced, emptied or lost its marker is adopted as it is now."""
        row = await self._store.transaction(lambda conn: ledger.fetch_watch(conn, watch_id))
        if row is None:
            raise DataeraiError("not_found", f"no watch {watch_id}")
        fields: dict[str, Any] = {"user_paused": False}
        if row["problem_code"] in ("root_replaced", "root_empty", "root_unmounted"):
            try:
                dev, inode = await trio.to_thread.run_sync(root_identity, row["root"])
            except (OSError, RootProblem):
                pass  # still missing: it stays unavailable until it is back
            else:
                marker = WatchConfig.from_row(row).marker
                wrote = await trio.to_thread.run_sync(leave_marker, row["root"], marker)
                fields.update(root_dev=dev, root_inode=inode, marker=marker if wrote else None,
                              problem_code=None, problem_message=None)
                # Files on record that are not there now were moved away by someone: the scan forgets
                # those that never reached the repository.
        self._stop(watch_id)
        _, after = await self._change(watch_id, **fields)
        self._start(after)
        return await self._read(watch_id)

    async def rescan(self, watch_id: str) -> contract.WatchObject:
        """Scan now, and try quarantined files again."""
        retried = await self._store.transaction(lambda conn: ledger.retry_quarantined(conn, watch_id))
        watcher = self._watchers.get(watch_id)
        if watcher is not None:
            watcher.poke(rescan=True)
        _log.info("rescan asked", watch_id=watch_id, quarantined_retried=retried)
        return await self._read(watch_id)

    async def remove(self, watch_id: str) -> dict[str, Any]:
        """Forget the watch and its files' records. Jobs already queued finish; local files stay."""
        self._stop(watch_id)

        def write(conn: Connection, emit: Emit) -> None:
            before = ledger.fetch_watch(conn, watch_id)
            if before is None:
                raise DataeraiError("not_found", f"no watch {watch_id}")
            self._emit_state(conn, emit, before, None)
            conn.execute(ledger.W.delete().where(ledger.W.c.watch_id == watch_id))
            conn.execute(ledger.WATCHES.delete().where(ledger.WATCHES.c.watch_id == watch_id))

        row = await self._store.transaction(lambda conn: ledger.fetch_watch(conn, watch_id))
        await self._bus.commit(write)
        self._windows.pop(watch_id, None)
        if row is not None and row["marker"]:
            marker = os.path.join(row["root"], row["marker"])
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(os.unlink, marker)
        return {"watch_id": watch_id, "removed": True}

