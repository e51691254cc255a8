"""Transfer windows with a real daemon: a job whose window is closed now is ``scheduled`` and
says when it starts, through the SDK and the CLI; a watch hands its window to its uploads.
(The window never opens here: opening and closing are tested on a fake clock, in
tests/daemon/test_windows_scheduling.py.)"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from dataerai import DaemonError
from stack import Stack, make_file, wait_for

from dataeraid import windows


def closed_window() -> tuple[str, str]:
    """A one-hour window opening three hours from now (local time, as the daemon reads it),
    and its opening as the job object says it."""
    zone = windows.local_zone()
    now = dt.datetime.now(zone)
    start = (now + dt.timedelta(hours=3)).replace(second=0, microsecond=0)
    end = start + dt.timedelta(hours=1)
    text = f"{start:%H:%M}-{end:%H:%M}"
    opens = windows.parse(text).next_open(now.timestamp(), zone)
    return text, dt.datetime.fromtimestamp(opens, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def instant(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def test_a_job_outside_its_window_is_scheduled_and_says_when_it_starts(stack: Stack, tmp_path: Path) -> None:
    window, opens = closed_window()
    data = make_file(tmp_path / "run42.h5", 1000)
    with stack.client() as client:
        job = client.upload(data, title="run42", owner_type="project", owner_id=stack.project_id,
                            window=window, wait=False)
        assert job.state == "scheduled" and job.window == window
        assert job.waiting is not None and job.waiting.code == "outside_window"
        assert job.waiting.raw["retry_at"] == opens
        # It stays so: the scheduler does not start it.
        assert client.get_job(job.job_id).state == "scheduled"
        with pytest.raises(DaemonError) as refused:
            client.upload(data, title="x", owner_type="project", owner_id=stack.project_id, window="25:00-06:00",
                          wait=False)
        assert refused.value.code == "invalid_argument"
        assert client.pause(job.job_id).state == "paused"
        assert client.resume(job.job_id).state == "scheduled"

    queued = json.loads(stack.cli("upload", str(data), "--project", stack.project_id, "--window", window,
                                  "--no-wait", "--json").stdout)
    assert queued["state"] == "scheduled"
    assert instant(queued["waiting"]["retry_at"]) == instant(opens)
    listed = stack.cli("jobs", "ls").stdout
    assert "scheduled" in listed

    folder = tmp_path / "instrument"
    folder.mkdir()
    make_file(folder / "a.bin", 500)
    with stack.client() as client:
        watch = client.add_watch(folder, project_id=stack.project_id, complete_when="stable:1s", window=window)
        assert watch.window == window
        wait_for(lambda: any(j.window == window and j.local_path == str(folder / "a.bin")
                             and j.state == "scheduled" for j in client.list_jobs()), 30,
                 "the watch's upload to be scheduled")
