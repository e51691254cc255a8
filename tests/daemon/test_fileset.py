"""The stream over a content's files: mapping, reading, writing, hashing, and hostile paths."""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataeraid.engine.download import content_files
from dataeraid.errors import DataeraiError
from dataeraid.fileset import (
    DROP_CACHE_MIN_BYTES,
    BufferPool,
    FileSet,
    StreamHasher,
    check_manifest,
    lay_out,
    safe_relative_path,
    scan_source,
)

sizes = st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=12)


@given(sizes=sizes, data=st.data())
def test_segments_cover_any_range_exactly_and_in_order(sizes: list[int], data: st.DataObject) -> None:
    files = lay_out([(f"d/f{i}", n) for i, n in enumerate(sizes)])
    fileset = FileSet("/nonexistent", files, "source")
    total = sum(sizes)
    offset = data.draw(st.integers(min_value=0, max_value=total))
    length = data.draw(st.integers(min_value=0, max_value=total - offset))
    at = offset
    for index, inner, step in fileset.segments(offset, length):
        f = files[index]
        assert step > 0 and f.offset + inner == at and inner + step <= f.size
        at += step
    assert at == offset + length


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=sizes, data=st.data())
def test_bytes_written_at_stream_offsets_read_back_and_hash_per_file(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("stream")
    files = lay_out([(f"top/sub{i % 3}/f{i}.bin", n) for i, n in enumerate(sizes)])
    stream = bytes(data.draw(st.binary(min_size=sum(sizes), max_size=sum(sizes))))
    writer = FileSet(str(root), files, "part", max_open=2)  # a tiny cache, so descriptors get evicted
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    bounds = [0, *cuts, len(stream)]
    for start, end in itertools.pairwise(bounds):
        writer.write(start, [stream[start:end]])
    writer.create_missing()
    assert writer.parts_ready()
    assert writer.read(0, len(stream)) == stream
    hasher = StreamHasher(files)
    hasher.feed_into(writer, 0, len(stream), BufferPool(7))
    writer.close()
    assert hasher.whole.hexdigest() == hashlib.sha256(stream).hexdigest()
    expected = [hashlib.sha256(stream[f.offset:f.offset + f.size]).hexdigest() for f in files]
    assert hasher.file_sha256 == expected
    for f in files:
        assert (root / (f.path + ".part")).read_bytes() == stream[f.offset:f.offset + f.size]


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\\b", "a\0b",
                                  "x" * 300, None, 7])
def test_hostile_paths_are_refused(path: Any) -> None:
    with pytest.raises(DataeraiError) as info:
        safe_relative_path(path)
    assert info.value.code == "unsafe_path"


@pytest.mark.parametrize("manifest,total", [
    ([("a", 1), ("a", 1)], 2),                 # the same path twice
    ([("a", 1), ("a/b", 1)], 2),               # a file that is also a directory
    ([("a", 1), ("b", 1)], 3),                 # does not cover the content
])
def test_manifests_that_are_not_a_tree_covering_the_content_are_refused(manifest: list[Any], total: int) -> None:
    with pytest.raises(DataeraiError) as info:
        check_manifest(lay_out(manifest), total)
    assert info.value.code == "unsafe_path"


def test_a_server_manifest_with_gaps_or_escapes_is_refused() -> None:
    good = {"size": 3, "files": [{"path": "d/a", "offset": 0, "size": 1}, {"path": "d/b", "offset": 1, "size": 2}]}
    assert [f.path for f in content_files(good, "ast_1")] == ["d/a", "d/b"]
    for files in ([{"path": "d/a", "offset": 0, "size": 1}, {"path": "d/b", "offset": 2, "size": 1}],
                  [{"path": "../a", "offset": 0, "size": 3}],
                  [{"path": "d/a", "offset": "0", "size": 3}],
                  "d/a"):
        with pytest.raises(DataeraiError) as info:
            content_files({"size": 3, "files": files}, "ast_1")
        assert info.value.code == "unsafe_path"


def test_a_symlink_in_the_tree_is_never_written_through(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "d").symlink_to(outside)
    fileset = FileSet(str(dest), lay_out([("d/evil", 3)]), "part")
    with pytest.raises(DataeraiError) as info:
        fileset.write(0, [b"abc"])
    fileset.close()
    assert info.value.code == "unsafe_path"
    assert list(outside.iterdir()) == []


def test_a_symlinked_part_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "f.part").symlink_to(target)
    fileset = FileSet(str(tmp_path), lay_out([("f", 3)]), "part")
    with pytest.raises(DataeraiError) as info:
        fileset.write(0, [b"abc"])
    fileset.close()
    assert info.value.code == "unsafe_path"
    assert target.read_bytes() == b"keep"


def test_dropping_a_range_from_the_page_cache_opens_no_small_file_again(tmp_path: Path) -> None:
    # Their descriptors are closed by then (at most max_open stay open): opening 10,000
    # small files again to free a page each cost a fifth of a small-file download.
    big = DROP_CACHE_MIN_BYTES
    fileset = FileSet(str(tmp_path), lay_out([*((f"d/s{i}", 100) for i in range(8)), ("d/big", big)]), "part",
                      max_open=2)
    fileset.write(0, [b"x" * (800 + big)])
    opened: list[int] = []
    real_open = fileset._open_file

    def counted(index: int) -> int:
        opened.append(index)
        return real_open(index)

    fileset._open_file = counted  # type: ignore[method-assign]
    fileset.drop_cache(0, 800 + big)
    fileset.close()
    assert opened in ([], [8])  # the large file's piece only, if its descriptor was closed


def test_a_file_read_in_small_ranges_is_still_dropped_range_by_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fileset = FileSet(str(tmp_path), lay_out([("big", 4096)]), "part", max_open=1)
    fileset.write(0, [b"x" * 4096])
    dropped: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda _fd, offset, length, _advice: dropped.append((offset, length)))
    fileset.drop_cache(1024, 1024)
    fileset.close()
    assert dropped == [(1024, 1024)]


def test_a_directory_source_is_its_regular_files_in_path_order(tmp_path: Path) -> None:
    top = tmp_path / "run42"
    (top / "b").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"1")
    (top / "b" / "c.txt").write_bytes(b"22")
    (top / "b" / "empty").write_bytes(b"")
    (top / "z").symlink_to(top / "a.txt")
    os.mkfifo(top / "fifo")
    root, files, skipped = scan_source(str(top))
    assert root == str(tmp_path)
    assert [(f.path, f.offset, f.size) for f in files] == [
        ("run42/a.txt", 0, 1), ("run42/b/c.txt", 1, 2), ("run42/b/empty", 3, 0)]
    assert sorted(skipped) == ["run42/fifo", "run42/z"]
    single_root, single, _ = scan_source(str(top / "a.txt"))
    assert (single_root, [f.path for f in single]) == (str(top), ["a.txt"])


def test_a_changed_source_file_is_source_changed(tmp_path: Path) -> None:
    top = tmp_path / "d"
    top.mkdir()
    (top / "a").write_bytes(b"abc")
    root, files, _ = scan_source(str(top))
    (top / "a").write_bytes(b"abcd")
    source = FileSet(root, files, "source")
    with pytest.raises(DataeraiError) as info:
        source.check_sources()
    assert info.value.code == "source_changed"
    with pytest.raises(DataeraiError) as info:
        source.read(0, 3)
    source.close()
    assert info.value.code == "source_changed"


@pytest.mark.parametrize("name", ["a\x01b", "a\\b", "é\udcff", "/".join(["x" * 250] * 5)])
def test_a_name_the_repository_would_refuse_is_refused_by_the_scan(tmp_path: Path, name: str) -> None:
    top = tmp_path / "d"
    (top / "ok").mkdir(parents=True)
    (top / "ok" / "fine.txt").write_bytes(b"1")
    try:
        (top / "ok" / name).parent.mkdir(parents=True, exist_ok=True)
        (top / "ok" / name).write_bytes(b"2")
    except OSError:
        pytest.skip("this filesystem does not take the name")
    with pytest.raises(DataeraiError) as info:
        scan_source(str(top))
    assert info.value.code == "invalid_argument"


def test_a_top_directory_the_repository_would_refuse_is_refused_by_the_scan(tmp_path: Path) -> None:
    top = tmp_path / "bad\x02dir"
    top.mkdir()
    (top / "plain.txt").write_bytes(b"1")
    with pytest.raises(DataeraiError) as info:
        scan_source(str(top))
    assert info.value.code == "invalid_argument"
