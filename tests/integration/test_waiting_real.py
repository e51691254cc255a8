"""A user uploads while the repository is down, or while logged out: the `dataerai` CLI
says at once that the job waits, why and when it tries again, and goes on once the
server is back or the user logged in. Real server, daemon and CLI processes."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from chaos_proxy import ChaosProxy
from dataerai import Job, ProgressEvent
from stack import Stack, _bin, make_file, wait_for

MiB = 1024 * 1024
#: Quick retries, so that the job goes on soon after the server is back.
FAST_RETRIES = {"retry_base_s": 0.1, "retry_cap_s": 1.0}
#: How long a line may take before the test gives up (it never waits this out when all is well).
PATIENCE_S = 90.0


class Cli:
    """A `dataerai` command running in the background; its stderr read line by line as it comes."""

    def __init__(self, stack: Stack, *args: str) -> None:
        self.process = subprocess.Popen([_bin("dataerai"), *args], env=stack.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line_matching(self, pattern: str) -> str:
        """The first line of stderr, from here on, that matches ``pattern``."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} on stderr; seen {self.seen}") from None
            if line is None:
                raise AssertionError(f"stderr ended without {pattern!r}; seen {self.seen}")
            self.seen.append(line)
            if re.fullmatch(pattern, line):
                return line

    def finish(self) -> tuple[int, str]:
        stdout, _ = self.process.communicate(timeout=PATIENCE_S)
        while (line := self.lines.get(timeout=PATIENCE_S)) is not None:
            self.seen.append(line)
        return self.process.returncode, stdout

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_an_upload_while_the_server_is_down_says_it_waits_for_the_network_then_completes(
        make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config=FAST_RETRIES)
    source = make_file(tmp_path / "run.bin", 2 * MiB + 3)
    stack.stop_server()
    cli = Cli(stack, "upload", str(source), "--project", stack.project_id)
    try:
        cli.line_matching(rf"waiting for network: cannot reach http://127\.0\.0\.1:{stack.port}: connection refused"
                          r" \(retrying (in \d+ s|now)\)")
        assert cli.process.poll() is None  # shown while the job waits, long before it completes
        with stack.client() as client:
            (job,) = client.list_jobs()
        assert job.state == "waiting_for_network" and job.waiting is not None
        stack.start_server()
        cli.line_matching("running again")
        code, stdout = cli.finish()
    finally:
        cli.kill()
    assert code == 0, cli.seen
    assert re.fullmatch(r"asset_id: ast_\S+\ncontent_id: cnt_\S+\n", stdout)


def test_an_upload_while_logged_out_says_it_waits_for_a_login_then_completes(
        make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config=FAST_RETRIES)
    source = make_file(tmp_path / "run.bin", MiB)
    token = stack.token
    stack.cli("auth", "logout")
    cli = Cli(stack, "upload", str(source), "--project", stack.project_id, "--json")
    try:
        notice = cli.line_matching(r'\{"job_id": "job_\w+", "state": "waiting_for_auth", .*')
        assert '"code": "auth_required"' in notice and "dataerai auth login" in notice, notice
        assert cli.process.poll() is None
        stack.login(token)
        cli.line_matching(r'\{"job_id": "job_\w+", "state": "running", "waiting": null\}')
        code, stdout = cli.finish()
    finally:
        cli.kill()
    assert code == 0, cli.seen
    assert '"asset_id": "ast_' in stdout


def test_a_timeout_while_the_server_is_down_says_why(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config=FAST_RETRIES)
    source = make_file(tmp_path / "run.bin", MiB)
    stack.stop_server()
    with stack.client() as client:
        job = client.upload(source, title="run", owner_type="project", owner_id=stack.project_id, wait=False)
    watching = Cli(stack, "jobs", "wait", job.job_id)
    try:
        watching.line_matching(r"waiting for network: .*")  # the job waits now
    finally:
        watching.kill()
    result = stack.cli("jobs", "wait", job.job_id, "--timeout", "0.5", check=False)
    assert result.returncode == 4
    assert re.search(rf"did not finish in time: it is waiting for network: cannot reach http://127\.0\.0\.1:"
                     rf"{stack.port}: connection refused \(retrying (in \d+ s|now)\); it goes on", result.stderr), \
        result.stderr


def test_the_last_progress_event_carries_the_average_rate(stack: Stack, tmp_path: Path) -> None:
    size = 8 * MiB
    source = make_file(tmp_path / "run.bin", size)
    seen: list[ProgressEvent] = []
    with stack.client() as client:
        started = time.monotonic()
        client.upload(source, title="run", owner_type="project", owner_id=stack.project_id, chunk_size_mb=1,
                      on_progress=seen.append)
        took = time.monotonic() - started
    last = seen[-1]
    assert last.completed and last.bytes_done == size
    # The run moved every byte in less time than the whole call took.
    assert last.rate_bps >= size / took
    daemons_last = [p for p in seen[:-1] if p.bytes_done == size]
    if daemons_last:
        assert last.rate_bps == daemons_last[-1].rate_bps


def test_an_outage_mid_transfer_stops_the_rate_and_tells_on_state(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(daemon_config={**FAST_RETRIES, "bandwidth_limit_bps": 8 * MiB}, start_daemon=False)
    assert stack.port is not None and stack.token is not None
    proxy = ChaosProxy(stack.port)
    try:
        stack.cli("auth", "login", "--server", f"http://127.0.0.1:{proxy.port}", "--token-stdin",
                  input=stack.token + "\n")
        stack.start_daemon()
        source = make_file(tmp_path / "run.bin", 24 * MiB)
        with stack.client() as client:
            project_id = client.create_project("Beamline 7").project_id
            job = client.upload(source, title="run", owner_type="project", owner_id=project_id, chunk_size_mb=1,
                                wait=False)
        states: list[Job] = []
        progress: list[ProgressEvent] = []
        outcome: list[Any] = []

        def follow() -> None:
            with stack.client() as follower:
                outcome.append(follower.wait(job.job_id, timeout_s=PATIENCE_S, on_progress=progress.append,
                                             on_state=states.append))

        follower = threading.Thread(target=follow)
        follower.start()
        with stack.client() as client:
            wait_for(lambda: client.get_job(job.job_id).bytes_done >= 4 * MiB, PATIENCE_S, "4 MiB sent")
            proxy.outage(3600)  # until the job says it waits, however long that takes
            wait_for(lambda: any(p.state == "waiting_for_network" for p in progress), PATIENCE_S,
                     "a progress event of the waiting job")
            proxy.outage(0)
        follower.join(PATIENCE_S)
    finally:
        proxy.close()
    (done,) = outcome
    assert done.state == "completed"
    told = [s.state for s in states]
    assert "waiting_for_network" in told and told[-1] == "completed"
    assert told[told.index("waiting_for_network"):].count("running") >= 1
    waiting = next(s.waiting for s in states if s.state == "waiting_for_network")
    assert waiting is not None and waiting.reason.startswith(f"cannot reach http://127.0.0.1:{proxy.port}: ")
    assert waiting.retry_at is not None
    assert all(p.rate_bps == 0.0 for p in progress if p.state == "waiting_for_network")
    assert progress[-1].completed and progress[-1].rate_bps > 0
