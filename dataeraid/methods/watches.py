"""``watch.*``: folders whose complete files the daemon uploads by itself (docs/watch.md)."""

from __future__ import annotations

from typing import Any

from dataerai import contract

from dataeraid.methods._call import Call
from dataeraid.rpc import Methods, Param
from dataeraid.rpc.params import (
    TAGS,
    Boolean,
    Choice,
    Id,
    Integer,
    JsonObject,
    ListOf,
    LocalPath,
    Number,
    RepositoryPath,
    Text,
    TransferWindow,
)

methods = Methods("watches")

WATCH_ID = Param("watch_id", Id(("watch",)), required=True)
_RULE = Text(4200, min_length=1)
#: The most files one ``watch.files`` answer lists.
MAX_FILES_PAGE = 10_000


@methods.add(
    "watch.add",
    "Watches a folder: every file in it that is complete by `complete_when` is uploaded once, as an asset "
    "of `project_id` at its path relative to the folder (under `prefix`); a new version of a file becomes "
    "a new content of the same asset. Files already there are uploaded too (the first scan). An existing "
    "`watch_id` answers with that watch and changes nothing.",
    Param("root", LocalPath(), "the folder", required=True),
    Param("project_id", Id(("project",)), "the project the assets go to", required=True),
    Param("collection_id", Id(("collection",)), "file the assets in this collection too"),
    Param("prefix", RepositoryPath(), "asset paths go under this repository path"),
    Param("complete_when", _RULE, "`close`, `stable:DURATION` or `sentinel:NAME` (default: `close` where the "
                                  "filesystem gives file events, else `stable:1m`)"),
    Param("after_upload", _RULE, "`keep`, `move:DIR` or `delete`, once the repository verified the SHA-256",
          default="keep"),
    Param("excludes", ListOf(Text(1024, min_length=1), contract.MAX_EXCLUDES), "name or path patterns not to upload"),
    Param("default_excludes", Boolean(), "also leave out partial and editor files (`*.part`, `~$*`, ...)",
          default=True),
    Param("tags", TAGS, "tags every asset gets"),
    Param("metadata_template", JsonObject(), "title, description, tags and metadata from each file's path "
                                             "(docs/watch.md)"),
    Param("priority", Integer(contract.MIN_PRIORITY, contract.MAX_PRIORITY), "the uploads' priority", default=0),
    Param("rescan_interval_s", Number(contract.MIN_RESCAN_INTERVAL_S, contract.MAX_RESCAN_INTERVAL_S),
          "how often the whole folder is scanned (default 600 with file events, 30 when polling)"),
    Param("force_polling", Boolean(), "use scans only, as on a network share", default=False),
    Param("free_space_below", Text(32, min_length=1), "delete verified files, oldest first, while the disk has "
                                                      "less free than this (`20G`, `15%`)"),
    Param("window", TransferWindow(), "its uploads move bytes only inside this transfer window (local time; "
                                      "docs/job-states.md#transfer-windows)"),
    Param("watch_id", Id(("watch",)), "the caller's id for the watch"),
    result="the watch.",
    errors=("not_found", "permission_denied", "conflict"),
)
async def watch_add(call: Call, root: str, project_id: str, collection_id: str | None, prefix: str | None,
                    complete_when: str | None, after_upload: str, excludes: list[str] | None,
                    default_excludes: bool, tags: list[str] | None, metadata_template: dict[str, Any] | None,
                    priority: int, rescan_interval_s: float | None, force_polling: bool,
                    free_space_below: str | None, window: str | None, watch_id: str | None) -> dict[str, Any]:
    params = {"project_id": project_id, "collection_id": collection_id, "prefix": prefix,
              "complete_when": complete_when, "after_upload": after_upload, "excludes": excludes or [],
              "default_excludes": default_excludes, "tags": tags or [], "metadata_template": metadata_template,
              "priority": priority, "rescan_interval_s": rescan_interval_s, "force_polling": force_polling,
              "free_space_below": free_space_below, "window": window}
    return dict(await call.svc.watches.add(root, params, watch_id))


@methods.add("watch.list", "Every watch.", result="`{\"watches\": [watch, …]}`.", heavy=True)
async def watch_list(call: Call) -> dict[str, Any]:
    return {"watches": await call.svc.watches.all()}


@methods.add("watch.get", "One watch: its state, mode, counts of files by state and lag.", WATCH_ID,
             result="the watch.", errors=("not_found",))
async def watch_get(call: Call, watch_id: str) -> dict[str, Any]:
    return dict(await call.svc.watches.get(watch_id))


@methods.add(
    "watch.files", "A page of the files a watch knows, by path.", WATCH_ID,
    Param("states", ListOf(Choice(contract.WATCH_FILE_STATES), len(contract.WATCH_FILE_STATES)), "only these"),
    Param("limit", Integer(1, MAX_FILES_PAGE), "at most this many", default=1000),
    Param("after", Text(contract.MAX_PATH_LENGTH), "the page after this path (the last page's `next_after`)"),
    result="`{\"files\": [file, …], \"next_after\"}`: `next_after` is null on the last page.",
    errors=("not_found",), heavy=True,
)
async def watch_files(call: Call, watch_id: str, states: list[str] | None, limit: int,
                      after: str | None) -> dict[str, Any]:
    return await call.svc.watches.files(watch_id, states, after, limit)


@methods.add("watch.pause", "Stops watching (uploads already queued go on) until `watch.resume`.", WATCH_ID,
             result="the watch.", errors=("not_found",))
async def watch_pause(call: Call, watch_id: str) -> dict[str, Any]:
    return dict(await call.svc.watches.pause(watch_id))


@methods.add("watch.resume", "Watches again; a folder that was replaced or emptied is taken as it is now.",
             WATCH_ID, result="the watch.", errors=("not_found",))
async def watch_resume(call: Call, watch_id: str) -> dict[str, Any]:
    return dict(await call.svc.watches.resume(watch_id))


@methods.add("watch.rescan", "Scans the whole folder now, and tries quarantined files again.", WATCH_ID,
             result="the watch.", errors=("not_found",))
async def watch_rescan(call: Call, watch_id: str) -> dict[str, Any]:
    return dict(await call.svc.watches.rescan(watch_id))


@methods.add("watch.remove", "Forgets a watch and its files' records. Local files stay; queued uploads finish.",
             WATCH_ID, result="`{\"watch_id\", \"removed\": true}`.", errors=("not_found",))
async def watch_remove(call: Call, watch_id: str) -> dict[str, Any]:
    return await call.svc.watches.remove(watch_id)
