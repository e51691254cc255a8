"""A watch's settings: what ``watch.add`` was given, checked once and kept as the row's
``params``; ``WatchConfig`` is the parsed form the watcher works from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dataerai import contract

from dataeraid import windows
from dataeraid.watch import rules
from dataeraid.watch.excludes import DEFAULT_EXCLUDES, Excludes
from dataeraid.watch.template import Template

#: How often a watch looks at its whole tree again: with file events the scan is a safety
#: net; without them (network shares, ``force_polling``) it is the only source of news.
DEFAULT_RESCAN_WITH_EVENTS_S = 600.0
DEFAULT_RESCAN_POLLING_S = 30.0
#: The name of the file a watch leaves in its root, so that an empty folder in its place
#: (an unmounted share's mount point, a re-created directory) is not taken for it.
MARKER_PREFIX = ".dataerai-watch."


@dataclass(frozen=True)
class WatchConfig:
    watch_id: str
    root: str
    project_id: str
    collection_id: str | None
    prefix: str | None
    complete_when: rules.CompleteWhen
    after_upload: rules.AfterUpload
    excludes: Excludes
    tags: list[str]
    template: Template | None
    priority: int
    rescan_interval_s: float
    force_polling: bool
    free_space_below: rules.FreeSpace | None
    marker: str
    #: The transfer window every upload of the watch gets (dataeraid/windows.py), or None.
    transfer_window: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WatchConfig:
        params = row["params"]
        patterns = list(params["excludes"])
        if params.get("default_excludes", True):
            patterns = [*DEFAULT_EXCLUDES, *patterns]
        marker = MARKER_PREFIX + row["watch_id"]
        template = params.get("metadata_template")
        free = params.get("free_space_below")
        return cls(
            watch_id=row["watch_id"],
            root=row["root"],
            project_id=params["project_id"],
            collection_id=params.get("collection_id"),
            prefix=params.get("prefix"),
            complete_when=rules.parse_complete_when(params["complete_when"]),
            after_upload=rules.parse_after_upload(params["after_upload"]),
            # The marker and anything named like one never become uploads.
            excludes=Excludes([*patterns, MARKER_PREFIX + "*"]),
            tags=list(params.get("tags") or []),
            template=Template.from_dict(template) if template else None,
            priority=int(params.get("priority", 0)),
            rescan_interval_s=float(params["rescan_interval_s"]),
            force_polling=bool(params.get("force_polling")),
            free_space_below=rules.parse_free_space(free) if free else None,
            marker=marker,
            transfer_window=params.get("window") or None,
        )

    def window_s(self) -> float:
        """How long a new version waits before its first completion check."""
        if self.complete_when.kind == "stable":
            return self.complete_when.stable_s
        return rules.CLOSE_SETTLE_S

    def asset_path(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def local(self, rel: str) -> str:
        return os.path.join(self.root, rel)


def check_params(root: str, params: dict[str, Any], events_usable: bool) -> dict[str, Any]:
    """The ``params`` to store for a new watch, with every default filled in and every text in its
    canonical form; ``ValueError("param: message")`` for the first that is wrong."""
    out = dict(params)

    def fail(param: str, message: str) -> ValueError:
        return ValueError(f"{param}: {message}")

    rule_text = params.get("complete_when") or (
        rules.DEFAULT_RULE_WITH_EVENTS if events_usable and not params.get("force_polling")
        else rules.DEFAULT_RULE_POLLING)
    try:
        out["complete_when"] = str(rules.parse_complete_when(rule_text))
    except ValueError as exc:
        raise fail("complete_when", str(exc)) from None
    try:
        out["after_upload"] = str(rules.parse_after_upload(params.get("after_upload") or "keep", root))
    except ValueError as exc:
        raise fail("after_upload", str(exc)) from None
    if params.get("free_space_below"):
        try:
            out["free_space_below"] = str(rules.parse_free_space(params["free_space_below"]))
        except ValueError as exc:
            raise fail("free_space_below", str(exc)) from None
    excludes = list(params.get("excludes") or [])
    try:
        Excludes(excludes)
    except ValueError as exc:
        raise fail("excludes", str(exc)) from None
    out["excludes"] = excludes
    out["default_excludes"] = params.get("default_excludes", True) is not False
    if params.get("metadata_template"):
        try:
            out["metadata_template"] = Template.from_dict(params["metadata_template"]).to_dict()
        except ValueError as exc:
            raise fail("metadata_template", str(exc)) from None
    interval = params.get("rescan_interval_s")
    if interval is None:
        polling = params.get("force_polling") or not events_usable
        interval = DEFAULT_RESCAN_POLLING_S if polling else DEFAULT_RESCAN_WITH_EVENTS_S
    if not contract.MIN_RESCAN_INTERVAL_S <= interval <= contract.MAX_RESCAN_INTERVAL_S:
        raise fail("rescan_interval_s", f"must be between {contract.MIN_RESCAN_INTERVAL_S:g} and "
                                        f"{contract.MAX_RESCAN_INTERVAL_S:g} seconds")
    out["rescan_interval_s"] = float(interval)
    out["force_polling"] = bool(params.get("force_polling"))
    out["tags"] = list(params.get("tags") or [])
    out["priority"] = int(params.get("priority") or 0)
    if params.get("window"):
        problem = windows.problem(params["window"])
        if problem is not None:
            raise fail("window", problem)
    out["window"] = params.get("window") or None
    return out
