"""Every RPC method: its parameters, its help and its handler, in one registry.

Handlers validate what the user sent, then hand work to the services: the
queue (jobs), the scheduler, the event bus and the remote. Starting a job
answers once the job is durably queued; the bytes move later in the scheduler.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from dataerai.protocol import encode_notification

from dataeraid import __version__, log
from dataeraid.auth import Auth
from dataeraid.config import MAX_CHUNK_SIZE, MAX_PARTS, MIN_CHUNK_SIZE, Settings
from dataeraid.errors import DataeraiError, TransientError, from_os_error
from dataeraid.events import EventBus
from dataeraid.fileset import scan_source
from dataeraid.jobs import STATES, TERMINAL, Jobs, new_job_id
from dataeraid.remote import Remote
from dataeraid.rpc import Connection, Param, Registry
from dataeraid.scheduler import Scheduler

T = TypeVar("T")
_log = log.get("dataeraid.methods")

OWNER_TYPES = ("project", "user", "collection")
ASSET_FIELDS = ("title", "description", "alias", "tags", "metadata", "path")
ANALYSIS_MODES = ("non_destructive", "altering", "destructive", "in_situ", "ex_situ", "invasive", "non_invasive")


@dataclass(frozen=True)
class Services:
    jobs: Jobs
    bus: EventBus
    scheduler: Scheduler
    remote: Remote
    auth: Auth
    settings: Settings


async def _now(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """A direct request to the repository: a user is waiting, so no endless retries."""
    try:
        return await call()
    except TransientError as exc:
        raise DataeraiError("unavailable", f"{what}: the repository cannot be reached ({exc})") from exc


def _absolute(name: str, value: str) -> str:
    if not os.path.isabs(value):
        raise DataeraiError("invalid_argument", f"`{name}` must be an absolute path, not {value!r}")
    return os.path.normpath(value)


#: Event types a subscriber may ask for with ``types`` (``gap`` always comes through).
EVENT_TYPES = ("job.state", "job.progress", "job.priority", "auth.reloaded", "gap")


def _client_tag(conn: Connection, client: dict[str, Any] | None) -> str:
    """The job's fairness key: the client's ``name`` if it gave one, else its pid.

    The SDK sends ``{"pid": os.getpid(), "name": ...}``; a raw caller that sends
    nothing is known by its socket peer's pid (``SO_PEERCRED``). Processes that
    share a name share one fair share, on purpose: a tool made of several
    processes counts as one client.
    """
    client = client or {}
    name, pid = client.get("name"), client.get("pid")
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise DataeraiError("invalid_argument", "`client.name` must be a string of at most 100 characters")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise DataeraiError("invalid_argument", "`client.pid` must be an int")
    if name:
        return f"name:{name}"
    pid = pid if pid is not None else conn.peer_pid
    return f"pid:{pid}" if pid is not None else "unknown"


def build_registry(svc: Services) -> Registry:
    registry = Registry()
    add = registry.add

    @add("daemon.ping", "Is the daemon there? Its version and pid.")
    async def ping(conn: Connection) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    @add("daemon.status", "Version, pid, job counts by state, the last event id.")
    async def status(conn: Connection) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid(), "jobs": await svc.jobs.counts(),
                "last_event_id": svc.bus.last_id}

    @add("auth.status", "The logged-in user and the token's expiry, as the repository says.")
    async def auth_status(conn: Connection) -> dict[str, Any]:
        creds = svc.auth.require()
        me = await _now("checking the token", svc.remote.me)
        return {"server_url": creds.server_url, "user_id": me.get("user_id"), "user_email": me.get("email"),
                "scopes": me.get("scopes", []), "expires_at": me.get("token_expires_at")}

    @add("auth.reload", "Re-read the credentials file; jobs waiting for auth go on.")
    async def auth_reload(conn: Connection) -> dict[str, Any]:
        waiting = [j["job_id"] for j in await svc.jobs.list_all(["waiting_for_auth"])]
        creds = svc.auth.reload()
        result = {"logged_in": creds is not None, "server_url": creds.server_url if creds else None}
        # Durable, so a client that follows events learns why its waiting jobs move again.
        await svc.bus.commit(lambda c, emit: emit("auth.reloaded", None, {**result, "waiting_jobs": waiting}))
        return result

    @add("project.create", "Create a project (with its root collection, owner membership and allocation).",
         Param("name", "str", required=True), Param("description", "str", default="", nullable=False))
    async def project_create(conn: Connection, name: str, description: str) -> dict[str, Any]:
        if not name.strip():
            raise DataeraiError("invalid_argument", "`name` must not be empty")
        result: dict[str, Any] = await _now("creating the project",
                                            lambda: svc.remote.create_project(name, description))
        return result

    @add(
        "upload.start", "Queue an upload of a local file or directory as a new asset (or a new version of one).",
        Param("local_path", "str", required=True), Param("title", "str", required=True),
        Param("owner_type", "str", required=True), Param("owner_id", "str", required=True),
        Param("description", "str"), Param("alias", "str"), Param("tags", "list[str]"),
        Param("metadata", "object"), Param("collection_id", "str"), Param("asset_id", "str"),
        Param("chunk_size", "int"), Param("priority", "int", default=0, nullable=False),
        Param("deadline_s", "number"), Param("client", "object"), Param("job_id", "str"),
    )
    async def upload_start(conn: Connection, local_path: str, title: str, owner_type: str, owner_id: str,
                           description: str | None, alias: str | None, tags: list[str] | None,
                           metadata: dict[str, Any] | None, collection_id: str | None, asset_id: str | None,
                           chunk_size: int | None, priority: int, deadline_s: float | None,
                           client: dict[str, Any] | None, job_id: str | None) -> dict[str, Any]:
        tag = _client_tag(conn, client)
        job_id = _job_id(job_id)
        path = _absolute("local_path", local_path)
        if owner_type not in OWNER_TYPES:
            raise DataeraiError("invalid_argument", f"`owner_type` must be one of {', '.join(OWNER_TYPES)}")
        chunk = _chunk_size(chunk_size, svc.settings)
        try:
            root, files, skipped = await trio.to_thread.run_sync(scan_source, path)
        except OSError as exc:
            raise from_os_error(exc, f"cannot read {path}") from exc
        if not files:
            raise DataeraiError("invalid_argument", f"{path} holds no regular files to upload")
        total = sum(f.size for f in files)
        # A repository takes at most MAX_PARTS parts (as S3 does): big sources get bigger parts.
        chunk = max(chunk, _ceil_div(_ceil_div(total, MAX_PARTS), MIN_CHUNK_SIZE) * MIN_CHUNK_SIZE)
        if chunk > MAX_CHUNK_SIZE:
            raise DataeraiError("invalid_argument", f"{path} is larger than {MAX_PARTS} parts of 5 GiB")
        unreadable = await trio.to_thread.run_sync(
            lambda: next((f.path for f in files if not os.access(os.path.join(root, f.path), os.R_OK)), None)
        )
        if unreadable is not None:
            raise DataeraiError("permission_denied", f"{os.path.join(root, unreadable)} is not readable")
        params = {"title": title, "owner_type": owner_type, "owner_id": owner_id, "description": description,
                  "alias": alias, "tags": tags or [], "metadata": metadata or {}, "collection_id": collection_id,
                  "asset_id": asset_id, "source_root": root, "source_files": [f.to_json() for f in files],
                  "skipped": skipped}
        single = files[0] if len(files) == 1 and "/" not in files[0].path else None
        return await svc.jobs.create({
            "job_id": job_id, "kind": "upload", "priority": _priority(priority), "params": params,
            "local_path": path, "file_name": os.path.basename(path), "source_size": total,
            "source_mtime_ns": single.mtime_ns if single else None,
            "source_inode": single.inode if single else None, "chunk_size": chunk,
            "chunk_count": max(1, -(-total // chunk)), "bytes_total": total,
            "deadline": _deadline(deadline_s), "client": tag,
        })

    @add(
        "download.start", "Queue a download of an asset's content into a local directory.",
        Param("asset_id", "str", required=True), Param("dest_dir", "str", required=True),
        Param("content_id", "str"), Param("overwrite", "bool", default=False, nullable=False),
        Param("chunk_size", "int"), Param("priority", "int", default=0, nullable=False),
        Param("deadline_s", "number"), Param("client", "object"), Param("job_id", "str"),
    )
    async def download_start(conn: Connection, asset_id: str, dest_dir: str, content_id: str | None,
                             overwrite: bool, chunk_size: int | None, priority: int,
                             deadline_s: float | None, client: dict[str, Any] | None,
                             job_id: str | None) -> dict[str, Any]:
        tag = _client_tag(conn, client)
        job_id = _job_id(job_id)
        dest = _absolute("dest_dir", dest_dir)
        if await trio.to_thread.run_sync(lambda: os.path.exists(dest) and not os.path.isdir(dest)):
            raise DataeraiError("invalid_argument", f"{dest} exists and is not a directory")
        chunk = _chunk_size(chunk_size, svc.settings)
        return await svc.jobs.create({
            "job_id": job_id, "kind": "download", "priority": _priority(priority),
            "params": {"asset_id": asset_id, "content_id": content_id, "overwrite": overwrite},
            "dest_dir": dest, "chunk_size": chunk, "deadline": _deadline(deadline_s), "client": tag,
        })

    @add("job.get", "One job.", Param("job_id", "str", required=True))
    async def job_get(conn: Connection, job_id: str) -> dict[str, Any]:
        return await svc.jobs.get(job_id)

    @add("job.list", "All jobs, or those in the given states.", Param("states", "list[str]"))
    async def job_list(conn: Connection, states: list[str] | None) -> dict[str, Any]:
        bad = sorted(set(states or ()) - set(STATES))
        if bad:
            raise DataeraiError("invalid_argument", f"unknown states {bad}; states are {', '.join(STATES)}")
        return {"jobs": await svc.jobs.list_all(states)}

    @add("job.wait", "Wait until a job is completed, failed or cancelled.",
         Param("job_id", "str", required=True), Param("timeout_s", "number"), waits=True)
    async def job_wait(conn: Connection, job_id: str, timeout_s: float | None) -> dict[str, Any]:
        subscription = await svc.bus.subscribe(jobs=[job_id])
        try:
            job = await svc.jobs.get(job_id)
            with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
                while job["state"] not in TERMINAL:
                    async for event in subscription:
                        if event["type"] == "job.state":
                            job = event["job"]
                            break
                        if event["type"] == "gap":
                            job = await svc.jobs.get(job_id)
                            break
                return job
            raise DataeraiError("timeout", f"job {job_id} is still {job['state']}; it goes on in the daemon",
                                job_id=job_id)
        finally:
            subscription.close()

    @add("job.cancel", "Cancel a job; a running one stops at once.", Param("job_id", "str", required=True))
    async def job_cancel(conn: Connection, job_id: str) -> dict[str, Any]:
        job = await svc.jobs.transition(job_id, "cancelled", fields={
            "error_code": "cancelled", "error_message": "cancelled by request"})
        svc.scheduler.stop(job_id)
        if job["upload_id"]:
            # The parts sent so far are of no use to anyone: let the repository drop them.
            with trio.move_on_after(10):
                try:
                    await svc.remote.abort_upload(job["upload_id"])
                except (DataeraiError, TransientError) as exc:
                    _log.info("could not abort the upload session", job_id=job_id, error=str(exc))
        return job

    @add("job.pause", "Hold a queued or running job; it keeps its checkpoints.", Param("job_id", "str", required=True))
    async def job_pause(conn: Connection, job_id: str) -> dict[str, Any]:
        job = await svc.jobs.transition(job_id, "paused")
        svc.scheduler.stop(job_id)
        return job

    @add("job.resume", "Queue a paused job again.", Param("job_id", "str", required=True))
    async def job_resume(conn: Connection, job_id: str) -> dict[str, Any]:
        return await svc.jobs.transition(job_id, "queued", only_from=("paused",))

    @add("job.retry", "Queue a failed or cancelled job again, from its checkpoints.",
         Param("job_id", "str", required=True))
    async def job_retry(conn: Connection, job_id: str) -> dict[str, Any]:
        # A cancelled upload's repository session was aborted; the engine sees that and starts a new one.
        return await svc.jobs.transition(job_id, "queued", only_from=("failed", "cancelled"))

    @add("job.set_priority", "Change a job's priority (higher starts first); running jobs are not preempted.",
         Param("job_id", "str", required=True), Param("priority", "int", required=True))
    async def job_set_priority(conn: Connection, job_id: str, priority: int) -> dict[str, Any]:
        return await svc.jobs.set_priority(job_id, _priority(priority))

    @add("asset.get", "An asset's metadata.", Param("asset_id", "str", required=True))
    async def asset_get(conn: Connection, asset_id: str) -> dict[str, Any]:
        return await _now("reading the asset", lambda: svc.remote.get_asset(asset_id))

    @add("asset.update", "Update an asset's metadata fields.", Param("asset_id", "str", required=True),
         Param("title", "str", default=None), Param("description", "str"), Param("alias", "str"),
         Param("tags", "list[str]"), Param("metadata", "object"), Param("path", "str"), Param("fields", "object"))
    async def asset_update(conn: Connection, asset_id: str, fields: dict[str, Any] | None,
                           **named: Any) -> dict[str, Any]:
        changes = {k: v for k, v in named.items() if v is not None}
        for key, value in (fields or {}).items():
            if key not in ASSET_FIELDS:
                raise DataeraiError("invalid_argument", f"unknown asset field `{key}`; fields are {ASSET_FIELDS}")
            changes[key] = value
        if not changes:
            raise DataeraiError("invalid_argument", "nothing to update")
        return await _now("updating the asset", lambda: svc.remote.update_asset(asset_id, changes))

    @add("asset.list", "Assets of a project or collection, by path prefix or glob, a page at a time.",
         Param("project_id", "str"), Param("collection_id", "str"), Param("path_prefix", "str"),
         Param("glob", "str"), Param("limit", "int"), Param("cursor", "str"))
    async def asset_list(conn: Connection, project_id: str | None, collection_id: str | None,
                         path_prefix: str | None, glob: str | None, limit: int | None,
                         cursor: str | None) -> dict[str, Any]:
        if (project_id is None) == (collection_id is None):
            raise DataeraiError("invalid_argument", "give exactly one of `project_id` and `collection_id`")
        query = {k: str(v) for k, v in (("project_id", project_id), ("collection_id", collection_id),
                                        ("path_prefix", path_prefix), ("glob", glob), ("limit", limit),
                                        ("cursor", cursor)) if v is not None}
        return await _now("listing assets", lambda: svc.remote.list_assets(query))

    @add("asset.delete", "Delete an asset, every content version and its relationships.",
         Param("asset_id", "str", required=True))
    async def asset_delete(conn: Connection, asset_id: str) -> dict[str, Any]:
        await _now("deleting the asset", lambda: svc.remote.delete_asset(asset_id))
        return {"asset_id": asset_id, "deleted": True}

    @add("asset.files", "The files of an asset's content: one by exact `path`, or a page by `prefix`.",
         Param("asset_id", "str", required=True), Param("path", "str"), Param("prefix", "str"),
         Param("content_id", "str"), Param("limit", "int"), Param("cursor", "str"))
    async def asset_files(conn: Connection, asset_id: str, path: str | None, prefix: str | None,
                          content_id: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
        if path is not None and (prefix is not None or cursor is not None):
            raise DataeraiError("invalid_argument", "`path` names one file; it goes without `prefix` and `cursor`")
        query = {k: str(v) for k, v in (("path", path), ("prefix", prefix), ("content_id", content_id),
                                        ("limit", limit), ("cursor", cursor)) if v is not None}
        return await _now("reading the asset's files", lambda: svc.remote.asset_files(asset_id, query))

    @add("relationship.create", "Link an asset (the dependent) to the asset it derives from.",
         Param("from_asset_id", "str", required=True), Param("to_asset_id", "str", required=True),
         Param("type", "str", required=True), Param("analysis_mode", "str"), Param("qualifier_note", "str"),
         Param("qualifier_time", "str"), Param("qualifiers", "object"))
    async def relationship_create(conn: Connection, from_asset_id: str, to_asset_id: str, type: str,
                                  analysis_mode: str | None, qualifier_note: str | None,
                                  qualifier_time: str | None, qualifiers: dict[str, Any] | None) -> dict[str, Any]:
        if not type.strip() or len(type) > 255:
            raise DataeraiError("invalid_argument", "`type` must be 1 to 255 characters")
        if analysis_mode is not None and analysis_mode not in ANALYSIS_MODES:
            raise DataeraiError("invalid_argument", f"`analysis_mode` must be one of {', '.join(ANALYSIS_MODES)}")
        body = {"to_asset_id": to_asset_id, "rel_type": type, "analysis_mode": analysis_mode,
                "qualifier_note": qualifier_note, "qualifier_time": qualifier_time, "qualifiers": qualifiers}
        return await _now("creating the relationship",
                          lambda: svc.remote.create_relationship(from_asset_id, body))

    @add("relationship.list", "An asset's relationships, outgoing and incoming.",
         Param("asset_id", "str", required=True))
    async def relationship_list(conn: Connection, asset_id: str) -> dict[str, Any]:
        return await _now("listing relationships", lambda: svc.remote.list_relationships(asset_id))

    @add("project.list", "The projects the signed-in user is a member of.")
    async def project_list(conn: Connection) -> dict[str, Any]:
        return await _now("listing projects", svc.remote.list_projects)

    @add("collection.create", "Create a collection in a project (below its root collection by default).",
         Param("project_id", "str", required=True), Param("name", "str", required=True), Param("parent_id", "str"))
    async def collection_create(conn: Connection, project_id: str, name: str, parent_id: str | None) -> dict[str, Any]:
        body = {"project_id": project_id, "name": name, "parent_id": parent_id}
        return await _now("creating the collection", lambda: svc.remote.create_collection(body))

    @add("collection.list", "A project's collections, its root first.", Param("project_id", "str", required=True))
    async def collection_list(conn: Connection, project_id: str) -> dict[str, Any]:
        return await _now("listing collections", lambda: svc.remote.list_collections(project_id))

    @add("events.subscribe", "Receive `event` notifications on this connection (replaying after `since`).",
         Param("since", "int"), Param("jobs", "list[str]"), Param("types", "list[str]"))
    async def events_subscribe(conn: Connection, since: int | None, jobs: list[str] | None,
                               types: list[str] | None) -> dict[str, Any]:
        bad = sorted(set(types or ()) - set(EVENT_TYPES))
        if bad:
            raise DataeraiError("invalid_argument", f"unknown event types {bad}; types are {', '.join(EVENT_TYPES)}")
        if since is not None and since < 0:
            raise DataeraiError("invalid_argument", "`since` must be an event id, 0 or more")
        if conn.subscription_scope is not None:
            conn.subscription_scope.cancel()
        subscription = await svc.bus.subscribe(since=since, jobs=jobs, types=types)
        scope = trio.CancelScope()
        conn.subscription_scope = scope
        last = svc.bus.last_id

        async def pump() -> None:
            with scope:
                try:
                    async for event in subscription:
                        await conn.send(encode_notification("event", event))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    subscription.close()

        assert conn.nursery is not None
        conn.nursery.start_soon(pump)
        return {"last_event_id": last}

    @add("events.list", "Stored (durable) events after `since`, oldest first, at most `limit`.",
         Param("since", "int", default=0, nullable=False), Param("jobs", "list[str]"), Param("types", "list[str]"),
         Param("limit", "int", default=1000, nullable=False))
    async def events_list(conn: Connection, since: int, jobs: list[str] | None, types: list[str] | None,
                          limit: int) -> dict[str, Any]:
        bad = sorted(set(types or ()) - set(EVENT_TYPES))
        if bad:
            raise DataeraiError("invalid_argument", f"unknown event types {bad}; types are {', '.join(EVENT_TYPES)}")
        if not 1 <= limit <= 10_000:
            raise DataeraiError("invalid_argument", "`limit` must be between 1 and 10000")
        last = svc.bus.last_id
        events = await svc.bus.store.events_since(since, jobs, limit=limit, types=types)
        return {"events": events, "last_event_id": last}

    @add("events.unsubscribe", "Stop the event notifications on this connection.")
    async def events_unsubscribe(conn: Connection) -> dict[str, Any]:
        if conn.subscription_scope is not None:
            conn.subscription_scope.cancel()
            conn.subscription_scope = None
        return {}

    return registry


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _chunk_size(requested: int | None, settings: Settings) -> int:
    chunk = requested or settings.default_chunk_size
    if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
        raise DataeraiError("invalid_argument",
                            f"`chunk_size` must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
    return chunk


_JOB_ID = re.compile(r"job_[0-9a-f]{12}[0-9a-f]{12}")


def _job_id(job_id: str | None) -> str:
    """The caller's id for the new job (so a start that timed out still names it), else a new one."""
    if job_id is None:
        return new_job_id()
    if not _JOB_ID.fullmatch(job_id):
        raise DataeraiError("invalid_argument", "`job_id` must look like the daemon's own: job_ and 24 hex digits")
    return job_id


def _priority(priority: int) -> int:
    if not -(2**31) <= priority < 2**31:
        raise DataeraiError("invalid_argument", "`priority` must be a 32-bit signed int (higher starts first)")
    return priority


def _deadline(deadline_s: float | None) -> float | None:
    if deadline_s is None:
        return None
    if deadline_s <= 0:
        raise DataeraiError("invalid_argument", "`deadline_s` must be positive")
    return time.time() + deadline_s


