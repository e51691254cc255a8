"""A watch never goes silently blind: without file events it polls, and says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dataeraid.config import Settings
from dataeraid.watch import notify, watcher
from dataeraid.watch.config import check_params


class _Jobs:
    bus = None
    store = None


def _watcher(root: Path, told: list[str]) -> watcher.Watcher:
    params = check_params(str(root), {"project_id": "prj_00000000", "complete_when": "stable:5s"}, events_usable=True)
    row: dict[str, Any] = {"watch_id": "wat_00000001", "root": str(root), "params": params, "scan_gen": 0,
                           "root_dev": None, "root_inode": None, "marker": None, "problem_code": None,
                           "problem_message": None}
    return watcher.Watcher(row, _Jobs(), None, Settings(), told.append)  # type: ignore[arg-type]


@pytest.mark.parametrize(("failure", "code"), [
    (notify.WatchLimitReached("fs.inotify.max_user_watches (8192) is used up"), "watch_limit"),
    (notify.NotifyUnavailable("inotify_init: too many instances"), "no_file_events"),
])
async def test_no_file_events_means_polling_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          failure: Exception, code: str) -> None:
    async def refuse(self: notify.TreeNotifier) -> None:
        raise failure

    monkeypatch.setattr(notify.TreeNotifier, "start", refuse)
    told: list[str] = []
    w = _watcher(tmp_path, told)
    assert w.mode == "events"
    assert await w._start_notifier() is None
    assert w.mode == "polling" and w.mode_reason == (code, str(failure))
    assert told == ["wat_00000001"], "the manager is told, so the watch's state and event say it"


async def test_a_network_filesystem_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher, "events_trustworthy", lambda root: (False, f"{root} is on nfs4"))
    told: list[str] = []
    w = _watcher(tmp_path, told)
    assert await w._start_notifier() is None
    assert w.mode == "polling" and w.mode_reason == ("no_file_events", f"{tmp_path} is on nfs4")


def test_the_default_rule_is_the_safest_the_filesystem_allows(tmp_path: Path) -> None:
    with_events = check_params(str(tmp_path), {"project_id": "prj_00000000"}, events_usable=True)
    without = check_params(str(tmp_path), {"project_id": "prj_00000000"}, events_usable=False)
    polling = check_params(str(tmp_path), {"project_id": "prj_00000000", "force_polling": True}, events_usable=True)
    assert with_events["complete_when"] == "close" and with_events["rescan_interval_s"] == 600.0
    assert without["complete_when"] == polling["complete_when"] == "stable:1m"
    assert without["rescan_interval_s"] == polling["rescan_interval_s"] == 30.0


def test_mounts_knows_a_network_share(tmp_path: Path) -> None:
    from dataeraid.watch.mounts import filesystem_type

    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /data/share\\040a rw - nfs4 server:/export rw\n"
    )
    assert filesystem_type("/data/share a/run1", str(info)) == "nfs4"
    assert filesystem_type("/data/share", str(info)) == "ext4"
    assert filesystem_type("/home", str(info)) == "ext4"
