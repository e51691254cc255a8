"""Watch folders through real processes: a real daemon with inotify on a temporary folder,
real writers, a real server; each file uploaded once, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stack import Stack, as_nobody, wait_for

KiB = 1024

#: A writer that behaves like an instrument: it opens its file once, writes bursts with pauses
#: longer than the watch's stability window, and closes only at the end. It says when it opened
#: the file and, last, the wall time at which it closed it.
WRITER = r"""
import os, sys, time
path, bursts, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(path + ".tmp-never", "wb"):
    pass
os.unlink(path + ".tmp-never")
with open(path, "wb") as f:
    print("opened", flush=True)
    for i in range(bursts):
        f.write(bytes([i % 251]) * 65536)
        f.flush()
        time.sleep(pause)
print(time.time(), flush=True)
"""

#: A dataset writer: several files in a directory, slowly, and the sentinel last.
DATASET_WRITER = r"""
import os, sys, time
top, files, pause, sentinel = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
os.makedirs(top)
print("opened", flush=True)
for i in range(files):
    with open(os.path.join(top, f"frame_{i:03}.raw"), "wb") as f:
        f.write(bytes([i]) * 50000)
    time.sleep(pause)
with open(os.path.join(top, sentinel), "w") as f:
    f.write("done\n")
print(time.time(), flush=True)
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_watch(client: Any, root: Path, project_id: str, **params: Any) -> dict[str, Any]:
    watch: dict[str, Any] = client.call("watch.add", {"root": str(root), "project_id": project_id, **params})
    return watch


def files_of(client: Any, watch_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    after = None
    while True:
        page = client.call("watch.files", {"watch_id": watch_id, "after": after, "limit": 1000})
        out.update((f["path"], f) for f in page["files"])
        after = page["next_after"]
        if after is None:
            return out


def wait_states(client: Any, watch_id: str, wanted: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """Until every path in ``wanted`` is in its state; the files as they are then."""

    def reached() -> dict[str, Any] | None:
        files = files_of(client, watch_id)
        if all(files.get(p, {}).get("state") == s for p, s in wanted.items()):
            return files
        return None

    try:
        found: dict[str, Any] = wait_for(reached, timeout, f"files {wanted}", interval=0.1)
    except TimeoutError:
        raise AssertionError(f"{wanted} not reached; the watch has {files_of(client, watch_id)}") from None
    return found


def server_assets(stack: Stack) -> dict[str, dict[str, Any]]:
    """The project's assets on the server, by path; fails on two assets with one path."""
    with stack.api() as api:
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"project_id": stack.project_id, "limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = api.get("/assets", params=params).json()
            found.extend(page["assets"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
    by_path: dict[str, dict[str, Any]] = {}
    for asset in found:
        assert asset["path"] not in by_path, f"two assets at {asset['path']}"
        by_path[asset["path"]] = asset
    return by_path


def start_writer(script: str, *args: str) -> subprocess.Popen[str]:
    writer = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "opened"
    return writer


def finished_at(writer: subprocess.Popen[str]) -> float:
    assert writer.stdout is not None
    line = writer.stdout.readline()
    assert writer.wait(60) == 0
    return float(line)


def job_created(client: Any, job_id: str) -> float:
    from datetime import datetime

    created = client.call("job.get", {"job_id": job_id})["created_at"]
    return datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=__import__("datetime").timezone.utc
                                                                       ).timestamp()


# --- never a half-written file ------------------------------------------------------


@pytest.mark.parametrize("rule", ["close", "stable:1s"])
def test_a_slow_writer_is_uploaded_once_complete_and_never_before(stack: Stack, tmp_path: Path, rule: str) -> None:
    root = tmp_path / "microscope"
    root.mkdir()
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when=rule)
        assert watch["complete_when"] == rule and watch["state"] == "active" and watch["mode"] == "events"
        writer = start_writer(WRITER, str(root / "tile.tif"), "4", "1.5")
        done = finished_at(writer)
        files = wait_states(client, watch["watch_id"], {"tile.tif": "verified"})
        row = files["tile.tif"]
        assert row["attempts"] == 0 and row["size"] == 4 * 65536
        assert job_created(client, row["job_id"]) >= done - 0.05, "queued before its writer closed it"
        jobs = [j for j in client.call("job.list")["jobs"] if j["local_path"] == str(root / "tile.tif")]
    assert len(jobs) == 1, "one job, for the final version only"
    assets = server_assets(stack)
    assert list(assets) == ["tile.tif"]
    assert assets["tile.tif"]["latest_content"]["sha256"] == sha256(root / "tile.tif")
    assert assets["tile.tif"]["latest_content"]["size"] == 4 * 65536


def test_a_dataset_is_one_asset_once_its_sentinel_appears(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "beamline"
    root.mkdir()
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="sentinel:DONE",
                          prefix="bl7")
        writer = start_writer(DATASET_WRITER, str(root / "scan_0001"), "5", "0.7", "DONE")
        done = finished_at(writer)
        files = wait_states(client, watch["watch_id"], {"scan_0001": "verified"})
        assert files["scan_0001"]["kind"] == "dataset"
        assert job_created(client, files["scan_0001"]["job_id"]) >= done - 0.05
        with stack.api() as api:
            listing = api.get(f"/assets/{files['scan_0001']['asset_id']}/files").json()["files"]
    assets = server_assets(stack)
    assert list(assets) == ["bl7/scan_0001"]
    assert sorted(f["path"] for f in listing) == ["scan_0001/DONE"] + [f"scan_0001/frame_{i:03}.raw" for i in range(5)]


# --- exactly once, across a daemon's death ---------------------------------------------


def test_files_written_while_the_daemon_was_killed_go_up_once_after_restart(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "sequencer"
    (root / "run1").mkdir(parents=True)
    for i in range(5):
        (root / "run1" / f"early{i}.fastq").write_bytes(b"ACGT" * (1000 + i))
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s")
        wait_states(client, watch["watch_id"], {f"run1/early{i}.fastq": "verified" for i in range(5)})
    stack.stop_daemon(signal.SIGKILL)
    (root / "run2").mkdir()
    for i in range(20):
        (root / "run2" / f"late{i:02}.fastq").write_bytes(b"TTGA" * (2000 + i))
    stack.start_daemon()
    wanted = {f"run1/early{i}.fastq": "verified" for i in range(5)} | {
        f"run2/late{i:02}.fastq": "verified" for i in range(20)}
    with stack.client() as client:
        files = wait_states(client, watch["watch_id"], wanted)
        assert {p: f["attempts"] for p, f in files.items() if p in wanted} == dict.fromkeys(wanted, 0)
    assets = server_assets(stack)
    assert set(assets) == set(wanted)
    for path in wanted:
        assert assets[path]["latest_content"]["sha256"] == sha256(root / path)


def test_a_file_modified_after_upload_becomes_a_new_content_of_the_same_asset(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "notebook"
    root.mkdir()
    (root / "analysis.csv").write_text("a,b\n1,2\n")
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s")
        first = wait_states(client, watch["watch_id"], {"analysis.csv": "verified"})["analysis.csv"]
        (root / "analysis.csv").write_text("a,b\n1,2\n3,4\n")
        os.utime(root / "analysis.csv", ns=(time.time_ns(), time.time_ns() + 10**9))

        def new_version() -> dict[str, Any] | None:
            row = files_of(client, watch["watch_id"])["analysis.csv"]
            return row if row["state"] == "verified" and row["content_id"] != first["content_id"] else None

        second = wait_for(new_version, 60, "the second version verified", interval=0.1)
    assert second["asset_id"] == first["asset_id"]
    assets = server_assets(stack)
    assert list(assets) == ["analysis.csv"]
    assert assets["analysis.csv"]["latest_content"]["content_id"] == second["content_id"]
    assert assets["analysis.csv"]["latest_content"]["sha256"] == sha256(root / "analysis.csv")


# --- freeing the disk only after verification -------------------------------------------


def test_delete_after_upload_deletes_only_files_the_repository_verified(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    digests = {}
    for i in range(8):
        path = root / f"img{i}.tif"
        path.write_bytes(os.urandom(30 * KiB + i))
        digests[path.name] = sha256(path)
    (root / "partial.part").write_bytes(b"never taken")  # a default exclude
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                          after_upload="delete")
        files = wait_states(client, watch["watch_id"], {name: "cleaned" for name in digests})
        assert files["partial.part"]["state"] == "ignored"
    assets = server_assets(stack)
    for name, digest in digests.items():
        assert not (root / name).exists()
        assert assets[name]["latest_content"]["sha256"] == digest == files[name]["sha256"]
    assert (root / "partial.part").exists() and "partial.part" not in assets


def test_move_after_upload_keeps_the_relative_path(stack: Stack, tmp_path: Path) -> None:
    root, done = tmp_path / "incoming", tmp_path / "uploaded"
    (root / "day1").mkdir(parents=True)
    (root / "day1" / "a.dat").write_bytes(b"alpha" * 100)
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                          after_upload=f"move:{done}")
        wait_states(client, watch["watch_id"], {"day1/a.dat": "cleaned"})
    assert (done / "day1" / "a.dat").read_bytes() == b"alpha" * 100
    assert not (root / "day1" / "a.dat").exists()


# --- a missing root is not an empty folder -------------------------------------------------


def test_a_root_renamed_away_pauses_the_watch_and_deletes_nothing(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / "kept.bin").write_bytes(b"k" * 1000)
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                          after_upload="keep")
        watch_id = watch["watch_id"]
        wait_states(client, watch_id, {"kept.bin": "verified"})
        root.rename(tmp_path / "share-away")

        def unavailable() -> dict[str, Any] | None:
            got: dict[str, Any] = client.call("watch.get", {"watch_id": watch_id})
            return got if got["state"] == "unavailable" else None

        away = wait_for(unavailable, 30, "the watch to notice", interval=0.1)
        assert away["problem"]["code"] == "root_missing"
        assert files_of(client, watch_id)["kept.bin"]["state"] == "verified", "the record is kept"
        (tmp_path / "share-away").rename(root)
        (root / "new.bin").write_bytes(b"n" * 1000)
        wait_states(client, watch_id, {"kept.bin": "verified", "new.bin": "verified"})
        assert client.call("watch.get", {"watch_id": watch_id})["state"] == "active"
    assert (root / "kept.bin").exists()
    assert set(server_assets(stack)) == {"kept.bin", "new.bin"}


# --- one bad file never stalls the rest -----------------------------------------------------


def test_a_file_that_breaks_the_template_is_quarantined_while_the_others_flow(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "scope"
    root.mkdir()
    for name in ("S0001_run1.tif", "S0002_run1.tif", "notes.txt"):
        (root / name).write_bytes(name.encode() * 10)
    template = {"title": "{match.sample} run {match.run}", "match": {"pattern": r"(?P<sample>S\d+)_run(?P<run>\d+)",
                                                                      "required": True},
                "metadata": {"sample": "{match.sample}"}}
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                          metadata_template=template)
        files = wait_states(client, watch["watch_id"], {"S0001_run1.tif": "verified", "S0002_run1.tif": "verified",
                                                        "notes.txt": "quarantined"})
        assert files["notes.txt"]["error"]["code"] == "template_mismatch"
    assets = server_assets(stack)
    assert set(assets) == {"S0001_run1.tif", "S0002_run1.tif"}
    assert assets["S0002_run1.tif"]["title"] == "S0002 run 1"
    assert assets["S0002_run1.tif"]["metadata"] == {"sample": "S0002"}


# --- where there are no file events --------------------------------------------------------


def test_a_polling_only_watch_uploads_what_appears(stack: Stack, tmp_path: Path) -> None:
    """Through the SDK's typed methods, as a notebook would set one up for a network share."""
    root = tmp_path / "nfs-like"
    root.mkdir()
    with stack.client() as client:
        watch = client.add_watch(root, project_id=stack.project_id, force_polling=True,
                                 rescan_interval_s=1, complete_when="stable:1s")
        assert (watch.mode, watch.state, watch.rescan_interval_s) == ("polling", "active", 1.0)
        (root / "x").mkdir()
        (root / "x" / "one.dat").write_bytes(b"1" * 5000)

        def verified() -> list[Any]:
            return [f for f in client.watch_files(watch.watch_id, states=["verified"]) if f.path == "x/one.dat"]

        (row,) = wait_for(verified, 60, "x/one.dat verified", interval=0.1)
        assert row.sha256 == sha256(root / "x" / "one.dat") and row.asset_id
        assert [w.watch_id for w in client.list_watches()] == [watch.watch_id]
        assert client.get_watch(watch.watch_id).files["verified"] == 1
        assert client.pause_watch(watch.watch_id).state == "paused"
        client.remove_watch(watch.watch_id)
        assert client.list_watches() == []
    assert set(server_assets(stack)) == {"x/one.dat"}


def test_the_cli_adds_a_watch_with_a_template_file_and_reports_it(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "cli-watched"
    (root / "S0007").mkdir(parents=True)
    (root / "S0007" / "run003.raw").write_bytes(b"r" * 2000)
    template = tmp_path / "watch-meta.toml"
    template.write_text('title = "{match.sample} run {match.run}"\ntags = ["sample-{match.sample}"]\n'
                        '[match]\npattern = \'(?P<sample>S\\d+)/run(?P<run>\\d+)\'\n')
    added = json.loads(stack.cli("watch", "add", str(root), "--project", stack.project_id,
                                 "--complete-when", "stable:1s", "--tag", "raw", "--exclude", "*.tmp",
                                 "--metadata-template", str(template), "--json").stdout)
    assert added["watch_id"].startswith("wat_") and added["tags"] == ["raw"] and added["excludes"] == ["*.tmp"]
    with stack.client() as client:
        wait_states(client, added["watch_id"], {"S0007/run003.raw": "verified"})
    status = json.loads(stack.cli("watch", "status", added["watch_id"], "--json").stdout)
    assert [(f["path"], f["state"]) for f in status["files"]] == [("S0007/run003.raw", "verified")]
    listed = stack.cli("watch", "ls").stdout
    assert added["watch_id"] in listed and str(root) in listed
    summary = json.loads(stack.cli("status", "--json").stdout)
    assert [w["watch_id"] for w in summary["watches"]] == [added["watch_id"]]
    asset = server_assets(stack)["S0007/run003.raw"]
    assert asset["title"] == "S0007 run 003"
    assert {tag.lower() for tag in asset["tags"]} == {"raw", "sample-s0007"}


# --- the RPC's answers -----------------------------------------------------------------


def test_watch_methods_answer_clearly(stack: Stack, tmp_path: Path) -> None:
    from dataerai import DaemonError

    root = tmp_path / "w"
    root.mkdir()
    with stack.client() as client:
        call: Callable[..., Any] = client.call
        with pytest.raises(DaemonError) as missing:
            add_watch(client, tmp_path / "nope", stack.project_id)
        assert missing.value.code == "not_found"
        with pytest.raises(DaemonError) as bad_rule:
            add_watch(client, root, stack.project_id, complete_when="soon")
        assert bad_rule.value.code == "invalid_argument" and bad_rule.value.data["param"] == "complete_when"
        watch = add_watch(client, root, stack.project_id)
        assert watch["complete_when"] == "close" and watch["after_upload"] == "keep"
        with pytest.raises(DaemonError) as inside:
            add_watch(client, root / "sub", stack.project_id)
        assert inside.value.code in ("conflict", "not_found")
        (root / "sub").mkdir()
        with pytest.raises(DaemonError) as overlap:
            add_watch(client, root / "sub", stack.project_id)
        assert overlap.value.code == "conflict"
        assert call("watch.pause", {"watch_id": watch["watch_id"]})["state"] == "paused"
        assert call("watch.resume", {"watch_id": watch["watch_id"]})["state"] == "active"
        assert [w["watch_id"] for w in call("watch.list")["watches"]] == [watch["watch_id"]]
        assert call("watch.remove", {"watch_id": watch["watch_id"]}) == {"watch_id": watch["watch_id"],
                                                                          "removed": True}
        with pytest.raises(DaemonError) as gone:
            call("watch.get", {"watch_id": watch["watch_id"]})
        assert gone.value.code == "not_found"
    assert not [p for p in root.iterdir() if p.name.startswith(".dataerai-watch")], "the marker goes with it"


def test_an_unreadable_file_is_retried_then_quarantined_while_the_others_flow() -> None:
    """Mode 000. Root reads any file, so as root the daemon runs as nobody (65534) here, on a stack of
    its own under /tmp (pytest's directories are closed to other users)."""
    prefix: list[str] = []
    if os.getuid() == 0:
        found = as_nobody()
        if found is None:
            pytest.skip("needs setpriv (util-linux) and an installation nobody (65534) can run")
        prefix = found
    top = Path(tempfile.mkdtemp(prefix="dw-", dir="/tmp"))
    try:
        with Stack(top, daemon_config={"watch_retry_base_s": 0.2, "watch_max_attempts": 3}) as stack:
            stack.start_server()
            stack.login(stack.add_user("ada@example.org", scope="write"))
            data = top / "data"
            data.mkdir()
            for name in ("a.bin", "poison.bin", "z.bin"):
                (data / name).write_bytes(name.encode() * 100)
            if prefix:
                for path in [top, *top.rglob("*")]:
                    os.chown(path, 65534, 65534, follow_symlinks=False)
                top.chmod(0o755)
            (data / "poison.bin").chmod(0o000)
            stack.start_daemon(prefix=prefix)
            with stack.client() as client:
                project_id = client.create_project("Unreadable").project_id
                stack.project_id = project_id
                watch = add_watch(client, data, project_id, complete_when="stable:1s")
                files = wait_states(client, watch["watch_id"], {"a.bin": "verified", "z.bin": "verified",
                                                                "poison.bin": "quarantined"})
                poison = files["poison.bin"]
                assert poison["error"]["code"] == "permission_denied", poison
                assert poison["attempts"] == 3 and "3 uploads failed" in poison["error"]["message"]
                (data / "poison.bin").chmod(0o644)
                client.call("watch.rescan", {"watch_id": watch["watch_id"]})
                wait_states(client, watch["watch_id"], {"poison.bin": "verified"})
            assert set(server_assets(stack)) == {"a.bin", "poison.bin", "z.bin"}
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_staging_quota_deletes_only_verified_files(stack: Stack, tmp_path: Path) -> None:
    """A quota no disk meets (99.99% free) makes the watch delete every file it may: the verified ones."""
    root = tmp_path / "quota"
    root.mkdir()
    for i in range(4):
        (root / f"run{i}.dat").write_bytes(os.urandom(10 * KiB))
    (root / "tmp.part").write_bytes(b"partial")  # excluded: never uploaded, never deleted
    (root / "link").symlink_to(root / "run0.dat")  # ignored: never deleted
    with stack.client() as client:
        watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                          free_space_below="99.99%")
        assert watch["after_upload"] == "keep" and watch["free_space_below"] == "99.99%"
        files = wait_states(client, watch["watch_id"], {f"run{i}.dat": "cleaned" for i in range(4)})
    assets = server_assets(stack)
    for i in range(4):
        assert not (root / f"run{i}.dat").exists()
        assert assets[f"run{i}.dat"]["latest_content"]["sha256"] == files[f"run{i}.dat"]["sha256"]
    assert (root / "tmp.part").exists() and (root / "link").is_symlink()
    assert files["link"]["state"] == "ignored" and files["link"]["error"]["code"] == "symlink"


def test_a_move_across_filesystems_survives_what_a_stop_half_way_leaves(stack: Stack, tmp_path: Path) -> None:
    """What a daemon stopped during a move to another filesystem leaves behind: a temporary partial copy
    (overwritten, never taken for the file), or a whole copy whose source was not removed yet (done now)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temporary directory")
    done = Path(tempfile.mkdtemp(prefix="dataerai-moved-", dir=shm))
    try:
        root = tmp_path / "acq"
        root.mkdir()
        (root / "half.bin").write_bytes(os.urandom(200 * KiB))
        (root / "whole.bin").write_bytes(os.urandom(100 * KiB))
        (done / ".half.bin.dataerai-partial").write_bytes(b"the first bytes of an interrupted copy")
        shutil.copyfile(root / "whole.bin", done / "whole.bin")
        expected = {name: sha256(root / name) for name in ("half.bin", "whole.bin")}
        with stack.client() as client:
            watch = add_watch(client, root, stack.project_id, complete_when="stable:1s",
                              after_upload=f"move:{done}")
            wait_states(client, watch["watch_id"], {"half.bin": "cleaned", "whole.bin": "cleaned"})
        assert {name: sha256(done / name) for name in expected} == expected
        assert sorted(p.name for p in done.iterdir()) == ["half.bin", "whole.bin"]
        assert not (root / "half.bin").exists() and not (root / "whole.bin").exists()
    finally:
        shutil.rmtree(done, ignore_errors=True)
