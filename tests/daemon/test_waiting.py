"""A job that waits says why and when it tries again, at once and without secrets; a
finished run's last progress event carries its average rate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.config import Settings
from dataeraid.engine.context import JobContext
from dataeraid.engine.retry import transient_reason
from dataeraid.errors import AuthProblem, TransientError
from dataeraid.events import EventBus, Subscription
from dataeraid.fileset import FileSet, StreamFile
from dataeraid.jobs import Jobs, to_wire
from dataeraid.redact import redact
from dataeraid.store import Store

SIGNED = "https://store.example.org:9000/bucket/key?X-Amz-Signature=f00dfeed&X-Amz-Credential=AKIAEXAMPLE"
TOKEN = "dtk_SeCrEtToKeNvAlUe0123456789abcdefghijklmnopq"


class StandInAuth:
    """The credentials a job sees: a token, and a version a login bumps."""

    def __init__(self) -> None:
        self.version = 0
        self.current = SimpleNamespace(token=TOKEN)
        self._changed = trio.Event()

    def login(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, since: int) -> None:
        while self.version == since:
            await self._changed.wait()


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    yield Jobs(bus)
    await store.close()


async def running_job(jobs: Jobs, auth: StandInAuth) -> JobContext:
    row: dict[str, Any] = {
        "job_id": "job_1", "kind": "upload", "priority": 0, "params": {}, "local_path": "/data/run42.h5",
        "file_name": "run42.h5", "chunk_size": 1 << 20, "chunk_count": 4, "bytes_total": 4 << 20, "client": "pid:1",
    }
    await jobs.create(row)
    await jobs.transition("job_1", "running")
    settings = Settings(retry_base_s=1.0, retry_cap_s=8.0, progress_interval_s=0.25)
    return JobContext(await jobs.row("job_1"), jobs, remote=None, auth=auth, settings=settings,  # type: ignore[arg-type]
                      bandwidth=SimpleNamespace())


def one_file(size: int) -> FileSet:
    return FileSet("/data", [StreamFile("run42.h5", 0, size)], "source")


def refused(url: str = SIGNED) -> TransientError:
    """What the remote raises when nobody listens at ``url``: a TransientError from httpx's
    ConnectError, itself from the OS's refusal (as trio and httpcore chain them)."""
    connect = httpx.ConnectError("all attempts to connect failed", request=httpx.Request("PUT", url))
    connect.__cause__ = OSError("all attempts to connect failed")
    connect.__cause__.__cause__ = ConnectionRefusedError(111, "Error connecting: Connection refused")
    error = TransientError("sending part 1: ConnectError: all attempts to connect failed")
    error.__cause__ = connect
    return error


def drain(subscription: Subscription) -> list[dict[str, Any]]:
    events = []
    while subscription._buffer:
        events.append(subscription._buffer.popleft())
    return events


def states(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e.get("state")) for e in events]


async def test_waiting_for_the_network_says_why_and_when_at_once_and_goes_on(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    auth = StandInAuth()
    ctx = await running_job(jobs, auth)
    progress = ctx.accounting.begin(4 << 20, 4, one_file(4 << 20), "run42.h5")
    progress.add(1 << 20)
    await trio.sleep(1)
    progress.add(1 << 20)  # a rate now, which must not stand still while the job waits
    subscription = await jobs.bus.subscribe(jobs=["job_1"])
    failures = 4
    seen_before_attempt: list[list[dict[str, Any]]] = []

    async def attempt() -> str:
        nonlocal failures
        seen_before_attempt.append(drain(subscription))
        if failures:
            failures -= 1
            raise refused()
        return "sent"

    assert await ctx.retrying("sending part 1", attempt) == "sent"
    # The job waits from the second failure on: its event was out before the third attempt began.
    assert ("job.state", "waiting_for_network") in states(seen_before_attempt[2])
    events = [e for seen in seen_before_attempt for e in seen] + drain(subscription)

    assert ("job.state", "waiting_for_network") in states(events)
    assert states(events)[-2:] == [("job.state", "running"), ("job.progress", "running")]
    change = next(e for e in events if e["type"] == "job.state" and e["state"] == "waiting_for_network")
    waiting = change["job"]["waiting"]
    assert waiting["code"] == "unavailable"
    assert waiting["reason"] == "cannot reach https://store.example.org:9000: connection refused"
    assert change["job"]["error"] == {"code": "unavailable", "message": waiting["reason"]}
    assert datetime.fromisoformat(waiting["retry_at"].replace("Z", "+00:00")).timestamp() > change["time"]
    # Each later failure while waiting tells the new retry time, in a progress event (no state change).
    waits = [e for e in events if e["type"] == "job.progress" and e["state"] == "waiting_for_network"]
    assert len(waits) >= 2 and len({e["waiting"]["retry_at"] for e in waits}) == len(waits)
    assert all(e["rate_bps"] == 0.0 and e["bytes_done"] == 2 << 20 for e in waits)
    last = events[-1]
    assert (last["state"], last["waiting"]) == ("running", None)
    assert events[-2]["job"]["waiting"] is None and events[-2]["job"]["error"] is None
    assert "f00dfeed" not in json.dumps(events) and "AKIA" not in json.dumps(events)
    assert (await jobs.get("job_1"))["waiting"] is None


async def test_a_waiting_job_reads_back_with_its_reason_and_next_retry(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs, StandInAuth())

    async def never() -> None:
        raise refused("http://127.0.0.1:9/api/v1/uploads")

    with trio.move_on_after(30):
        await ctx.retrying("creating the upload session", never)
    job = await jobs.get("job_1")
    assert job["state"] == "waiting_for_network"
    assert job["waiting"]["reason"] == "cannot reach http://127.0.0.1:9: connection refused"
    assert job["waiting"]["retry_at"] is not None
    assert ctx.waiting == job["waiting"]


async def test_waiting_for_auth_names_the_login_and_has_no_retry_time(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    auth = StandInAuth()
    ctx = await running_job(jobs, auth)
    subscription = await jobs.bus.subscribe(jobs=["job_1"])
    logged_in = False

    async def attempt() -> str:
        if not logged_in:
            raise AuthProblem("auth_required", f"not logged in: run `dataerai auth login` (had {TOKEN})")
        return "ok"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.retrying, "reading the token's user", attempt)
        events = []
        async for event in subscription:  # until the job's status says it waits for a login
            events.append(event)
            if event["type"] == "job.progress" and event["state"] == "waiting_for_auth":
                break
        logged_in = True
        auth.login()
    change = next(e for e in events if e["type"] == "job.state")
    assert change["state"] == "waiting_for_auth"
    assert change["job"]["waiting"] == {
        "code": "auth_required", "reason": "not logged in: run `dataerai auth login` (had …)", "retry_at": None,
    }
    assert events[-1]["type"] == "job.progress" and events[-1]["state"] == "waiting_for_auth"
    assert ctx.state == "running"


async def test_the_last_progress_event_carries_the_average_rate(
        jobs: Jobs, autojump_clock: trio.testing.MockClock) -> None:
    ctx = await running_job(jobs, StandInAuth())
    subscription = await jobs.bus.subscribe(jobs=["job_1"])
    progress = ctx.accounting.begin(3000, 3, one_file(3000), "run42.h5")
    for _ in range(3):
        await trio.sleep(1)
        progress.add(1000)
    await trio.sleep(1)  # the completion takes a second more
    progress.finish()
    last = drain(subscription)[-1]
    assert last["bytes_done"] == 3000
    assert last["rate_bps"] == pytest.approx(3000 / 4)


def test_a_transfer_that_never_got_an_answer_names_where_it_went_without_the_query() -> None:
    assert transient_reason(refused()) == "cannot reach https://store.example.org:9000: connection refused"
    plain = TransientError("sending part 2: HTTP 503")
    assert transient_reason(plain) == "sending part 2: HTTP 503"
    timed_out = TransientError("reading range 1: ReadTimeout")
    timed_out.__cause__ = httpx.ReadTimeout("", request=httpx.Request("GET", SIGNED))
    assert transient_reason(timed_out) == "cannot reach https://store.example.org:9000: timed out (ReadTimeout)"


def test_the_job_object_never_shows_a_signature() -> None:
    row = {
        "job_id": "job_1", "kind": "download", "state": "failed", "priority": 0, "created_at": 0.0,
        "updated_at": 0.0, "bytes_total": 1, "chunk_count": 1, "file_name": "f", "local_path": None,
        "dest_dir": "/d", "asset_id": "ast_1", "content_id": None, "remote_session": None, "sha256": None,
        "files": None, "error_code": "not_found", "error_message": f"reading range 0: 404 from {SIGNED}",
    }
    wire = to_wire(row, 0, 0)
    assert wire["error"] is not None
    assert wire["error"]["message"] == "reading range 0: 404 from https://store.example.org:9000/bucket/key?…"
    assert wire["waiting"] is None


_QUERY_CHARS = st.text(st.characters(codec="ascii", exclude_characters=" \t\n\r\"'<>`#"), min_size=1, max_size=40)


@given(host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}(:[0-9]{1,5})?", fullmatch=True),
       path=st.from_regex(r"(/[A-Za-z0-9._~%-]{0,12}){0,4}", fullmatch=True),
       query=_QUERY_CHARS, before=st.sampled_from(["", "sending part 3 to ", "(", "url="]),
       after=st.sampled_from(["", ": refused", ".", " and more"]))
def test_redact_cuts_every_query_string(host: str, path: str, query: str, before: str, after: str) -> None:
    secret = "SIG" + query
    message = f"{before}https://user:pw@{host}{path}?{secret}{after}"
    shown = redact(message)
    assert secret not in shown and "pw@" not in shown
    assert f"https://{host}{path}" in shown
