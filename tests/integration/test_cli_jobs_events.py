"""`dataerai jobs ...` and `dataerai events` against a real daemon and server."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from stack import Stack, _bin, make_file, wait_for

MiB = 1024 * 1024


def run_json(stack: Stack, *args: str) -> Any:
    return json.loads(stack.cli(*args, "--json").stdout)


def _state(stack: Stack, job_id: str) -> str:
    with stack.client() as client:
        return str(client.get_job(job_id).state)


def test_jobs_commands_steer_a_job_to_its_end(stack: Stack, tmp_path: Path) -> None:
    source = make_file(tmp_path / "data.bin", 6 * MiB)
    # The job is paused while it runs, and cancelled before it ends: while the server is held,
    # it can only run, whatever the time the commands take on a busy machine.
    with stack.server_held():
        job = run_json(stack, "upload", str(source), "--project", stack.project_id, "--no-wait")
        job_id = job["job_id"]
        wait_for(lambda: _state(stack, job_id) == "running", 60, "the job to run")
        listed = run_json(stack, "jobs", "ls")
        assert [j["job_id"] for j in listed["jobs"]] == [job_id]
        assert run_json(stack, "jobs", "pause", job_id)["state"] == "paused"
        assert stack.cli("jobs", "ls", "--state", "paused").stdout.startswith(job_id)
        assert run_json(stack, "jobs", "priority", job_id, "5")["priority"] == 5
        assert stack.cli("jobs", "priority", job_id, "--", "-2").stdout.strip() == f"{job_id}: priority -2"
        assert run_json(stack, "jobs", "resume", job_id)["state"] == "queued"
        assert stack.cli("jobs", "cancel", job_id).stdout.strip() == f"{job_id}: cancelled"
        assert run_json(stack, "jobs", "retry", job_id)["state"] == "queued"
    waited = run_json(stack, "jobs", "wait", job_id, "--timeout", "60")
    shown = run_json(stack, "jobs", "show", job_id)
    assert waited["state"] == shown["state"] == "completed"
    assert shown["asset_id"] and shown["content_id"] and shown["asset_id"] == waited["asset_id"]

    again = stack.cli("jobs", "resume", job_id, check=False)
    assert again.returncode == 1 and again.stderr.startswith("error[conflict]: ")
    missing = stack.cli("jobs", "cancel", "job_" + "0" * 24, "--json", check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert json.loads(missing.stderr)["error"]["code"] == "not_found"

    lines = stack.cli("events", "--job", job_id, "--type", "job.state", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert {e["job_id"] for e in events} == {job_id} and {e["type"] for e in events} == {"job.state"}
    assert [e["state"] for e in events][:3] == ["queued", "running", "paused"]
    assert events[-1]["state"] == "completed"
    human = stack.cli("events", "--job", job_id, "--since", str(events[-2]["id"])).stdout.splitlines()
    assert len(human) == 1 and human[0].endswith("running -> completed")


def _interruptible() -> None:
    """Ctrl-C reaches the child as it reaches a command run in a terminal. A test run started in
    the background by a shell without job control (``make test &`` in a script) inherits SIGINT
    ignored, and Python then installs no handler for it: the follower would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_events_follow_streams_json_lines_until_interrupted(stack: Stack, tmp_path: Path) -> None:
    since = json.loads(stack.cli("daemon", "status", "--json").stdout)["last_event_id"]
    with stack.client() as client:
        done = client.upload(make_file(tmp_path / "f.bin", 1000), title="m", owner_type="project",
                             owner_id=stack.project_id)
    # --since makes the start deterministic: the events after it are replayed, then live ones follow.
    follower = subprocess.Popen(
        [_bin("dataerai"), "events", "--follow", "--json", "--type", "job.state", "--since", str(since)],
        env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    try:
        assert follower.stdout is not None
        seen: list[dict[str, Any]] = []
        while not any(e.get("state") == "completed" for e in seen):
            line = follower.stdout.readline()
            assert line, follower.stderr.read() if follower.stderr else "the follower ended"
            seen.append(json.loads(line))
        assert [e["state"] for e in seen] == ["queued", "running", "completed"]
        assert {e["job_id"] for e in seen} == {done.transfer_id}
        assert all(e["id"] > since for e in seen)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(15) == 130
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
