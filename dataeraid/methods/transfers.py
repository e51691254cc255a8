"""``upload.start`` and ``download.start``: queue a transfer. Each answers once the job is
durably queued; the bytes move later, in the scheduler."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from dataerai import contract, protocol

from dataeraid.errors import DataeraiError, from_os_error
from dataeraid.fileset import scan_source
from dataeraid.methods._call import Call
from dataeraid.rpc import Connection, Methods, Param
from dataeraid.rpc.params import (
    FREE_TEXT,
    TAGS,
    TITLE,
    Boolean,
    Choice,
    Id,
    Integer,
    Items,
    JsonObject,
    LocalPath,
    Number,
    Record,
    RepositoryPath,
    Text,
    TransferWindow,
    item_error,
)
from dataeraid.store import Row

methods = Methods("transfers")

#: A deadline of more than ten years is a mistake, not a plan.
MAX_DEADLINE_S = 10 * 365 * 86400.0

_COMMON = (
    Param("chunk_size", Integer(contract.MIN_PART_SIZE, contract.MAX_PART_SIZE),
          "bytes per part (default 64 MiB; raised so that no source has more than 10,000 parts)"),
    Param("priority", Integer(contract.MIN_PRIORITY, contract.MAX_PRIORITY), "higher starts first", default=0),
    Param("deadline_s", Number(0, MAX_DEADLINE_S, positive=True), "give up retrying after this many seconds"),
    Param("client", Record({"pid": Integer(0, 2**31 - 1), "name": Text(100)}),
          "the fairness tag: processes that give the same `name` share one fair share"),
    Param("job_id", Id(("job",)), "the caller's id for the job, so a start whose answer was lost still names "
                                  "it; an existing `job_id` answers with that job and changes nothing"),
    Param("window", TransferWindow(), "move bytes only inside this transfer window (local time); outside it the "
                                      "job is `scheduled` (docs/job-states.md#transfer-windows)"),
)


def client_tag(conn: Connection, client: dict[str, Any] | None) -> str:
    """The job's fairness key: the client's ``name`` if it gave one, else its pid.

    The SDK sends ``{"pid": os.getpid(), "name": ...}``; a raw caller that sends
    nothing is known by its socket peer's pid (``SO_PEERCRED``). Processes that
    share a name share one fair share, on purpose: a tool made of several
    processes counts as one client.
    """
    client = client or {}
    name, pid = client.get("name"), client.get("pid")
    if name:
        return f"name:{name}"
    pid = pid if pid is not None else conn.peer_pid
    return f"pid:{pid}" if pid is not None else "unknown"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _normal(path: str) -> str:
    """``a//b/./c`` as ``a/b/c``: the form the job records (pure string work, no I/O)."""
    return os.path.normpath(path)


def _deadline(deadline_s: float | None) -> float | None:
    return None if deadline_s is None else time.time() + deadline_s


#: What a new asset must be given, in the order a caller is told about the first one missing.
NEW_ASSET_PARAMS = ("title", "owner_type", "owner_id")


def check_upload_target(title: str | None, owner_type: str | None, owner_id: str | None,
                        asset_id: str | None) -> None:
    """Refuse, as ``invalid_argument`` naming the parameter, an upload that says too little
    about where it goes.

    A new asset needs ``title``, ``owner_type`` and ``owner_id``. A new version of
    ``asset_id`` needs none of them (the asset has its own), but an owner given with it
    is given whole, as the repository checks it against the asset's.
    """
    given = {"title": title, "owner_type": owner_type, "owner_id": owner_id}
    if asset_id is None:
        missing = next((name for name in NEW_ASSET_PARAMS if given[name] is None), None)
        if missing is not None:
            raise DataeraiError("invalid_argument", f"upload.start needs `{missing}` (or `asset_id`, to make a "
                                                    "new version of an existing asset)", param=missing)
    elif (owner_type is None) != (owner_id is None):
        missing = "owner_id" if owner_id is None else "owner_type"
        raise DataeraiError("invalid_argument", "`owner_type` and `owner_id` go together: give both (they must "
                                                "name the asset's owner) or neither", param=missing)
    if owner_type is not None and owner_id is not None:
        owner_kind = contract.OWNER_ID_KINDS[owner_type]
        if not contract.is_id(owner_kind, owner_id):
            raise DataeraiError("invalid_argument", f"`owner_id` must be a {owner_kind} id for owner_type "
                                                    f"{owner_type!r}", param="owner_id")


_UPLOAD_PARAMS = (
    Param("local_path", LocalPath(), "the file or directory", required=True),
    Param("title", TITLE, "the new asset's title (required without `asset_id`)"),
    Param("owner_type", Choice(contract.OWNER_TYPES),
          "who owns the new asset (required without `asset_id`; with it, if given, the asset's)"),
    Param("owner_id", Id(("project", "user", "collection")),
          "its id, of the kind `owner_type` names (given exactly when `owner_type` is)"),
    Param("description", FREE_TEXT),
    Param("alias", Text(contract.MAX_TAG_LENGTH)),
    Param("tags", TAGS),
    Param("metadata", JsonObject(), "free-form metadata"),
    Param("collection_id", Id(("collection",)), "file the asset in this collection"),
    Param("asset_id", Id(("asset",)), "make a new version of this asset"),
    Param("path", RepositoryPath(), "the asset's repository path (listing and globs use it): a new asset's "
                                    "(default: the file or directory name), or where a new version moves the asset "
                                    "(default: it stays where it is)"),
    *_COMMON,
)


def _plan_upload(p: dict[str, Any], default_chunk: int, tag: str) -> dict[str, Any]:
    """The job row of one upload, its source scanned and checked; blocking (file system reads).

    Raises what ``upload.start`` answers for a source it refuses.
    """
    check_upload_target(p["title"], p["owner_type"], p["owner_id"], p["asset_id"])
    source = _normal(p["local_path"])
    chunk = p["chunk_size"] or default_chunk
    try:
        root, files, skipped = scan_source(source)
    except OSError as exc:
        raise from_os_error(exc, f"cannot read {source}") from exc
    if not files:
        raise DataeraiError("invalid_argument", f"{source} holds no regular files to upload", param="local_path")
    total = sum(f.size for f in files)
    # A repository takes at most MAX_PARTS parts (as S3 does): big sources get bigger parts.
    chunk = max(chunk, _ceil_div(_ceil_div(total, contract.MAX_PARTS), contract.MIN_PART_SIZE)
                * contract.MIN_PART_SIZE)
    if chunk > contract.MAX_PART_SIZE:
        raise DataeraiError("invalid_argument", f"{source} is larger than {contract.MAX_PARTS} parts of 5 GiB",
                            param="local_path")
    unreadable = next((f.path for f in files if not os.access(os.path.join(root, f.path), os.R_OK)), None)
    if unreadable is not None:
        raise DataeraiError("permission_denied", f"{os.path.join(root, unreadable)} is not readable")
    params = {"title": p["title"], "owner_type": p["owner_type"], "owner_id": p["owner_id"],
              "description": p["description"], "alias": p["alias"], "tags": p["tags"] or [],
              "metadata": p["metadata"] or {}, "collection_id": p["collection_id"], "asset_id": p["asset_id"],
              "path": p["path"], "source_root": root, "source_files": [f.to_json() for f in files],
              "skipped": skipped}
    single = files[0] if len(files) == 1 and "/" not in files[0].path else None
    return {
        "job_id": p["job_id"] or contract.new_job_id(), "kind": "upload", "priority": p["priority"],
        "params": params, "local_path": source, "file_name": os.path.basename(source), "source_size": total,
        "source_mtime_ns": single.mtime_ns if single else None,
        "source_inode": single.inode if single else None, "chunk_size": chunk,
        "chunk_count": max(1, -(-total // chunk)), "bytes_total": total,
        "deadline": _deadline(p["deadline_s"]), "client": tag, "window": p["window"],
    }


@methods.add(
    "upload.start",
    "Queues an upload of a local file, or a directory, as a new asset, or as a new version (content) of "
    "the asset `asset_id`. A directory's content is its regular files in path order, end to end (paths "
    "like `run42/raw/a.h5`; symlinks and special files are skipped and listed in the job's log); an empty "
    "one is `invalid_argument`. The whole tree's identity is recorded now: a file that changes later fails "
    "the job with `source_changed`. A new asset needs `title`, `owner_type` and `owner_id`; a new version "
    "needs none of them and keeps the asset's title, description, alias, tags, metadata and collection "
    "(those parameters are not applied to it: `asset.update` changes them). An `asset_id` that does not "
    "exist, or that the caller cannot see, fails the job with `not_found`.",
    *_UPLOAD_PARAMS,
    result="the job, already durably queued.",
    errors=("not_found", "permission_denied", "io_error", "conflict"),
)
async def upload_start(call: Call, **p: Any) -> dict[str, Any]:
    tag = client_tag(call.conn, p["client"])
    row = await trio.to_thread.run_sync(_plan_upload, p, call.svc.current.default_chunk_size, tag)
    return await call.svc.jobs.create(row)


_MANY_HELP = (
    "All or nothing: every item is checked first, as `{single}` checks it{local}, and then all the jobs "
    "are queued in one durable transaction, each with its own `job.state` event, as `{single}` queues one. "
    "An item that does not pass refuses the whole call with the code `{single}` would answer (`data.index` "
    "is the item, from 0; `data.param`, where there is one, its parameter), and nothing is queued. An item "
    "whose `job_id` exists already answers with that job unchanged (so a call whose answer was lost may be "
    "sent again); two items with the same `job_id` are `invalid_argument`. At most "
    f"{contract.MAX_START_MANY_ITEMS} items, and the request must fit one line of the wire "
    f"({protocol.MAX_LINE_BYTES} bytes, see Limits): more is sent as several calls, each all or nothing by itself."
)


def _distinct_job_ids(items: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        job_id = item["job_id"]
        if job_id is not None and job_id in seen:
            raise DataeraiError("invalid_argument", f"items[{index}]: `job_id` {job_id} is given twice",
                                param="job_id", index=index)
        if job_id is not None:
            seen.add(job_id)


def _plan_uploads(items: list[dict[str, Any]], default_chunk: int, tag: Callable[[Any], str]) -> list[Row]:
    rows = []
    for index, p in enumerate(items):
        try:
            rows.append(_plan_upload(p, default_chunk, tag(p["client"])))
        except DataeraiError as exc:
            raise item_error(exc, index) from None
    return rows


@methods.add(
    "upload.start_many",
    "Queues many uploads in one call, each as `upload.start` would queue it, and answers once all of "
    "them are durably queued. " + _MANY_HELP.format(single="upload.start",
                                                     local=" (its source read, its files readable)"),
    Param("items", Items("upload.start", _UPLOAD_PARAMS, contract.MAX_START_MANY_ITEMS),
          "the uploads, each an object of `upload.start`'s parameters", required=True),
    result="the jobs, already durably queued, in the order of `items`.",
    errors=("not_found", "permission_denied", "io_error", "conflict"),
    heavy=True,
)
async def upload_start_many(call: Call, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    _distinct_job_ids(items)
    rows = await trio.to_thread.run_sync(_plan_uploads, items, call.svc.current.default_chunk_size,
                                         partial(client_tag, call.conn))
    return await call.svc.jobs.create_many(rows)


_DOWNLOAD_PARAMS = (
    Param("asset_id", Id(("asset",)), required=True),
    Param("dest_dir", LocalPath(), "the directory to write into (made if missing)", required=True),
    Param("content_id", Id(("content",)), "a version of the asset (default: the latest)"),
    Param("overwrite", Boolean(), "replace different files already at the destination", default=False),
    *_COMMON,
)


def _plan_download(p: dict[str, Any], default_chunk: int, tag: str) -> dict[str, Any]:
    """The job row of one download, its destination checked; blocking (one ``stat``)."""
    dest = _normal(p["dest_dir"])
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise DataeraiError("invalid_argument", f"{dest} exists and is not a directory", param="dest_dir")
    return {
        "job_id": p["job_id"] or contract.new_job_id(), "kind": "download", "priority": p["priority"],
        "params": {"asset_id": p["asset_id"], "content_id": p["content_id"], "overwrite": p["overwrite"]},
        "dest_dir": dest, "chunk_size": p["chunk_size"] or default_chunk,
        "deadline": _deadline(p["deadline_s"]), "client": tag, "window": p["window"],
    }


@methods.add(
    "download.start",
    "Queues a download of an asset's content into a directory. The job itself may fail with `not_found`, "
    "`destination_exists`, `unsafe_path`, `checksum_mismatch`, `disk_full`, `io_error`.",
    *_DOWNLOAD_PARAMS,
    result="the job, already durably queued.",
    errors=("conflict",),
)
async def download_start(call: Call, **p: Any) -> dict[str, Any]:
    tag = client_tag(call.conn, p["client"])
    row = await trio.to_thread.run_sync(_plan_download, p, call.svc.current.default_chunk_size, tag)
    return await call.svc.jobs.create(row)


def _plan_downloads(items: list[dict[str, Any]], default_chunk: int, tag: Callable[[Any], str]) -> list[Row]:
    rows = []
    for index, p in enumerate(items):
        try:
            rows.append(_plan_download(p, default_chunk, tag(p["client"])))
        except DataeraiError as exc:
            raise item_error(exc, index) from None
    return rows


@methods.add(
    "download.start_many",
    "Queues many downloads in one call, each as `download.start` would queue it, and answers once all of "
    "them are durably queued. " + _MANY_HELP.format(single="download.start", local=" (its destination)"),
    Param("items", Items("download.start", _DOWNLOAD_PARAMS, contract.MAX_START_MANY_ITEMS),
          "the downloads, each an object of `download.start`'s parameters", required=True),
    result="the jobs, already durably queued, in the order of `items`.",
    errors=("conflict",),
    heavy=True,
)
async def download_start_many(call: Call, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    _distinct_job_ids(items)
    rows = await trio.to_thread.run_sync(_plan_downloads, items, call.svc.current.default_chunk_size,
                                         partial(client_tag, call.conn))
    return await call.svc.jobs.create_many(rows)
