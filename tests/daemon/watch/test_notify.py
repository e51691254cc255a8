"""The tree notifier on real inotify and temporary directories: what each filesystem
change is reported as, which watches exist afterwards, and the failures it names.

inotify queues an event inside the system call that caused it, so once a change is
made here its events are already readable; the loops below wait on the change they
expect (with a generous safety net), never on time."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from inotify_simple import Event, INotify, flags

from dataeraid.watch.notify import (
    MAX_USER_WATCHES,
    Change,
    NotifyUnavailable,
    TreeNotifier,
    WatchLimitReached,
)

SAFETY_NET_SECONDS = 60


def closed(rel: str) -> Change:
    return Change(rel, "closed", False)


def write(path: Path | bytes, data: bytes = b"data") -> None:
    with open(path, "wb") as file:
        file.write(data)


def is_file(path: str) -> bool:
    return os.path.isfile(path)


def sysctl(path: str) -> str:
    return Path(path).read_text().strip()


async def until(notifier: TreeNotifier, wanted: Change) -> list[Change]:
    """Every change up to and including the batch that holds ``wanted``."""
    seen: list[Change] = []
    with trio.fail_after(SAFETY_NET_SECONDS):
        while wanted not in seen:
            seen += await notifier.changes()
    return seen


async def changes_before_sentinel(notifier: TreeNotifier, root: Path) -> list[Change]:
    """Everything reported for what was done before now: a file written last is reported
    after all of it, so anything not seen by then was not reported."""
    write(root / "sentinel")
    seen = await until(notifier, closed("sentinel"))
    return [change for change in seen if change.rel != "sentinel"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "watched"
    path.mkdir()
    return path


@pytest.fixture
async def notifier(root: Path) -> AsyncIterator[TreeNotifier]:
    notifier = TreeNotifier(str(root))
    await notifier.start()
    yield notifier
    notifier.close()


async def started(root: Path, skip_dir: Callable[[str], bool] | None = None) -> TreeNotifier:
    notifier = TreeNotifier(str(root)) if skip_dir is None else TreeNotifier(str(root), skip_dir=skip_dir)
    await notifier.start()
    return notifier


async def test_a_file_written_and_closed_is_reported_in_order(notifier: TreeNotifier, root: Path) -> None:
    write(root / "run42.h5")
    seen = await until(notifier, closed("run42.h5"))
    assert seen == [
        Change("run42.h5", "created", False), Change("run42.h5", "modified", False), closed("run42.h5"),
    ]


async def test_a_file_renamed_into_the_tree_is_moved_in_and_one_renamed_out_is_moved_out(
        tmp_path: Path, root: Path) -> None:
    (root / "sub").mkdir()
    notifier = await started(root)
    write(tmp_path / "outside.part")
    os.rename(tmp_path / "outside.part", root / "sub" / "scan.tif")
    assert Change("sub/scan.tif", "moved_in", False) in await until(notifier, Change("sub/scan.tif", "moved_in", False))
    os.rename(root / "sub" / "scan.tif", tmp_path / "back.tif")
    assert await changes_before_sentinel(notifier, root) == [Change("sub/scan.tif", "moved_out", False)]
    notifier.close()


async def test_only_exact_duplicates_are_coalesced_and_the_last_of_each_is_kept(
        notifier: TreeNotifier, root: Path) -> None:
    write(root / "a", b"")
    os.unlink(root / "a")
    write(root / "a", b"")
    write(root / "b", b"")
    # All of it is queued already, so it comes as one batch.
    assert await notifier.changes() == [
        Change("a", "deleted", False), Change("a", "created", False), closed("a"),
        Change("b", "created", False), closed("b"),
    ]


async def test_a_new_directory_is_watched_before_it_is_reported(notifier: TreeNotifier, root: Path) -> None:
    assert notifier.watched_directories == 1
    (root / "new").mkdir()
    assert await notifier.changes() == [Change("new", "dir_created", True)]
    assert notifier.watched_directories == 2
    write(root / "new" / "frame-0001.raw")
    assert closed("new/frame-0001.raw") in await until(notifier, closed("new/frame-0001.raw"))


async def test_a_deep_tree_made_at_once_is_watched_whole(notifier: TreeNotifier, root: Path) -> None:
    deep = root / "a" / "b" / "c" / "d" / "e" / "f"
    deep.mkdir(parents=True)  # faster than its watches: only "a" is announced, the walk finds the rest
    seen = await until(notifier, Change("a", "dir_created", True))
    assert notifier.watched_directories == 7
    write(deep / "result.csv")
    seen += await until(notifier, closed("a/b/c/d/e/f/result.csv"))
    assert next(c for c in seen if c.kind == "dir_created") == Change("a", "dir_created", True)


async def test_an_existing_deep_tree_is_watched_at_start(root: Path) -> None:
    for name in ("x/y/z", "x/w", "v"):
        (root / name).mkdir(parents=True)
    notifier = await started(root)
    assert notifier.watched_directories == 6
    write(root / "x" / "y" / "z" / "deep.bin")
    assert closed("x/y/z/deep.bin") in await until(notifier, closed("x/y/z/deep.bin"))
    notifier.close()


async def test_a_removed_subdirectory_is_gone_and_its_watches_forgotten(root: Path) -> None:
    (root / "keep").mkdir()
    (root / "old" / "inner" / "innermost").mkdir(parents=True)
    write(root / "old" / "inner" / "file")
    notifier = await started(root)
    assert notifier.watched_directories == 5
    shutil.rmtree(root / "old")
    seen = await changes_before_sentinel(notifier, root)
    gone = [c.rel for c in seen if c.kind == "dir_gone"]
    # Each directory once, bottom-up as rmtree removed them.
    assert gone == ["old/inner/innermost", "old/inner", "old"]
    assert Change("old/inner/file", "deleted", False) in seen
    assert notifier.watched_directories == 2
    notifier.close()


async def test_a_subtree_moved_out_is_gone_and_nothing_in_it_is_reported_any_more(
        tmp_path: Path, root: Path) -> None:
    (root / "batch" / "part").mkdir(parents=True)
    notifier = await started(root)
    assert notifier.watched_directories == 3
    os.rename(root / "batch", tmp_path / "elsewhere")
    assert await changes_before_sentinel(notifier, root) == [Change("batch", "dir_gone", True)]
    assert notifier.watched_directories == 1
    write(tmp_path / "elsewhere" / "part" / "late.bin")  # still the same inodes, but out of the tree
    assert await changes_before_sentinel(notifier, root) == []
    notifier.close()


async def test_a_subtree_moved_within_the_tree_is_reported_at_its_new_place(root: Path) -> None:
    (root / "incoming" / "run7").mkdir(parents=True)
    (root / "done").mkdir()
    notifier = await started(root)
    os.rename(root / "incoming" / "run7", root / "done" / "run7")
    seen = await until(notifier, Change("done/run7", "dir_moved_in", True))
    assert [c for c in seen if c.is_dir] == [
        Change("incoming/run7", "dir_gone", True), Change("done/run7", "dir_moved_in", True),
    ]
    assert notifier.watched_directories == 4
    write(root / "done" / "run7" / "a.dat")
    assert await changes_before_sentinel(notifier, root) == [
        Change("done/run7/a.dat", "created", False), Change("done/run7/a.dat", "modified", False),
        closed("done/run7/a.dat"),
    ]
    notifier.close()


@pytest.mark.parametrize("how", ["renamed", "deleted"])
async def test_the_root_going_away_is_root_gone_and_drops_every_watch(
        tmp_path: Path, root: Path, how: str) -> None:
    (root / "sub").mkdir()
    notifier = await started(root)
    if how == "renamed":
        os.rename(root, tmp_path / "renamed")
    else:
        shutil.rmtree(root)
    seen = await until(notifier, Change("", "root_gone", True))
    assert seen[-1] == Change("", "root_gone", True)
    assert notifier.watched_directories == 0
    notifier.close()


async def test_names_that_are_not_utf8_come_through_fsdecode_and_lead_back_to_the_file(root: Path) -> None:
    broot = os.fsencode(root)
    os.mkdir(broot + b"/old-\xe9")  # Latin-1 from an old instrument PC
    notifier = await started(root)
    assert notifier.watched_directories == 2
    os.mkdir(broot + b"/new-\xff")
    write(broot + b"/old-\xe9/r\xe9sultat.txt")
    seen = await until(notifier, closed(os.fsdecode(b"old-\xe9/r\xe9sultat.txt")))
    assert Change(os.fsdecode(b"new-\xff"), "dir_created", True) in seen
    write(broot + b"/new-\xff/\xfe.bin")
    rel = os.fsdecode(b"new-\xff/\xfe.bin")
    assert closed(rel) in await until(notifier, closed(rel))
    assert is_file(os.path.join(str(root), rel))
    notifier.close()


async def test_close_wakes_a_task_waiting_for_changes(notifier: TreeNotifier) -> None:
    woken: list[BaseException] = []

    async def wait() -> None:
        try:
            await notifier.changes()
        except trio.ClosedResourceError as error:
            woken.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        notifier.close()
    assert len(woken) == 1
    notifier.close()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await notifier.changes()
    assert notifier.watched_directories == 0


async def test_skipped_directories_are_neither_watched_nor_reported(root: Path) -> None:
    (root / "tmp").mkdir()
    (root / "data" / ".cache").mkdir(parents=True)
    notifier = await started(root, skip_dir=lambda rel: rel == "tmp" or rel.endswith("/.cache"))
    assert notifier.watched_directories == 2  # the root and data
    write(root / "tmp" / "scratch")
    write(root / "data" / ".cache" / "index")
    (root / "data" / "new" / ".cache").mkdir(parents=True)
    shutil.rmtree(root / "tmp")
    seen = await changes_before_sentinel(notifier, root)
    assert seen == [Change("data/new", "dir_created", True)]
    assert notifier.watched_directories == 3
    notifier.close()


async def test_a_symlink_to_a_directory_is_not_followed(tmp_path: Path, root: Path) -> None:
    (tmp_path / "target").mkdir()
    (root / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    notifier = await started(root)
    assert notifier.watched_directories == 1
    write(tmp_path / "target" / "file")
    assert await changes_before_sentinel(notifier, root) == []
    notifier.close()


async def test_a_cancel_while_a_new_directory_is_walked_still_returns_the_batch(root: Path) -> None:
    scope = trio.CancelScope()

    def skip_and_cancel(rel: str) -> bool:  # runs in the worker thread that walks "new/sub"
        if rel == "new/sub":
            trio.from_thread.run_sync(scope.cancel)
        return False

    (root / "new").mkdir()
    notifier = await started(root, skip_dir=skip_and_cancel)
    (root / "new" / "sub").mkdir()
    batch = None
    with scope:
        batch = await notifier.changes()
        await trio.lowlevel.checkpoint()  # where the cancellation lands
    assert scope.cancelled_caught
    assert batch == [Change("new/sub", "dir_created", True)]
    notifier.close()


async def test_a_cancel_after_the_kernel_was_read_keeps_the_events_for_the_next_call(
        notifier: TreeNotifier, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_sync = trio.to_thread.run_sync
    scope = trio.CancelScope()

    async def cancelled_first(*args: Any, **kwargs: Any) -> Any:
        scope.cancel()  # as if a deadline passed just as the walk was to start
        return await run_sync(*args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", cancelled_first)
    (root / "new").mkdir()
    with scope:
        await notifier.changes()
    assert scope.cancelled_caught
    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    assert await notifier.changes() == [Change("new", "dir_created", True)]


def refuse_watches_for(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_watch fails as it does when fs.inotify.max_user_watches is used up, for paths ending in ``name``."""
    add_watch = INotify.add_watch

    def limited(self: INotify, path: str, mask: int) -> int:
        if os.path.basename(path) == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return add_watch(self, path, mask)  # type: ignore[no-any-return]

    monkeypatch.setattr(INotify, "add_watch", limited)


def assert_names_the_limit(error: WatchLimitReached) -> None:
    current = sysctl(MAX_USER_WATCHES)
    assert f"fs.inotify.max_user_watches is {current}" in str(error)
    assert "sysctl fs.inotify.max_user_watches=" in str(error)


async def test_the_watch_limit_at_start_is_named_and_closes_the_notifier(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "a" / "over-the-limit").mkdir(parents=True)
    refuse_watches_for("over-the-limit", monkeypatch)
    notifier = TreeNotifier(str(root))
    with pytest.raises(WatchLimitReached) as raised:
        await notifier.start()
    assert_names_the_limit(raised.value)
    assert notifier.watched_directories == 0
    with pytest.raises(trio.ClosedResourceError):
        await notifier.changes()


async def test_the_watch_limit_for_a_new_directory_is_named_and_closes_the_notifier(
        notifier: TreeNotifier, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_watches_for("over-the-limit", monkeypatch)
    (root / "over-the-limit").mkdir()
    with pytest.raises(WatchLimitReached) as raised:
        await notifier.changes()
    assert_names_the_limit(raised.value)
    with pytest.raises(trio.ClosedResourceError):
        await notifier.changes()


async def test_too_many_inotify_instances_make_file_events_unavailable(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def emfile(self: INotify, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(INotify, "__init__", emfile)
    with pytest.raises(NotifyUnavailable, match=r"fs\.inotify\.max_user_instances is \d+"):
        await TreeNotifier(str(root)).start()


async def test_an_injected_overflow_is_reported_and_the_tree_watched_afresh(
        notifier: TreeNotifier, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read = INotify.read
    lost: list[object] = []

    def overflowing(self: INotify, timeout: int | None = None, read_delay: int | None = None) -> list[object]:
        monkeypatch.setattr(INotify, "read", read)
        lost.extend(read(self, timeout=timeout))  # what the full queue could not keep
        return [Event(wd=-1, mask=flags.Q_OVERFLOW, cookie=0, name="")]

    (root / "made-during-overflow").mkdir()
    monkeypatch.setattr(INotify, "read", overflowing)
    assert await notifier.changes() == [Change("", "overflow", True)]
    assert lost  # the directory's creation really was dropped
    assert notifier.watched_directories == 2
    write(root / "made-during-overflow" / "file")
    assert closed("made-during-overflow/file") in await until(notifier, closed("made-during-overflow/file"))


async def test_a_real_queue_overflow_is_reported_and_the_tree_watched_afresh(
        notifier: TreeNotifier, root: Path) -> None:
    limit = int(sysctl("/proc/sys/fs/inotify/max_queued_events"))
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to fill the queue quickly")
    for name in ("a", "b"):
        write(root / name)
    await until(notifier, closed("b"))
    for i in range(limit + 1):  # alternating, so the kernel cannot merge them into the last one
        os.utime(root / ("a" if i % 2 else "b"), (i, i))
    (root / "lost").mkdir()
    seen = await until(notifier, Change("", "overflow", True))
    assert Change("lost", "dir_created", True) not in seen
    assert notifier.watched_directories == 2
    write(root / "lost" / "found")
    assert closed("lost/found") in await until(notifier, closed("lost/found"))
