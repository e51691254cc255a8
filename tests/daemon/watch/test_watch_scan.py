"""The watch folder's walk: order, batches, what is skipped and why, resuming, dataset directories."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dataerai.contract import MAX_PATH_LENGTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataeraid.watch import scan
from dataeraid.watch.excludes import Excludes
from dataeraid.watch.scan import Entry, Item, Skipped, dataset_dirs, order_key, printable, walk

NOTHING = Excludes([])


def items(root: Path, excludes: Excludes = NOTHING, **kwargs: Any) -> list[Item]:
    return [item for batch in walk(str(root), excludes, **kwargs) for item in batch]


def rels(found: list[Item]) -> list[str]:
    return [item.rel for item in found]


def skipped(found: list[Item]) -> dict[str, tuple[str, str]]:
    return {item.rel: (item.reason, item.detail) for item in found if isinstance(item, Skipped)}


def make_files(root: Path, paths: list[str]) -> None:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


# --- order and batches --------------------------------------------------------------------------

# Names chosen so that plain string order of whole paths and segment order differ
# ("a.b" < "a/x" as strings, but "a" and all below it come first).
tree_names = st.sampled_from(["a", "a.b", "a-b", "ab", "b", "B", "é", "a b"])


@st.composite
def trees(draw: st.DrawFn) -> list[str]:
    """Paths of files that can exist together: none is a directory of another."""
    wanted = draw(st.lists(st.lists(tree_names, min_size=1, max_size=3).map("/".join), max_size=12))
    files: list[str] = []
    for rel in wanted:
        clash = any(f == rel or f.startswith(rel + "/") or rel.startswith(f + "/") for f in files)
        if not clash:
            files.append(rel)
    return files


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=trees(), data=st.data())
def test_the_walk_meets_files_in_segment_order_and_resumes_after_any_path(
    tmp_path_factory: pytest.TempPathFactory, files: list[str], data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("tree")
    make_files(root, files)
    found = items(root)
    assert all(isinstance(item, Entry) for item in found)
    assert rels(found) == sorted(files, key=order_key)
    # Resuming after a path yields exactly what came after it, whether or not it exists
    # (a file, a directory on the way to files, or a name that is gone).
    starts = [*files, *(f.rpartition("/")[0] for f in files if "/" in f),
              data.draw(st.lists(tree_names, min_size=1, max_size=4).map("/".join))]
    for start in starts:
        assert rels(items(root, start_at=start)) == [r for r in rels(found) if order_key(r) > order_key(start)]


def test_entries_carry_the_identity_an_upload_records(tmp_path: Path) -> None:
    make_files(tmp_path, ["run1/data.bin"])
    (entry,) = items(tmp_path)
    st_ = os.stat(tmp_path / "run1/data.bin")
    assert entry == Entry("run1/data.bin", st_.st_size, st_.st_mtime_ns, st_.st_ino, st_.st_dev)


def test_directories_and_files_interleave_by_name(tmp_path: Path) -> None:
    make_files(tmp_path, ["b", "a/z", "a.b", "c/d/e", "c/a", "0"])
    assert rels(items(tmp_path)) == ["0", "a/z", "a.b", "b", "c/a", "c/d/e"]


def test_batches_hold_at_most_batch_size_and_are_full_but_the_last(tmp_path: Path) -> None:
    make_files(tmp_path, [f"d{i // 7}/f{i:02}" for i in range(23)])
    batches = list(walk(str(tmp_path), NOTHING, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert [item for b in batches for item in b] == items(tmp_path, batch_size=1000)
    assert list(walk(str(tmp_path / "d0"), Excludes(["*"]), batch_size=5)) == [
        [Skipped(f"f{i:02}", "excluded") for i in range(5)], [Skipped("f05", "excluded"), Skipped("f06", "excluded")]]
    (tmp_path / "empty").mkdir()
    assert list(walk(str(tmp_path / "empty"), NOTHING)) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(walk(str(tmp_path), NOTHING, batch_size=0))


def test_a_root_that_is_not_a_directory_raises(tmp_path: Path) -> None:
    make_files(tmp_path, ["file"])
    with pytest.raises(FileNotFoundError):
        next(walk(str(tmp_path / "missing"), NOTHING))
    with pytest.raises(NotADirectoryError):
        next(walk(str(tmp_path / "file"), NOTHING))


# --- what is skipped ----------------------------------------------------------------------------


def test_symlinks_are_reported_and_never_followed(tmp_path: Path) -> None:
    make_files(tmp_path, ["real/data.bin"])
    (tmp_path / "to_file").symlink_to(tmp_path / "real/data.bin")
    (tmp_path / "to_dir").symlink_to(tmp_path / "real")
    (tmp_path / "outside").symlink_to("/")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    found = items(tmp_path)
    assert rels(found) == ["dangling", "loop", "outside", "real/data.bin", "to_dir", "to_file"]
    assert skipped(found) == {name: ("symlink", "") for name in ["dangling", "loop", "outside", "to_dir", "to_file"]}


def test_fifos_sockets_and_devices_are_special(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "fifo")
    monkeypatch.chdir(tmp_path)  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        expected = {"fifo": ("special", "a FIFO"), "sock": ("special", "a socket")}
        try:
            os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expected["null"] = ("special", "a character device")
        except PermissionError:
            pass  # only root makes devices; the FIFO and the socket still count
        make_files(tmp_path, ["plain"])
        found = items(tmp_path)
    assert skipped(found) == expected
    assert [item.rel for item in found if isinstance(item, Entry)] == ["plain"]


def test_an_excluded_directory_is_one_item_and_is_not_entered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_files(tmp_path, ["keep/a.dat", "keep/a.tmp", "cache/1", "cache/2", "cache/deep/3", "x/cache/4"])
    examined: list[str] = []
    real_lstat = scan._lstat

    def spying_lstat(path: str) -> os.stat_result:
        examined.append(os.path.relpath(path, tmp_path))
        return real_lstat(path)

    monkeypatch.setattr(scan, "_lstat", spying_lstat)
    found = items(tmp_path, Excludes(["cache/", "*.tmp"]))
    assert found == [Skipped("cache", "excluded"), Entry("keep/a.dat", *_identity(tmp_path / "keep/a.dat")),
                     Skipped("keep/a.tmp", "excluded"), Skipped("x/cache", "excluded")]
    assert not [p for p in examined if p.startswith("cache/") or p.startswith("x/cache/")]


def _identity(path: Path) -> tuple[int, int, int, int]:
    st_ = os.lstat(path)
    return st_.st_size, st_.st_mtime_ns, st_.st_ino, st_.st_dev


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a directory whatever its mode")
def test_an_unreadable_directory_is_reported_with_its_os_error(tmp_path: Path) -> None:
    make_files(tmp_path, ["locked/secret", "open/file"])
    (tmp_path / "locked").chmod(0)
    try:
        found = items(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert rels(found) == ["locked", "open/file"]
    reason, detail = skipped(found)["locked"]
    assert reason == "unreadable" and "Permission denied" in detail


def test_a_directory_that_cannot_be_listed_is_unreadable_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same as the chmod test, for a run as root: listing the directory fails.
    make_files(tmp_path, ["locked/secret", "open/file"])
    real_list = scan._list

    def refusing_list(path: str) -> list[str]:
        if path.endswith("/locked"):
            raise PermissionError(13, "Permission denied", path)
        return real_list(path)

    monkeypatch.setattr(scan, "_list", refusing_list)
    found = items(tmp_path)
    assert rels(found) == ["locked", "open/file"]
    assert skipped(found) == {"locked": ("unreadable", "Permission denied (errno 13)")}


def test_a_file_that_vanished_after_the_listing_is_dropped_and_one_that_cannot_be_examined_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_files(tmp_path, ["a/gone", "a/kept", "b/io", "c"])
    real_lstat = scan._lstat

    def racing_lstat(path: str) -> os.stat_result:
        if path.endswith("/gone"):
            os.unlink(path)  # deleted between the listing and the lstat
        if path.endswith("/io"):
            raise OSError(5, "Input/output error", path)
        return real_lstat(path)

    monkeypatch.setattr(scan, "_lstat", racing_lstat)
    found = items(tmp_path)
    assert rels(found) == ["a/kept", "b/io", "c"]
    assert skipped(found) == {"b/io": ("unreadable", "Input/output error (errno 5)")}


def test_a_directory_on_another_filesystem_is_special_and_not_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No test can mount; a mount point differs from its parent in st_dev, so that is faked.
    make_files(tmp_path, ["local/a", "share/b", "share/deep/c"])
    real_lstat = scan._lstat
    examined: list[str] = []

    def mounted_lstat(path: str) -> Any:
        examined.append(path)
        st_ = real_lstat(path)
        if path.endswith("/share"):
            return SimpleNamespace(st_mode=st_.st_mode, st_size=st_.st_size, st_mtime_ns=st_.st_mtime_ns,
                                   st_ino=st_.st_ino, st_dev=st_.st_dev + 1)
        return st_

    monkeypatch.setattr(scan, "_lstat", mounted_lstat)
    found = items(tmp_path)
    assert rels(found) == ["local/a", "share"]
    assert skipped(found) == {"share": ("special", "another filesystem")}
    assert not [p for p in examined if "/share/" in p]


def test_names_the_repository_cannot_store_are_bad_names_and_such_directories_are_not_entered(
    tmp_path: Path,
) -> None:
    raw = os.fsencode(tmp_path)
    os.close(os.open(raw + b"/latin1-\xe9.dat", os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(raw + b"/dir-\xff")
    os.close(os.open(raw + b"/dir-\xff/inside", os.O_CREAT | os.O_WRONLY, 0o644))
    make_files(tmp_path, ["bell\x07.dat", "back\\slash.dat", "good.dat"])
    # A path longer than the repository takes, though the disk holds it.
    too_long = "/".join(["d" * 200] * 5) + "/" + "t" * 30 + ".dat"
    make_files(tmp_path, [too_long, f"{'d' * 200}/short.dat"])
    found = items(tmp_path)
    bad = {rel: detail for rel, (reason, detail) in skipped(found).items() if reason == "bad_name"}
    assert set(bad) == {"back\\slash.dat", "bell\x07.dat", "dir-\udcff", "latin1-\udce9.dat", too_long}
    assert "valid UTF-8" in bad["dir-\udcff"] and "valid UTF-8" in bad["latin1-\udce9.dat"]
    assert "U+0007" in bad["bell\x07.dat"]
    assert "backslash" in bad["back\\slash.dat"]
    assert f"at most {MAX_PATH_LENGTH} characters" in bad[too_long]
    assert [item.rel for item in found if isinstance(item, Entry)] == [f"{'d' * 200}/short.dat", "good.dat"]
    # The surrogate-escaped rel still reaches the file, and prints without surrogates.
    assert os.path.isdir(os.path.join(tmp_path, "dir-\udcff"))
    assert printable("dir-\udcff/bell\x07") == "dir-\\xff/bell\\x07"


def test_an_excluded_name_is_excluded_before_it_is_a_bad_name(tmp_path: Path) -> None:
    make_files(tmp_path, ["bell\x07.tmp"])
    assert items(tmp_path, Excludes(["*.tmp"])) == [Skipped("bell\x07.tmp", "excluded")]


# --- dataset directories ------------------------------------------------------------------------


def test_dataset_dirs_are_the_directories_that_directly_hold_the_sentinel(tmp_path: Path) -> None:
    make_files(tmp_path, [
        "DONE",  # the root itself is a dataset: ""
        "S1/run1/DONE", "S1/run1/tile.tif",
        "S1/run2/tile.tif",  # not finished
        "S1/run3/sub/DONE",  # its sub is, not run3
        "S2/DONE.txt",  # another name
        "skip/run/DONE",
    ])
    (tmp_path / "S3" / "DONE").mkdir(parents=True)  # a directory of that name is no sentinel
    (tmp_path / "S4").mkdir()
    (tmp_path / "S4" / "DONE").symlink_to(tmp_path / "DONE")  # nor is a symlink
    assert list(dataset_dirs(str(tmp_path), "DONE", Excludes(["skip/"]))) == ["", "S1/run1", "S1/run3/sub"]


@pytest.mark.parametrize("sentinel", ["", "a/b", ".", "..", "x\x00"])
def test_a_sentinel_must_be_a_file_name(tmp_path: Path, sentinel: str) -> None:
    with pytest.raises(ValueError, match="sentinel"):
        next(dataset_dirs(str(tmp_path), sentinel, NOTHING))


def test_order_key_is_segment_order() -> None:
    ordered = ["a", "a/b", "a/b/c", "a/c", "a.b", "a0", "b"]
    assert sorted(reversed(ordered), key=order_key) == ordered
    assert sorted(ordered) != ordered  # plain string order would put "a.b" before "a/b"




@given(rel=st.text())
def test_printable_never_holds_a_surrogate_or_a_control_character(rel: str) -> None:
    shown = printable(rel)
    shown.encode("utf-8")  # raises on a lone surrogate
    assert all(c.isprintable() for c in shown)
