"""The progress bar: drawn from the SDK's ProgressEvents, only for a terminal and never with --json."""

from __future__ import annotations

import io

import pytest
from dataerai import ProgressEvent

from dataeraid.cli._progress import ProgressBar, wanted


def event(done: int, total: int, *, completed: bool = False) -> ProgressEvent:
    return ProgressEvent(
        transfer_id="job_1",
        bytes_done=done,
        bytes_total=total,
        chunk_index=0,
        chunk_count=1,
        rate_bps=1e6,
        file_index=0,
        file_name="run42.h5",
        completed=completed,
    )


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_counts_bytes_with_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressBar(enabled=True) as bar:
        assert bar.callback is not None
        for done in (0, 4 << 20, 2 << 20, 8 << 20):  # a step back, as after a retried part
            bar.callback(event(done, 8 << 20))
        bar.callback(event(8 << 20, 8 << 20, completed=True))

    drawn = capsys.readouterr().err
    assert "run42.h5" in drawn
    assert "100%" in drawn
    assert "8.00M/8.00M" in drawn
    assert "B/s" in drawn


def test_disabled_bar_asks_for_no_events(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressBar(enabled=False) as bar:
        assert bar.callback is None
    assert capsys.readouterr().err == ""


def test_wanted_only_on_a_terminal_without_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", Tty())
    assert wanted(as_json=False)
    assert not wanted(as_json=True)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not wanted(as_json=False)
