"""Watch folders through the SDK, against the fake daemon: the exact ``watch.*`` parameters each
method sends, the typed models it builds from answers of the contract's shapes, paging through
``watch.files``, the arguments refused before anything is sent, and the async twin."""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
from dataerai import (
    DaemonError,
    DaemonTimeoutError,
    DataEraiClient,
    DataeraiClient,
    Event,
    JobError,
    Watch,
    WatchFile,
    WatchProblem,
)
from dataerai.aio import AsyncDataeraiClient
from fake_watches import DEFAULT_EXCLUDES, file_counts, watch_file_object, watch_object
from sdk_fake_daemon import NO_REPLY, FakeDaemon

PROJECT = "prj_0123456789"
COLLECTION = "col_0123456789"
OTHER_WATCH = "wat_aaaaaaaaaaaaaaaaaaaa"
UTC = timezone.utc


def only_call(daemon: FakeDaemon, method: str) -> dict[str, Any]:
    (request,) = daemon.calls(method)
    return dict(request.params)


def sans_watch_id(params: dict[str, Any]) -> dict[str, Any]:
    """``watch.add``'s parameters without the id the SDK chose (checked for its shape)."""
    rest = dict(params)
    assert re.fullmatch(r"wat_[0-9a-f]{20}", rest.pop("watch_id"))
    return rest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "instrument"
    path.mkdir()
    return path


# --- the contract's shape ---------------------------------------------------------


def test_the_watch_methods_have_the_documented_signatures() -> None:
    empty = inspect.Parameter.empty
    signature = inspect.signature(DataeraiClient.add_watch)
    assert {name: p.default for name, p in signature.parameters.items() if name != "self"} == {
        "root": empty,
        "project_id": empty,
        "collection_id": None,
        "prefix": None,
        "complete_when": None,
        "after_upload": "keep",
        "excludes": None,
        "default_excludes": True,
        "tags": None,
        "metadata_template": None,
        "priority": 0,
        "rescan_interval_s": None,
        "force_polling": False,
        "free_space_below": None,
        "window": None,
        "watch_id": None,
    }
    assert all(p.kind is p.KEYWORD_ONLY for name, p in signature.parameters.items() if name not in ("self", "root"))
    names = ("add_watch", "list_watches", "get_watch", "watch_files", "pause_watch", "resume_watch", "rescan_watch",
             "remove_watch")
    for name in names:
        blocking = inspect.signature(getattr(DataeraiClient, name))
        twin = getattr(AsyncDataeraiClient, name)
        assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
        assert inspect.signature(twin).parameters == blocking.parameters, name
        assert getattr(DataEraiClient, name) is getattr(DataeraiClient, name)
        assert inspect.getdoc(getattr(DataeraiClient, name)), name


# --- watch.add --------------------------------------------------------------------------


def test_add_watch_sends_every_option_and_returns_the_watch(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, tmp_path: Path) -> None:
    watch = client.add_watch(
        root,
        project_id=PROJECT,
        collection_id=COLLECTION,
        prefix="beamline7/raw",
        complete_when="stable:1h30m",
        after_upload=f"move:{tmp_path / 'done'}",
        excludes=("*.lock", "scratch/**"),
        default_excludes=False,
        tags=["raw", "b7"],
        metadata_template={"instrument": {"name": "B7"}, "beam": 7},
        priority=5,
        rescan_interval_s=600,
        force_polling=True,
        free_space_below="15%",
        watch_id=OTHER_WATCH,
    )
    assert only_call(daemon, "watch.add") == {
        "root": str(root),
        "project_id": PROJECT,
        "collection_id": COLLECTION,
        "prefix": "beamline7/raw",
        "complete_when": "stable:1h30m",
        "after_upload": f"move:{tmp_path / 'done'}",
        "excludes": ["*.lock", "scratch/**"],
        "default_excludes": False,
        "tags": ["raw", "b7"],
        "metadata_template": {"instrument": {"name": "B7"}, "beam": 7},
        "priority": 5,
        "rescan_interval_s": 600.0,
        "force_polling": True,
        "free_space_below": "15%",
        "watch_id": OTHER_WATCH,
    }
    assert isinstance(watch, Watch)
    assert (watch.watch_id, watch.root, watch.state, watch.mode) == (OTHER_WATCH, str(root), "active", "polling")
    assert (watch.project_id, watch.collection_id, watch.prefix) == (PROJECT, COLLECTION, "beamline7/raw")
    assert watch.excludes == ["*.lock", "scratch/**"] and watch.tags == ["raw", "b7"]
    assert watch.metadata_template == {"instrument": {"name": "B7"}, "beam": 7}
    assert (watch.priority, watch.rescan_interval_s, watch.force_polling) == (5, 600.0, True)
    assert watch.files == file_counts() and watch.pending == 0 and watch.quarantined == 0
    assert watch.created_at == datetime(2026, 11, 25, 14, tzinfo=UTC)


def test_add_watch_sends_the_defaults_and_an_absolute_root(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    watch = client.add_watch("data", project_id=PROJECT)
    params = only_call(daemon, "watch.add")
    assert sans_watch_id(params) == {
        "root": str(tmp_path / "data"),
        "project_id": PROJECT,
        "after_upload": "keep",
        "default_excludes": True,
        "priority": 0,
        "force_polling": False,
    }
    assert watch.watch_id == params["watch_id"]  # the SDK chose the id, the daemon kept it
    assert watch.excludes == DEFAULT_EXCLUDES and watch.mode == "events"


def test_add_watch_expands_the_home_in_root_and_move_dir(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "incoming").mkdir()
    client.add_watch("~/incoming", project_id=PROJECT, after_upload="move:~/done/../archive")
    params = only_call(daemon, "watch.add")
    assert params["root"] == str(tmp_path / "incoming")
    assert params["after_upload"] == f"move:{tmp_path / 'archive'}"


@pytest.mark.parametrize("action", ["keep", "delete"])
@pytest.mark.parametrize("rule", ["close", "stable:30s", "sentinel:DONE"])
def test_add_watch_passes_the_rules_on(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, rule: str, action: str) -> None:
    watch = client.add_watch(root, project_id=PROJECT, complete_when=rule, after_upload=action)
    params = only_call(daemon, "watch.add")
    assert (params["complete_when"], params["after_upload"]) == (rule, action)
    assert (watch.complete_when, watch.after_upload) == (rule, action)


def test_the_same_watch_id_is_the_same_watch(client: DataeraiClient, daemon: FakeDaemon, root: Path) -> None:
    first = client.add_watch(root, project_id=PROJECT, watch_id=OTHER_WATCH)
    again = client.add_watch(root, project_id=PROJECT, watch_id=OTHER_WATCH)
    assert first == again and len(client.list_watches()) == 1


def test_an_add_that_timed_out_names_the_watch_it_may_have_made(
        daemon: FakeDaemon, root: Path) -> None:
    daemon.handlers["watch.add"] = lambda conn, request: NO_REPLY
    with DataeraiClient(socket_path=daemon.socket_path, auto_start=False, request_timeout_s=0.2) as client, \
            pytest.raises(DaemonTimeoutError) as info:
        client.add_watch(root, project_id=PROJECT)
    sent = only_call(daemon, "watch.add")["watch_id"]
    assert info.value.data["watch_id"] == sent
    assert f"client.get_watch('{sent}')" in info.value.message


def test_nested_roots_are_the_daemons_conflict(client: DataeraiClient, daemon: FakeDaemon, root: Path) -> None:
    (root / "sub").mkdir()
    outer = client.add_watch(root, project_id=PROJECT)
    with pytest.raises(DaemonError) as info:
        client.add_watch(root / "sub", project_id=PROJECT)
    assert info.value.code == "conflict" and info.value.data["watch_id"] == outer.watch_id


def test_a_missing_root_is_not_found_before_anything_is_sent(
        client: DataeraiClient, daemon: FakeDaemon, tmp_path: Path) -> None:
    with pytest.raises(DaemonError) as info:
        client.add_watch(tmp_path / "nowhere", project_id=PROJECT)
    assert info.value.code == "not_found" and str(tmp_path / "nowhere") in info.value.message
    (tmp_path / "a_file").write_bytes(b"x")
    with pytest.raises(DaemonError) as info:
        client.add_watch(tmp_path / "a_file", project_id=PROJECT)
    assert info.value.code == "invalid_argument" and info.value.data == {"param": "root"}
    assert daemon.calls("watch.add") == []


BAD_ADD_ARGUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("project_id", {"project_id": "proj-abc123"}),
    ("project_id", {"project_id": COLLECTION}),
    ("collection_id", {"collection_id": "col_../x"}),
    ("watch_id", {"watch_id": "wat_SHOUTING1"}),
    ("prefix", {"prefix": "/abs"}),
    ("prefix", {"prefix": "a/../b"}),
    ("complete_when", {"complete_when": "soon"}),
    ("complete_when", {"complete_when": "stable"}),
    ("complete_when", {"complete_when": "sentinel:"}),
    ("complete_when", {"complete_when": "close:now"}),
    ("after_upload", {"after_upload": "archive"}),
    ("after_upload", {"after_upload": "move"}),
    ("after_upload", {"after_upload": "move:"}),
    ("after_upload", {"after_upload": "delete:/x"}),
    ("excludes", {"excludes": "*.tmp"}),
    ("excludes", {"excludes": ["*.tmp", ""]}),
    ("excludes", {"excludes": ["*"] * 1001}),
    ("tags", {"tags": "raw"}),
    ("priority", {"priority": True}),
    ("priority", {"priority": 1.5}),
    ("rescan_interval_s", {"rescan_interval_s": 0.5}),
    ("rescan_interval_s", {"rescan_interval_s": 8 * 86400}),
    ("rescan_interval_s", {"rescan_interval_s": "60"}),
    ("default_excludes", {"default_excludes": "no"}),
    ("force_polling", {"force_polling": 1}),
    ("free_space_below", {"free_space_below": ""}),
    ("free_space_below", {"free_space_below": 20}),
    ("metadata_template", {"metadata_template": 42}),
]


@pytest.mark.parametrize(("param", "kwargs"), BAD_ADD_ARGUMENTS,
                         ids=[f"{param}-{i}" for i, (param, _) in enumerate(BAD_ADD_ARGUMENTS)])
def test_add_watch_refuses_bad_arguments_before_sending(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, param: str, kwargs: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"project_id": PROJECT, **kwargs}
    with pytest.raises(DaemonError) as info:
        client.add_watch(root, **arguments)
    assert info.value.code == "invalid_argument"
    assert info.value.data == {"param": param}
    assert param in info.value.message
    assert daemon.calls("watch.add") == []


# --- metadata templates --------------------------------------------------------------------


def test_a_toml_template_is_read_and_sent_as_an_object(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.toml"
    template.write_text('title = "{stem}"\n[instrument]\nname = "B7"\nenergy_kev = 12.4\n')
    client.add_watch(root, project_id=PROJECT, metadata_template=template)
    assert only_call(daemon, "watch.add")["metadata_template"] == {
        "title": "{stem}", "instrument": {"name": "B7", "energy_kev": 12.4}}
    client.remove_watch(client.list_watches()[0].watch_id)
    client.add_watch(root, project_id=PROJECT, metadata_template=str(template))  # a path as a string
    assert daemon.calls("watch.add")[1].params["metadata_template"]["instrument"]["name"] == "B7"


def test_a_template_that_cannot_be_read_is_refused_before_sending(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, tmp_path: Path) -> None:
    with pytest.raises(DaemonError) as info:
        client.add_watch(root, project_id=PROJECT, metadata_template=tmp_path / "missing.toml")
    assert info.value.code == "not_found" and "missing.toml" in info.value.message
    broken = tmp_path / "broken.toml"
    broken.write_text("title = \n")
    with pytest.raises(DaemonError) as info:
        client.add_watch(root, project_id=PROJECT, metadata_template=broken)
    assert info.value.code == "invalid_argument" and "not valid TOML" in info.value.message
    assert daemon.calls("watch.add") == []


def test_without_tomllib_a_template_file_asks_for_a_dict(
        client: DataeraiClient, daemon: FakeDaemon, root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "template.toml"
    template.write_text("beam = 7\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10: `import tomllib` fails
    with pytest.raises(DaemonError) as info:
        client.add_watch(root, project_id=PROJECT, metadata_template=template)
    assert info.value.code == "invalid_argument" and info.value.data == {"param": "metadata_template"}
    assert "Python 3.11" in info.value.message and "as a dict" in info.value.message
    assert daemon.calls("watch.add") == []
    client.add_watch(root, project_id=PROJECT, metadata_template={"beam": 7})  # a dict needs no TOML reader
    assert only_call(daemon, "watch.add")["metadata_template"] == {"beam": 7}


# --- reading watches ---------------------------------------------------------------------------


def test_list_and_get_build_typed_watches(client: DataeraiClient, daemon: FakeDaemon) -> None:
    unavailable = watch_object(
        OTHER_WATCH, "/mnt/detector", state="unavailable", mode="polling",
        problem={"code": "root_unmounted", "message": "/mnt/detector is not mounted"},
        mode_reason={"code": "no_inotify", "message": "inotify is not available on nfs"},
        files=file_counts(seen=2, queued=1, verified=40, quarantined=3), lag_s=754.5,
        oldest_pending="S0042/run007/tile_0001.tif", last_scan_at=None, free_space_below="20G",
    )
    daemon.watches.put(watch_object())
    daemon.watches.put(unavailable)
    first, second = client.list_watches()
    assert only_call(daemon, "watch.list") == {}
    assert first.watch_id.startswith("wat_") and first.problem is None and first.lag_s is None
    assert second == client.get_watch(OTHER_WATCH)
    assert only_call(daemon, "watch.get") == {"watch_id": OTHER_WATCH}
    assert second.problem == WatchProblem("root_unmounted", "/mnt/detector is not mounted")
    assert second.mode_reason == WatchProblem("no_inotify", "inotify is not available on nfs")
    assert second.files["verified"] == 40 and second.pending == 3 and second.quarantined == 3
    assert second.lag_s == 754.5
    assert second.oldest_pending == "S0042/run007/tile_0001.tif"
    assert second.last_scan_at is None and second.free_space_below == "20G"
    assert second.raw == unavailable


def test_an_unknown_watch_is_not_found_and_a_malformed_id_never_leaves(
        client: DataeraiClient, daemon: FakeDaemon) -> None:
    with pytest.raises(DaemonError) as info:
        client.get_watch(OTHER_WATCH)
    assert info.value.code == "not_found"
    for method in ("get_watch", "pause_watch", "resume_watch", "rescan_watch", "remove_watch", "watch_files"):
        with pytest.raises(DaemonError) as info:
            getattr(client, method)("../wat_x")
        assert info.value.code == "invalid_argument" and info.value.data == {"param": "watch_id"}, method
    assert [r.method for r in daemon.requests] == ["watch.get"]


def test_pause_resume_rescan_and_remove(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.watches.put(watch_object(OTHER_WATCH))
    assert client.pause_watch(OTHER_WATCH).state == "paused"
    assert client.resume_watch(OTHER_WATCH).state == "active"
    assert client.rescan_watch(OTHER_WATCH).last_scan_at == datetime(2026, 11, 25, 15, tzinfo=UTC)
    # What the annotation says, held at run time too.
    assert client.remove_watch(OTHER_WATCH) is None  # type: ignore[func-returns-value]
    assert [(r.method, r.params) for r in daemon.requests] == [
        (method, {"watch_id": OTHER_WATCH})
        for method in ("watch.pause", "watch.resume", "watch.rescan", "watch.remove")
    ]
    assert client.list_watches() == []


# --- watch.files ------------------------------------------------------------------------------


def _files() -> list[Any]:
    return [
        watch_file_object("run1/a.h5", "verified", asset_id="ast_0000000001", content_id="cnt_0000000001",
                          sha256="ab" * 32),
        watch_file_object("run1/b.h5", "queued", job_id="job_0123456789abcdef01234567", sha256=None),
        watch_file_object("run1/c.lock", "ignored", error={"code": "excluded", "message": "matches *.lock"}),
        watch_file_object("run2", "seen", kind="dataset", size=None),
        watch_file_object("run3/d.h5", "quarantined", attempts=5, retry_at="2026-11-25T16:00:00Z",
                          error={"code": "permission_denied", "message": "cannot read run3/d.h5"}),
        watch_file_object("run3/e.h5", "verified"),
        watch_file_object("run4/f.h5", "verified"),
    ]


def test_watch_files_pages_through_after_in_path_order(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.watches.put(watch_object(OTHER_WATCH), list(reversed(_files())))
    files = client.watch_files(OTHER_WATCH, page_size=3)
    assert daemon.calls("watch.files") == []  # nothing is asked before the first file is wanted
    assert next(files).path == "run1/a.h5"
    assert len(daemon.calls("watch.files")) == 1
    rest = list(files)
    assert [f.path for f in rest] == ["run1/b.h5", "run1/c.lock", "run2", "run3/d.h5", "run3/e.h5", "run4/f.h5"]
    assert [r.params for r in daemon.calls("watch.files")] == [
        {"watch_id": OTHER_WATCH, "limit": 3},
        {"watch_id": OTHER_WATCH, "limit": 3, "after": "run1/c.lock"},
        {"watch_id": OTHER_WATCH, "limit": 3, "after": "run3/e.h5"},
    ]


def test_watch_files_builds_typed_files(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.watches.put(watch_object(OTHER_WATCH), _files())
    by_path = {f.path: f for f in client.watch_files(OTHER_WATCH)}
    assert only_call(daemon, "watch.files") == {"watch_id": OTHER_WATCH, "limit": 1000}
    assert all(isinstance(f, WatchFile) for f in by_path.values())
    verified = by_path["run1/a.h5"]
    assert (verified.state, verified.kind, verified.size) == ("verified", "file", 1024)
    assert (verified.asset_id, verified.content_id, verified.sha256) == ("ast_0000000001", "cnt_0000000001", "ab" * 32)
    assert verified.mtime == datetime(2026, 11, 25, 13, 59, tzinfo=UTC) and verified.error is None
    assert verified.seen_at is not None and verified.updated_at is not None
    assert verified.seen_at + timedelta(seconds=30) == verified.updated_at
    assert by_path["run1/b.h5"].job_id == "job_0123456789abcdef01234567"
    dataset = by_path["run2"]
    assert (dataset.kind, dataset.size) == ("dataset", None)
    quarantined = by_path["run3/d.h5"]
    assert quarantined.error == JobError("permission_denied", "cannot read run3/d.h5")
    assert quarantined.attempts == 5 and quarantined.retry_at == datetime(2026, 11, 25, 16, tzinfo=UTC)


def test_watch_files_filters_by_state(client: DataeraiClient, daemon: FakeDaemon) -> None:
    daemon.watches.put(watch_object(OTHER_WATCH), _files())
    found = list(client.watch_files(OTHER_WATCH, states=("quarantined", "ignored")))
    assert [f.path for f in found] == ["run1/c.lock", "run3/d.h5"]
    assert only_call(daemon, "watch.files")["states"] == ["quarantined", "ignored"]
    assert [f.path for f in client.watch_files(OTHER_WATCH, states="seen")] == ["run2"]


@pytest.mark.parametrize(("param", "kwargs"), [
    ("states", {"states": ["quarantined", "lost"]}),
    ("states", {"states": ["running"]}),
    ("page_size", {"page_size": 0}),
    ("page_size", {"page_size": 10_001}),
    ("page_size", {"page_size": True}),
])
def test_watch_files_refuses_bad_arguments_at_the_call(
        client: DataeraiClient, daemon: FakeDaemon, param: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(DaemonError) as info:
        client.watch_files(OTHER_WATCH, **kwargs)  # not only once iterated
    assert info.value.code == "invalid_argument" and info.value.data == {"param": param}
    assert daemon.requests == []


# --- events --------------------------------------------------------------------------------------


def test_watch_events_are_read_with_their_watch_and_file() -> None:
    watch = watch_object(OTHER_WATCH, state="unavailable", problem={"code": "root_missing", "message": "gone"})
    changed = Event.from_wire({"id": 7, "type": "watch.state", "time": 1764511200.5, "watch_id": OTHER_WATCH,
                               "state": "unavailable", "previous_state": "active", "watch": watch})
    assert (changed.watch_id, changed.state, changed.previous_state) == (OTHER_WATCH, "unavailable", "active")
    assert changed.watch == Watch.from_wire(watch) and changed.watch is not None
    assert changed.watch.problem == WatchProblem("root_missing", "gone")
    assert changed.time == datetime(2025, 11, 30, 14, 0, 0, 500000, tzinfo=UTC)  # Unix seconds, as sent
    assert changed.job is None and changed.file is None and changed.path is None
    removed = Event.from_wire({"id": 8, "type": "watch.state", "time": 1764511201.0, "watch_id": OTHER_WATCH,
                               "state": None, "previous_state": "active", "watch": None})
    assert (removed.state, removed.previous_state, removed.watch) == (None, "active", None)
    quarantine = watch_file_object("run3/d.h5", "quarantined", error={"code": "io_error", "message": "EIO"})
    file_event = Event.from_wire({"id": 9, "type": "watch.file", "time": 1764511202.0, "watch_id": OTHER_WATCH,
                                  "path": "run3/d.h5", "state": "quarantined", "previous_state": "queued",
                                  "file": quarantine})
    assert (file_event.watch_id, file_event.path) == (OTHER_WATCH, "run3/d.h5")
    assert (file_event.state, file_event.previous_state) == ("quarantined", "queued")
    assert file_event.file == WatchFile.from_wire(quarantine) and file_event.watch is None
    # The watch fields stay None on job events, whatever keys they carry.
    job_event = Event.from_wire({"id": 10, "type": "job.priority", "watch_id": OTHER_WATCH, "path": "x",
                                 "state": "running"})
    assert (job_event.watch_id, job_event.path, job_event.state) == (None, None, None)


def test_watch_events_come_through_the_stream(client: DataeraiClient, daemon: FakeDaemon) -> None:
    with client.events() as stream:
        daemon.broadcast({"type": "watch.file", "watch_id": OTHER_WATCH, "path": "a.h5", "state": "verified",
                          "previous_state": "uploaded", "file": watch_file_object("a.h5", "verified")})
        event = next(stream)
    assert event.type == "watch.file" and event.file is not None and event.file.state == "verified"


# --- the async twin ------------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_the_async_twin_drives_a_watch(daemon: FakeDaemon, root: Path, library: str) -> None:
    daemon.watches.put(watch_object(OTHER_WATCH, "/elsewhere"), _files())
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with AsyncDataeraiClient(socket_path=daemon.socket_path, auto_start=False) as client:
            added = await client.add_watch(root, project_id=PROJECT, tags=["raw"])
            seen["added"] = added
            seen["listed"] = [w.watch_id for w in await client.list_watches()]
            seen["got"] = await client.get_watch(added.watch_id)
            seen["paths"] = [f.path async for f in await client.watch_files(OTHER_WATCH, page_size=4)]
            seen["paused"] = (await client.pause_watch(added.watch_id)).state
            seen["resumed"] = (await client.resume_watch(added.watch_id)).state
            seen["rescanned"] = (await client.rescan_watch(added.watch_id)).last_scan_at
            seen["removed"] = await client.remove_watch(added.watch_id)  # type: ignore[func-returns-value]  # held: None
            with pytest.raises(DaemonError) as info:
                await client.watch_files(OTHER_WATCH, states=["lost"])
            seen["refused"] = info.value.data

    if library == "asyncio":
        asyncio.run(scenario())
    else:
        trio.run(scenario)
    added = seen["added"]
    assert isinstance(added, Watch) and added.root == str(root) and added.tags == ["raw"]
    assert seen["listed"] == [OTHER_WATCH, added.watch_id] and seen["got"] == added
    assert seen["paths"] == [f["path"] for f in _files()]
    assert [r.params.get("after") for r in daemon.calls("watch.files")] == [None, "run2"]
    assert (seen["paused"], seen["resumed"], seen["removed"]) == ("paused", "active", None)
    assert seen["rescanned"] == datetime(2026, 11, 25, 15, tzinfo=UTC)
    assert seen["refused"] == {"param": "states"}
    assert sans_watch_id(daemon.calls("watch.add")[0].params)["tags"] == ["raw"]
