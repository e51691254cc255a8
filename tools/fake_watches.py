"""Watch folders without the daemon: canned objects of the contract's shapes, and ``watch.*`` over a table.

The SDK's tests (``tests/client/sdk_fake_daemon.py``) and the command line's
(``tests/cli/conftest.py``) each have a scripted daemon with its own way of
answering; both plug ``FakeWatches.methods()`` in, so the two test the same
behaviour: the parameters the spec of ``watch.*`` names (an unknown one is
refused, as the real registry refuses it), ``not_found`` for an unknown watch
or a missing root, ``conflict`` for nested roots, idempotent ``watch_id``,
``watch.files`` ordered by path and paged through ``after``/``next_after``.

``watch_object`` and ``watch_file_object`` build answers that type-check as
the contract's ``WatchObject`` and ``WatchFileObject`` (``make lint`` runs
mypy on this file), so a change of the contract shows here first. A fault is
raised as ``WatchFault``; each fake turns it into its own error answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

from dataerai.contract import WATCH_FILE_STATES, WatchFileObject, WatchObject, is_id, new_id

WATCH_ID = "wat_0123456789abcdef0123"
CREATED = "2026-11-25T14:00:00Z"
#: Every parameter ``watch.add`` takes (docs/watch.md).
ADD_PARAMS = frozenset({
    "root", "project_id", "collection_id", "prefix", "complete_when", "after_upload", "excludes",
    "default_excludes", "tags", "metadata_template", "priority", "rescan_interval_s", "force_polling",
    "free_space_below", "window", "watch_id",
})
DEFAULT_EXCLUDES = ["*.part", "*.tmp", "~$*", ".~lock.*#"]


class WatchFault(Exception):
    """An error answer: a stable ``code``, a message and the error's ``data``."""

    def __init__(self, code: str, message: str, **data: Any) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data


def file_counts(**counts: int) -> dict[str, int]:
    """A watch's ``files``: every state present, zeros included."""
    return {state: counts.get(state, 0) for state in WATCH_FILE_STATES}


def watch_object(watch_id: str = WATCH_ID, root: str = "/data/instrument", **fields: Any) -> WatchObject:
    """A ``WatchObject`` with every key of the contract; ``fields`` replace some."""
    base: WatchObject = {
        "watch_id": watch_id,
        "root": root,
        "state": "active",
        "mode": "events",
        "project_id": "prj_0123456789",
        "collection_id": None,
        "prefix": None,
        "complete_when": "stable:30s",
        "after_upload": "keep",
        "excludes": list(DEFAULT_EXCLUDES),
        "tags": [],
        "metadata_template": None,
        "priority": 0,
        "rescan_interval_s": 3600.0,
        "free_space_below": None,
        "force_polling": False,
        "window": None,
        "problem": None,
        "mode_reason": None,
        "files": file_counts(),
        "lag_s": None,
        "oldest_pending": None,
        "last_scan_at": CREATED,
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    unknown = set(fields) - set(base)
    assert not unknown, f"not keys of WatchObject: {sorted(unknown)}"
    return cast(WatchObject, {**base, **fields})


def watch_file_object(path: str, state: str = "verified", **fields: Any) -> WatchFileObject:
    """A ``WatchFileObject`` with every key of the contract; ``fields`` replace some."""
    base: WatchFileObject = {
        "path": path,
        "kind": "file",
        "state": "verified",
        "size": 1024,
        "mtime": "2026-11-25T13:59:00Z",
        "asset_id": None,
        "content_id": None,
        "job_id": None,
        "sha256": None,
        "attempts": 0,
        "retry_at": None,
        "error": None,
        "seen_at": "2026-11-25T13:59:30Z",
        "updated_at": CREATED,
    }
    unknown = set(fields) - set(base)
    assert not unknown, f"not keys of WatchFileObject: {sorted(unknown)}"
    return cast(WatchFileObject, {**base, "state": state, **fields})


Method = Callable[[dict[str, Any]], Any]


class FakeWatches:
    """The daemon's ``watch.*`` methods over an in-memory table of watches and their files."""

    def __init__(self) -> None:
        self.watches: dict[str, WatchObject] = {}
        self.files: dict[str, list[WatchFileObject]] = {}

    def methods(self) -> dict[str, Method]:
        """Each ``watch.*`` method's name and its handler, ``handler(params) -> result``."""
        return {
            "watch.add": self.add,
            "watch.list": self.list,
            "watch.get": self.get,
            "watch.files": self.list_files,
            "watch.pause": lambda p: self._set_state(p, "paused"),
            "watch.resume": lambda p: self._set_state(p, "active"),
            "watch.rescan": self.rescan,
            "watch.remove": self.remove,
        }

    def put(self, watch: WatchObject, files: list[WatchFileObject] | None = None) -> WatchObject:
        """Hold ``watch`` (and its ``files``) as if it had been added."""
        self.watches[watch["watch_id"]] = watch
        self.files[watch["watch_id"]] = list(files or [])
        return watch

    def add(self, params: dict[str, Any]) -> WatchObject:
        unknown = sorted(set(params) - ADD_PARAMS)
        if unknown:
            raise WatchFault("invalid_argument", f"unknown parameter {unknown[0]!r}", param=unknown[0])
        for required in ("root", "project_id"):
            if required not in params:
                raise WatchFault("invalid_argument", f"{required} is required", param=required)
        root = params["root"]
        if not isinstance(root, str) or not os.path.isabs(root):
            raise WatchFault("invalid_argument", "root must be an absolute path", param="root")
        watch_id = params.get("watch_id") or new_id("watch")
        if watch_id in self.watches:
            return self.watches[watch_id]  # the same request again
        if not os.path.isdir(root):
            raise WatchFault("not_found", f"no such directory: {root}", param="root")
        for other in self.watches.values():
            if _nested(root, other["root"]):
                raise WatchFault("conflict", f"{root} overlaps the watch {other['watch_id']} of {other['root']}",
                                 watch_id=other["watch_id"])
        excludes = (DEFAULT_EXCLUDES if params.get("default_excludes", True) else []) + params.get("excludes", [])
        polling = bool(params.get("force_polling", False))
        watch = watch_object(
            watch_id,
            root,
            mode="polling" if polling else "events",
            project_id=params["project_id"],
            collection_id=params.get("collection_id"),
            prefix=params.get("prefix"),
            complete_when=params.get("complete_when") or "stable:30s",
            after_upload=params.get("after_upload", "keep"),
            excludes=excludes,
            tags=params.get("tags", []),
            metadata_template=params.get("metadata_template"),
            priority=params.get("priority", 0),
            rescan_interval_s=float(params.get("rescan_interval_s", 3600.0)),
            free_space_below=params.get("free_space_below"),
            force_polling=polling,
        )
        return self.put(watch)

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"watches": list(self.watches.values())}

    def get(self, params: dict[str, Any]) -> WatchObject:
        return self._watch(params)

    def list_files(self, params: dict[str, Any]) -> dict[str, Any]:
        watch = self._watch(params)
        limit = params.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise WatchFault("invalid_argument", "limit must be from 1 to 10000", param="limit")
        states = params.get("states")
        after = params.get("after")
        chosen = sorted(
            (f for f in self.files[watch["watch_id"]]
             if (states is None or f["state"] in states) and (after is None or f["path"] > after)),
            key=lambda f: f["path"],
        )
        page = chosen[:limit]
        more = len(chosen) > limit
        return {"files": page, "next_after": page[-1]["path"] if more else None}

    def rescan(self, params: dict[str, Any]) -> WatchObject:
        watch = self._watch(params)
        watch["last_scan_at"] = "2026-11-25T15:00:00Z"
        return watch

    def remove(self, params: dict[str, Any]) -> dict[str, Any]:
        watch = self._watch(params)
        del self.watches[watch["watch_id"]]
        del self.files[watch["watch_id"]]
        return {"watch_id": watch["watch_id"], "removed": True}

    def _set_state(self, params: dict[str, Any], state: str) -> WatchObject:
        watch = self._watch(params)
        watch["state"] = "paused" if state == "paused" else "active"
        return watch

    def _watch(self, params: dict[str, Any]) -> WatchObject:
        watch_id = params.get("watch_id")
        if not is_id("watch", watch_id):
            raise WatchFault("invalid_argument", "watch_id must be a watch id", param="watch_id")
        if watch_id not in self.watches:
            raise WatchFault("not_found", f"no watch {watch_id}")
        return self.watches[str(watch_id)]


def _nested(a: str, b: str) -> bool:
    """Whether one of the two directories is the other or lies inside it."""
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)
