"""``dataerai watch`` and ``dataerai status`` against the scripted daemon answering ``watch.*`` (``watches``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from dataerai import contract
from fake_watches import FakeWatches, file_counts, watch_file_object, watch_object

from dataeraid.cli import cli

PROJECT = "prj_0123456789"
WATCH = "wat_aaaaaaaaaaaaaaaaaaaa"
SECOND = "wat_bbbbbbbbbbbbbbbbbbbb"


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args), prog_name="dataerai")


def params_of(fake_daemon: Any, method: str) -> list[dict[str, Any]]:
    return [dict(r.params) for r in fake_daemon.requests if r.method == method]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "instrument"
    path.mkdir()
    return path


# --- watch add ------------------------------------------------------------------------


def test_add_sends_every_option_and_prints_the_id(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "template.toml"
    template.write_text('title = "{stem}"\n[instrument]\nname = "B7"\n')
    monkeypatch.chdir(root.parent)
    result = invoke(runner, "watch", "add", root.name, "--project", PROJECT, "--collection", "col_0123456789",
                    "--prefix", "b7/raw", "--complete-when", "stable:5m", "--after-upload", f"move:{tmp_path}/done",
                    "--exclude", "*.lock", "--exclude", "scratch/**", "--no-default-excludes", "--tag", "raw",
                    "--tag", "b7", "--metadata-template", str(template), "--priority", "7",
                    "--rescan-interval", "600", "--polling", "--free-space-below", "20G")
    assert result.exit_code == 0, result.output
    (params,) = params_of(fake_daemon, "watch.add")
    assert re.fullmatch(r"wat_[0-9a-f]{20}", params.pop("watch_id"))
    assert params == {
        "root": str(root),
        "project_id": PROJECT,
        "collection_id": "col_0123456789",
        "prefix": "b7/raw",
        "complete_when": "stable:5m",
        "after_upload": f"move:{tmp_path}/done",
        "excludes": ["*.lock", "scratch/**"],
        "default_excludes": False,
        "tags": ["raw", "b7"],
        "metadata_template": {"title": "{stem}", "instrument": {"name": "B7"}},
        "priority": 7,
        "rescan_interval_s": 600.0,
        "force_polling": True,
        "free_space_below": "20G",
    }
    (added,) = watches.watches
    assert result.stdout == f"{added}\n"


def test_add_with_the_defaults_and_json_prints_the_watch_object(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path) -> None:
    result = invoke(runner, "watch", "add", str(root), "--project", PROJECT, "--json")
    assert result.exit_code == 0, result.output
    (params,) = params_of(fake_daemon, "watch.add")
    assert set(params) == {"root", "project_id", "after_upload", "default_excludes", "priority", "force_polling",
                           "watch_id"}
    assert (params["after_upload"], params["default_excludes"], params["priority"], params["force_polling"]) == (
        "keep", True, 0, False)
    printed = json.loads(result.stdout)
    assert set(printed) == set(contract.WatchObject.__annotations__)  # the contract's keys, nothing hidden
    assert printed["watch_id"] == params["watch_id"] and printed["root"] == str(root)
    assert printed["created_at"] == "2026-11-25T14:00:00Z" and printed["problem"] is None


def test_add_says_when_the_watch_polls_and_why(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path) -> None:
    reason = {"code": "watch_limit", "message": "fs.inotify.max_user_watches (8192) is reached"}
    fake_daemon.on("watch.add", lambda p: watch_object(p["watch_id"], p["root"], mode="polling",
                                                        mode_reason=reason))
    result = invoke(runner, "watch", "add", str(root), "--project", PROJECT)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"note: {result.stdout.strip()} polls: {reason['message']}\n"


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--complete-when", "soon"], "invalid_argument", "complete_when must be"),
    (["--after-upload", "archive"], "invalid_argument", "after_upload must be"),
    (["--collection", "col/../x"], "invalid_argument", "collection_id must be"),
    (["--prefix", "/abs"], "invalid_argument", "prefix must be relative"),
])
def test_add_refuses_what_the_sdk_can_tell_is_wrong(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path, args: list[str], code: str,
        words: str) -> None:
    result = invoke(runner, "watch", "add", str(root), "--project", PROJECT, *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error[{code}]: ") and words in result.stderr
    assert params_of(fake_daemon, "watch.add") == []


def test_add_refuses_a_template_it_cannot_read(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("title = \n")
    result = invoke(runner, "watch", "add", str(root), "--project", PROJECT, "--metadata-template", str(broken))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error[invalid_argument]: --metadata-template: {broken} is not valid TOML")
    result = invoke(runner, "watch", "add", str(root), "--project", PROJECT, "--metadata-template",
                    str(tmp_path / "missing.toml"), "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert json.loads(result.stderr)["error"]["code"] == "not_found"
    assert fake_daemon.requests == []  # refused before the daemon was asked anything


def test_add_errors_from_the_daemon_and_usage_errors(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, root: Path, tmp_path: Path) -> None:
    watches.put(watch_object(WATCH, str(root)))
    (root / "sub").mkdir()
    nested = invoke(runner, "watch", "add", str(root / "sub"), "--project", PROJECT)
    assert nested.exit_code == 1 and nested.stderr.startswith("error[conflict]: ")
    missing = invoke(runner, "watch", "add", str(tmp_path / "nowhere"), "--project", PROJECT)
    assert missing.exit_code == 1 and missing.stderr == f"error[not_found]: no such directory: {tmp_path}/nowhere\n"
    assert invoke(runner, "watch", "add", str(root)).exit_code == 2  # --project is required
    assert invoke(runner, "watch", "add", str(root), "--project", PROJECT, "--rescan-interval", "0.1").exit_code == 2


# --- watch ls -------------------------------------------------------------------------


def test_ls_prints_a_table(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    watches.put(watch_object(WATCH, "/data/b7", files=file_counts(seen=1, queued=2, verified=9, quarantined=1),
                             lag_s=192.4))
    watches.put(watch_object(SECOND, "/mnt/nfs/detector", state="unavailable", mode="polling"))
    result = invoke(runner, "watch", "ls")
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["WATCH", "STATE", "MODE", "PENDING", "QUARANTINED", "LAG", "ROOT"]
    assert first.split() == [WATCH, "active", "events", "3", "1", "3m12s", "/data/b7"]
    assert second.split() == [SECOND, "unavailable", "polling", "0", "0", "-", "/mnt/nfs/detector"]
    printed = json.loads(invoke(runner, "watch", "ls", "--json").stdout)
    assert [w["watch_id"] for w in printed["watches"]] == [WATCH, SECOND]
    assert printed["watches"][0]["files"]["queued"] == 2 and printed["watches"][0]["lag_s"] == 192.4


def test_ls_without_watches(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    assert invoke(runner, "watch", "ls").stdout.startswith("no watch folders")
    assert json.loads(invoke(runner, "watch", "ls", "--json").stdout) == {"watches": []}


# --- watch status ---------------------------------------------------------------------


def _files() -> list[Any]:
    return [
        watch_file_object("run1/a.h5", "verified", asset_id="ast_0000000001", size=2048),
        watch_file_object("run1/b.h5", "queued", job_id="job_0123456789abcdef01234567"),
        watch_file_object("run2", "seen", kind="dataset", size=None),
        watch_file_object("run3/d.h5", "quarantined", attempts=5,
                          error={"code": "permission_denied", "message": "cannot read run3/d.h5"}),
    ]


def test_status_shows_the_watch_then_its_files(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    watches.put(watch_object(WATCH, "/data/b7", files=file_counts(seen=1, queued=1, verified=1, quarantined=1),
                             lag_s=3725.0, oldest_pending="S1/run2/tile.tif", tags=["raw"],
                             problem=None, mode="polling",
                             mode_reason={"code": "no_inotify", "message": "no inotify on nfs"}), _files())
    result = invoke(runner, "watch", "status", WATCH)
    assert result.exit_code == 0, result.output
    summary, listing = result.stdout.split("\n\n")
    lines = summary.splitlines()
    assert lines[:4] == [f"watch_id: {WATCH}", "root: /data/b7", "state: active",
                         "mode: polling (no_inotify: no inotify on nfs)"]
    assert "tags: raw" in lines and "complete_when: stable:30s" in lines
    assert "files: seen 1, queued 1, verified 1, quarantined 1" in lines
    assert "lag: 1h02m (the oldest waiting: S1/run2/tile.tif)" in lines
    rows = listing.splitlines()
    assert [row.split()[0] for row in rows] == ["verified", "queued", "seen", "quarantined"]
    assert rows[0].split() == ["verified", "2048", "ast_0000000001", "run1/a.h5"]
    assert rows[2].split() == ["seen", "-", "-", "run2/"]
    assert rows[3].endswith("run3/d.h5  [permission_denied] cannot read run3/d.h5")
    assert params_of(fake_daemon, "watch.files") == [{"watch_id": WATCH, "limit": 101}]


def test_status_filters_limits_and_prints_json(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    watches.put(watch_object(WATCH, files=file_counts(seen=1, queued=1, verified=1, quarantined=1)), _files())
    limited = invoke(runner, "watch", "status", WATCH, "--limit", "2")
    assert limited.exit_code == 0, limited.output
    assert limited.stdout.splitlines()[-1] == "… 2 more files not shown (--limit N, --state S)"
    printed = json.loads(invoke(runner, "watch", "status", WATCH, "--state", "quarantined", "--state", "seen",
                                "--json").stdout)
    assert set(printed) == {"watch", "files", "more"} and printed["more"] is False
    assert printed["watch"]["watch_id"] == WATCH
    assert [f["path"] for f in printed["files"]] == ["run2", "run3/d.h5"]
    assert set(printed["files"][0]) == set(contract.WatchFileObject.__annotations__)
    assert printed["files"][1]["error"] == {"code": "permission_denied", "message": "cannot read run3/d.h5",
                                            "data": {}}
    assert params_of(fake_daemon, "watch.files")[-1] == {"watch_id": WATCH, "limit": 101,
                                                         "states": ["quarantined", "seen"]}
    paged = json.loads(invoke(runner, "watch", "status", WATCH, "--limit", "3", "--json").stdout)
    assert [f["path"] for f in paged["files"]] == ["run1/a.h5", "run1/b.h5", "run2"] and paged["more"] is True
    assert invoke(runner, "watch", "status", WATCH, "--state", "running").exit_code == 2


# --- steering -------------------------------------------------------------------------------


def test_pause_resume_rescan_and_rm(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    watches.put(watch_object(WATCH))
    assert invoke(runner, "watch", "pause", WATCH).stdout == f"{WATCH}: paused\n"
    assert json.loads(invoke(runner, "watch", "resume", WATCH, "--json").stdout)["state"] == "active"
    assert invoke(runner, "watch", "rescan", WATCH).stdout == f"{WATCH}: active\n"
    assert invoke(runner, "watch", "rm", WATCH).stdout == f"removed {WATCH}\n"
    assert [(r.method, r.params) for r in fake_daemon.requests] == [
        (m, {"watch_id": WATCH}) for m in ("watch.pause", "watch.resume", "watch.rescan", "watch.remove")]
    gone = invoke(runner, "watch", "rm", WATCH, "--json")
    assert gone.exit_code == 1 and json.loads(gone.stderr) == {
        "error": {"code": "not_found", "message": f"no watch {WATCH}"}}
    watches.put(watch_object(SECOND))
    assert json.loads(invoke(runner, "watch", "rm", SECOND, "--json").stdout) == {"watch_id": SECOND,
                                                                                  "removed": True}


def test_an_unavailable_watch_says_why(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    watches.put(watch_object(WATCH, state="unavailable",
                             problem={"code": "root_missing", "message": "/data/b7 is gone"}))
    fake_daemon.on("watch.rescan", lambda p: watches.watches[WATCH])
    assert invoke(runner, "watch", "rescan", WATCH).stdout == f"{WATCH}: unavailable (root_missing: /data/b7 is gone)\n"


def test_a_malformed_id_is_refused_before_sending(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    result = invoke(runner, "watch", "status", "../etc")
    assert result.exit_code == 1 and result.stderr.startswith("error[invalid_argument]: watch_id must be a watch id")
    assert fake_daemon.requests == []


# --- dataerai status --------------------------------------------------------------------


def _failed_job(event_id: int, wire: Any, job_id: str, name: str) -> dict[str, Any]:
    job = wire.job(job_id, state="failed", file_name=name,
                   error={"code": "source_changed", "message": f"{name} changed after it was queued"})
    return {**wire.state_event(event_id, job), "time": 1764511200.0 + event_id}


def _quarantined(event_id: int, path: str) -> dict[str, Any]:
    return {"id": event_id, "type": "watch.file", "time": 1764511200.0 + event_id, "watch_id": WATCH,
            "path": path, "state": "quarantined", "previous_state": "queued",
            "file": watch_file_object(path, "quarantined", error={"code": "io_error", "message": "EIO"})}


def _store(fake_daemon: Any, events: list[dict[str, Any]], last_id: int) -> None:
    """``daemon.status`` and ``events.list`` over ``events`` (the daemon's stored ones)."""
    fake_daemon.on("daemon.status", lambda p: {"version": "0.9.0", "pid": 4242, "last_event_id": last_id,
                                              "jobs": {"queued": 2, "running": 1, "failed": 3, "paused": 0}})

    def listing(params: dict[str, Any]) -> dict[str, Any]:
        chosen = [e for e in events if e["id"] > params["since"] and e["type"] in params.get("types", [e["type"]])]
        return {"events": chosen[: params["limit"]], "last_event_id": last_id}

    fake_daemon.on("events.list", listing)


def test_status_summarises_the_daemon_the_watches_and_the_last_errors(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, wire: Any) -> None:
    watches.put(watch_object(WATCH, "/data/b7", files=file_counts(queued=4, quarantined=2), lag_s=75.0))
    watches.put(watch_object(SECOND, "/mnt/d", state="unavailable",
                             problem={"code": "root_unmounted", "message": "/mnt/d is not mounted"}))
    events = [_failed_job(3, wire, "job_3", "old.h5"), _failed_job(10, wire, "job_10", "run1.h5"),
              _quarantined(11, "run3/d.h5"), _failed_job(12, wire, "job_12", "run2.h5"),
              {**wire.state_event(13, wire.job("job_13", state="completed")), "time": 1764511213.0},
              _quarantined(14, "run3/e.h5"), _failed_job(15, wire, "job_15", "run4.h5")]
    _store(fake_daemon, events, 15)
    result = invoke(runner, "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("daemon: dataerai 0.9.0, pid 4242, socket ")
    assert lines[1] == "jobs: queued 2, running 1, failed 3"
    assert lines[2] == "watches:"
    assert lines[3].split() == [WATCH, "active", "lag", "1m15s", "pending", "4", "quarantined", "2", "/data/b7"]
    assert lines[4].startswith(f"  {SECOND}  unavailable (root_unmounted: /mnt/d is not mounted)  lag -")
    assert lines[5] == "last errors:"
    assert lines[6:] == [
        "  2025-11-30T14:00:10Z  job job_10  run1.h5 failed: [source_changed] run1.h5 changed after it was queued",
        f"  2025-11-30T14:00:11Z  watch {WATCH}  run3/d.h5 quarantined: [io_error] EIO",
        "  2025-11-30T14:00:12Z  job job_12  run2.h5 failed: [source_changed] run2.h5 changed after it was queued",
        f"  2025-11-30T14:00:14Z  watch {WATCH}  run3/e.h5 quarantined: [io_error] EIO",
        "  2025-11-30T14:00:15Z  job job_15  run4.h5 failed: [source_changed] run4.h5 changed after it was queued",
    ]
    assert params_of(fake_daemon, "events.list") == [{"since": 0, "limit": 15, "types": ["job.state", "watch.file"]}]
    printed = json.loads(invoke(runner, "status", "--json").stdout)
    assert printed["daemon"]["version"] == "0.9.0" and printed["daemon"]["last_event_id"] == 15
    assert printed["jobs"]["failed"] == 3 and [w["watch_id"] for w in printed["watches"]] == [WATCH, SECOND]
    assert [e["event_id"] for e in printed["errors"]] == [10, 11, 12, 14, 15]
    assert printed["errors"][1] == {"event_id": 11, "time": "2025-11-30T14:00:11Z", "type": "watch.file",
                                    "job_id": None, "watch_id": WATCH, "path": "run3/d.h5", "code": "io_error",
                                    "message": "EIO"}


def test_status_looks_back_in_windows_and_not_forever(
        runner: CliRunner, fake_daemon: Any, watches: FakeWatches, wire: Any) -> None:
    # One failure long ago, then a long quiet history: the summary reads windows backwards and stops.
    _store(fake_daemon, [_failed_job(100, wire, "job_100", "ancient.h5")], 1_000_000)
    result = invoke(runner, "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "last errors: none"
    sinces = [p["since"] for p in params_of(fake_daemon, "events.list")]
    assert sinces == list(range(999_800, 994_999, -200)) and all(
        p["limit"] == 200 for p in params_of(fake_daemon, "events.list"))
    _store(fake_daemon, [_failed_job(100, wire, "job_100", "ancient.h5")], 450)
    assert "job job_100  ancient.h5 failed" in invoke(runner, "status").stdout


def test_status_of_a_quiet_daemon(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    _store(fake_daemon, [], 0)
    fake_daemon.on("daemon.status", lambda p: {"version": "0.9.0", "pid": 1, "last_event_id": 0, "jobs": {}})
    result = invoke(runner, "status")
    assert result.stdout.splitlines()[1:] == ["jobs: none", "watches: none", "last errors: none"]
    assert params_of(fake_daemon, "events.list") == []


def test_status_shows_the_bandwidth_limit_in_force(runner: CliRunner, fake_daemon: Any, watches: FakeWatches) -> None:
    _store(fake_daemon, [], 0)
    timetable = {"upload_bps": 2 * 1024**2, "download_bps": 0, "shared_bps": 0,
                 "bwlimit": "Mon-Fri 08:00,2M:off 19:00,off", "next_change": "2026-12-04T19:00"}
    fake_daemon.on("daemon.status", lambda p: {"version": "0.9.0", "pid": 1, "last_event_id": 0, "jobs": {},
                                              "bandwidth": timetable})
    lines = invoke(runner, "status").stdout.splitlines()
    assert lines[2] == ('bandwidth: upload 2M/s, download no limit; timetable "Mon-Fri 08:00,2M:off 19:00,off",'
                        " next change 2026-12-04T19:00")
    assert json.loads(invoke(runner, "status", "--json").stdout)["daemon"]["bandwidth"] == timetable
    shared = {"upload_bps": 0, "download_bps": 0, "shared_bps": 10 * 1024**2, "bwlimit": None, "next_change": None}
    fake_daemon.on("daemon.status", lambda p: {"version": "0.9.0", "pid": 1, "last_event_id": 0, "jobs": {},
                                              "bandwidth": shared})
    assert invoke(runner, "status").stdout.splitlines()[2] == (
        "bandwidth: upload no limit, download no limit, both together 10M/s")


def test_status_never_starts_a_daemon(runner: CliRunner) -> None:
    result = invoke(runner, "status")
    assert result.exit_code == 3
    assert result.stderr.startswith("error[unavailable]: the dataerai daemon is not running at ")


# --- events ----------------------------------------------------------------------------------


def test_events_describe_watch_events(runner: CliRunner, fake_daemon: Any) -> None:
    stored = [
        {"id": 1, "type": "watch.state", "time": 1.5, "watch_id": WATCH, "state": "active", "previous_state": None,
         "watch": watch_object(WATCH)},
        _quarantined(2, "run3/d.h5"),
        {"id": 3, "type": "watch.state", "time": 3.0, "watch_id": WATCH, "state": None, "previous_state": "active",
         "watch": None},
    ]
    fake_daemon.on("events.list", lambda p: {"events": stored, "last_event_id": 3})
    result = invoke(runner, "events", "--type", "watch.state", "--type", "watch.file")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"1  1.5  watch.state  {WATCH}  - -> active",
        f"2  1764511202.0  watch.file  {WATCH}  run3/d.h5  queued -> quarantined  [io_error] EIO",
        f"3  3.0  watch.state  {WATCH}  active -> removed",
    ]
