"""While the CLI waits for a job that waits, it says so: why, when it tries again, and
when it goes on; in text, in JSON, on the bar; and a timeout says where the job stands."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dataerai import Job, ProgressEvent

from dataeraid.cli import cli
from dataeraid.cli._progress import JobWatch, ProgressBar, describe_wait

REFUSED = "cannot reach http://127.0.0.1:8080: connection refused"
NOT_LOGGED_IN = "not logged in: run `dataerai auth login --server URL`"


def soon(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def network_wait(retry_at: str) -> dict[str, Any]:
    return {"code": "unavailable", "reason": REFUSED, "retry_at": retry_at}


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli, list(args), prog_name="dataerai")


def script_a_wait(fake_daemon: Any, wire: Any, state: str, waiting: dict[str, Any]) -> None:
    """The upload runs, waits (``state``, ``waiting``), runs again and completes."""
    waits = wire.job(state=state, waiting=waiting, error={"code": waiting["code"], "message": waiting["reason"]})
    runs = wire.job(state="running")
    final = wire.job(state="completed", bytes_done=11, asset_id="ast_1", content_id="cnt_1")
    fake_daemon.on("upload.start", lambda _p: wire.job())
    fake_daemon.on("job.get", lambda _p: runs)
    events = [wire.progress_event(2, "job_1", 5, 11), wire.state_event(3, waits),
              {**wire.state_event(4, runs), "previous_state": state}, wire.state_event(5, final)]
    fake_daemon.on("events.subscribe", lambda _p: wire.reply({"last_event_id": 1}, events))


def test_upload_says_why_it_waits_for_the_network_then_that_it_goes_on(
        runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    script_a_wait(fake_daemon, wire, "waiting_for_network", network_wait(soon(8)))

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1")

    assert result.exit_code == 0, result.output
    assert result.stdout == "asset_id: ast_1\ncontent_id: cnt_1\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(rf"waiting for network: {re.escape(REFUSED)} \(retrying in [78] s\)", lines[0]), lines[0]
    assert lines[1] == "running again"


def test_upload_says_it_waits_for_a_login(runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    script_a_wait(fake_daemon, wire, "waiting_for_auth",
                  {"code": "auth_required", "reason": NOT_LOGGED_IN, "retry_at": None})

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1")

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"waiting for auth: {NOT_LOGGED_IN}", "running again"]


def test_upload_json_says_so_on_stderr_one_object_a_line(
        runner: CliRunner, fake_daemon: Any, wire: Any, data_file: Path) -> None:
    retry_at = soon(8)
    script_a_wait(fake_daemon, wire, "waiting_for_network", network_wait(retry_at))

    result = invoke(runner, "upload", str(data_file), "--project", "prj_1", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["asset_id"] == "ast_1"
    notices = [json.loads(line) for line in result.stderr.splitlines()]
    assert notices == [
        {"job_id": "job_1", "state": "waiting_for_network", "waiting": network_wait(retry_at)},
        {"job_id": "job_1", "state": "running", "waiting": None},
    ]


def test_a_timeout_says_where_the_job_stands_and_why(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    waits = wire.job("job_9", state="waiting_for_network", waiting=network_wait(soon(30)),
                     error={"code": "unavailable", "message": REFUSED})
    fake_daemon.on("job.get", lambda _p: waits)
    fake_daemon.on("events.subscribe", lambda _p: {"last_event_id": 0})  # and then nothing happens

    human = invoke(runner, "jobs", "wait", "job_9", "--timeout", "0.2")
    as_json = invoke(runner, "jobs", "wait", "job_9", "--timeout", "0.2", "--json")

    assert human.exit_code == 4
    notice, error = human.stderr.splitlines()
    assert notice.startswith(f"waiting for network: {REFUSED} (retrying in ")
    assert re.fullmatch(
        rf"error\[timeout\]: job job_9 did not finish in time: it is waiting for network: {re.escape(REFUSED)}"
        r" \(retrying in \d+ s\); it goes on in the daemon: `dataerai jobs wait job_9`", error), error
    assert as_json.exit_code == 4
    body = json.loads(as_json.stderr.splitlines()[-1])["error"]
    assert (body["code"], body["job_id"], body["state"]) == ("timeout", "job_9", "waiting_for_network")
    assert body["waiting"]["reason"] == REFUSED and "waiting for network" in body["message"]


def test_a_timeout_names_a_running_jobs_state(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("job.get", lambda _p: wire.job("job_9", state="running"))
    fake_daemon.on("events.subscribe", lambda _p: {"last_event_id": 0})

    human = invoke(runner, "jobs", "wait", "job_9", "--timeout", "0.2")

    assert human.exit_code == 4
    assert human.stderr.startswith("error[timeout]: job job_9 did not finish in time: it is running; it goes on")


def test_jobs_show_says_why_a_job_waits(runner: CliRunner, fake_daemon: Any, wire: Any) -> None:
    fake_daemon.on("job.get", lambda _p: wire.job("job_9", state="waiting_for_network",
                                                  waiting=network_wait(soon(30)),
                                                  error={"code": "unavailable", "message": REFUSED}))

    result = invoke(runner, "jobs", "show", "job_9")

    assert result.exit_code == 0, result.output
    assert any(re.fullmatch(rf"waiting: {re.escape(REFUSED)} \(retrying in \d+ s\)", line)
               for line in result.stdout.splitlines()), result.stdout


def test_describe_wait_counts_down_to_the_retry() -> None:
    at = datetime(2026, 11, 25, 14, 0, 0, tzinfo=timezone.utc)
    job = Job.from_wire({"job_id": "j", "state": "waiting_for_network",
                         "waiting": network_wait("2026-11-25T14:00:08Z")})
    assert describe_wait(job, at) == f"waiting for network: {REFUSED} (retrying in 8 s)"
    assert describe_wait(job, at + timedelta(seconds=7.7)) == f"waiting for network: {REFUSED} (retrying now)"
    assert describe_wait(Job.from_wire({"job_id": "j", "state": "running"})) == "running"
    expired = Job.from_wire({"job_id": "j", "state": "waiting_for_auth",
                             "waiting": {"code": "auth_expired", "reason": "the token expired"}})
    assert describe_wait(expired) == "waiting for auth: the token expired (it goes on after `dataerai auth login`)"


def event(done: int, total: int = 8 << 20) -> ProgressEvent:
    return ProgressEvent(transfer_id="job_1", bytes_done=done, bytes_total=total, chunk_index=0, chunk_count=1,
                         rate_bps=1e6, file_index=0, file_name="run42.h5")


def test_the_bar_shows_no_rate_while_the_job_waits_and_a_line_above_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    waits = Job.from_wire({"job_id": "job_1", "state": "waiting_for_network", "waiting": network_wait(soon(8))})
    runs = Job.from_wire({"job_id": "job_1", "state": "running"})
    watch = JobWatch(as_json=False)
    watch.bar = ProgressBar(enabled=True)  # as on a terminal
    with watch:
        watch.on_progress(event(1 << 20))
        watch.on_progress(event(2 << 20))
        capsys.readouterr()
        watch.on_state(waits)
        while_waiting = capsys.readouterr().err
        watch.on_state(runs)
        watch.on_progress(event(4 << 20))
        after = capsys.readouterr().err

    drawn = [part for part in re.split(r"[\r\n]", while_waiting) if "run42.h5" in part]
    assert drawn and "waiting]" in drawn[-1] and "B/s" not in drawn[-1] and "2.00M/8.00M" in drawn[-1]
    assert f"waiting for network: {REFUSED} (retrying in" in while_waiting
    assert "running again" in after
    last = [part for part in re.split(r"[\r\n]", after) if "run42.h5" in part][-1]
    assert "B/s" in last and "waiting" not in last
