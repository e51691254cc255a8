"""The models read the daemon's JSON tolerantly; the errors keep their codes."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from dataerai import (
    AssetMetadata,
    AuthStatus,
    DaemonConnectionError,
    DaemonError,
    DaemonTimeoutError,
    Event,
    Job,
    JobWaiting,
    ProgressEvent,
    Project,
    Relationship,
    Watch,
    WatchFile,
    WatchProblem,
)
from dataerai._errors import error_from_rpc
from dataerai.protocol import RpcError
from hypothesis import given
from hypothesis import strategies as st

MODELS = (AuthStatus, Project, AssetMetadata, Relationship, Job, Event, ProgressEvent, JobWaiting, Watch, WatchFile,
          WatchProblem)


def _progress(**kw: Any) -> ProgressEvent:
    base: dict[str, Any] = dict(
        transfer_id="j",
        bytes_done=0,
        bytes_total=0,
        chunk_index=0,
        chunk_count=0,
        rate_bps=0.0,
        file_index=0,
        file_name="f",
    )
    return ProgressEvent(**{**base, **kw})


def test_progress_percent_and_rate() -> None:
    assert _progress(bytes_done=25, bytes_total=100).percent == 25.0
    assert _progress(bytes_done=150, bytes_total=100).percent == 100.0
    assert _progress(bytes_done=0, bytes_total=0).percent == 0.0  # total not known yet
    assert _progress(bytes_done=0, bytes_total=0, completed=True).percent == 100.0  # a 0-byte transfer, done
    assert _progress(rate_bps=2_500_000.0).rate_mbps == 2.5


def test_models_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _progress().bytes_done = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Job.from_wire({}).state = "x"  # type: ignore[misc]


@pytest.mark.parametrize("model", MODELS)
@given(st.dictionaries(st.text(), st.none() | st.integers() | st.text() | st.lists(st.integers()), max_size=6))
def test_any_object_builds_every_model(model: Any, obj: dict[str, Any]) -> None:
    model.from_wire(obj)


@pytest.mark.parametrize("model", MODELS)
def test_non_objects_build_empty_models(model: Any) -> None:
    for value in (None, 3, "x", [1]):
        model.from_wire(value)


def test_job_from_wire_ignores_unknown_and_mistyped_keys() -> None:
    job = Job.from_wire(
        {
            "job_id": "job_1",
            "kind": "download",
            "state": "completed",
            "bytes_done": 10.0,
            "bytes_total": "ten",
            "files": [{"local_path": "/d/a", "size": 10}, "junk"],
            "error": None,
            "dest_dir": "/d",
            "from_a_newer_daemon": {"x": 1},
            "created_at": "2026-11-25T14:00:00.5Z",
            "updated_at": "not a time",
        }
    )
    assert (job.job_id, job.kind, job.state, job.bytes_done, job.bytes_total) == (
        "job_1",
        "download",
        "completed",
        10,
        0,
    )
    assert job.is_terminal and job.dest_dir == "/d"
    assert [f.local_path for f in job.files] == ["/d/a"]
    assert job.created_at == datetime(2026, 11, 25, 14, 0, 0, 500000, tzinfo=timezone.utc)
    assert job.updated_at is None
    assert job.raw["from_a_newer_daemon"] == {"x": 1}
    assert "from_a_newer_daemon" not in repr(job)


def test_timestamps() -> None:
    status = AuthStatus.from_wire({"expires_at": "2027-01-01T02:00:00+02:00"})
    assert status.expires_at == datetime(2027, 1, 1, tzinfo=timezone.utc)
    naive = AuthStatus.from_wire({"expires_at": "2027-01-01T00:00:00"}).expires_at
    assert naive is not None and naive.utcoffset() == timedelta(0)
    assert AuthStatus.from_wire({"expires_at": "2027-01-01T00:00:00.123456789Z"}).expires_at is not None


def test_auth_status_reads_the_http_me_shape_too() -> None:
    status = AuthStatus.from_wire({"email": "a@b", "token_expires_at": None, "user_id": "u", "scopes": ["read"]})
    assert (status.user_email, status.expires_at, status.scopes) == ("a@b", None, ["read"])


def test_events() -> None:
    progress = Event.from_wire(
        {"id": 42, "type": "job.progress", "job_id": "j", "bytes_done": 1, "bytes_total": 4, "rate_bps": 8e6}
    )
    assert progress.progress == _progress(bytes_done=1, bytes_total=4, rate_bps=8e6, file_name="")
    assert progress.state is None and progress.job is None
    state = Event.from_wire({"id": 41, "type": "job.state", "job_id": "j", "state": "running", "job": {"job_id": "j"}})
    assert state.state == "running" and state.job is not None and state.progress is None
    gap = Event.from_wire({"id": 43, "type": "gap", "missed_from": 10, "missed_to": 39})
    assert (gap.missed_from, gap.missed_to, gap.job_id) == (10, 39, None)
    assert Event.from_wire({"id": 1, "type": "daemon.shiny"}).type == "daemon.shiny"


def test_daemon_error() -> None:
    error = DaemonError("not_found", "no such asset", {"asset_id": "a"})
    assert (error.code, error.message, error.data) == ("not_found", "no such asset", {"asset_id": "a"})
    assert error.args == ("not_found", "no such asset")
    assert str(error) == "not_found: no such asset"
    assert DaemonError("x", "y").data == {}


def test_daemon_timeout_error() -> None:
    error = DaemonTimeoutError("too slow", transfer_id="job_1")
    assert isinstance(error, DaemonError) and isinstance(error, TimeoutError)
    assert (error.code, error.message, error.transfer_id) == ("timeout", "too slow", "job_1")
    assert error.errno is None and str(error) == "timeout: too slow"
    assert DaemonTimeoutError("plain").transfer_id is None


def test_errors_pickle() -> None:
    for error in (
        DaemonError("conflict", "busy", {"k": 1}),
        DaemonTimeoutError("late", transfer_id="job_9", data={"job_id": "job_9"}),
        DaemonConnectionError("gone", socket_path="/s"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert vars(copy) == vars(error)


def test_error_mapping() -> None:
    assert type(error_from_rpc(RpcError("conflict", "m"))) is DaemonError
    timeout = error_from_rpc(RpcError("timeout", "m", {"job_id": "job_3"}))
    assert isinstance(timeout, DaemonTimeoutError) and timeout.transfer_id == "job_3"
    bad_id = error_from_rpc(RpcError("timeout", "m", {"job_id": 3}))
    assert isinstance(bad_id, DaemonTimeoutError) and bad_id.transfer_id is None


def test_a_timeout_names_its_job_under_both_names_and_survives_pickling() -> None:
    import pickle

    from dataerai import DaemonTimeoutError

    exc = DaemonTimeoutError("job job_1 did not finish", transfer_id="job_1", data={"job_id": "job_1"})
    assert exc.job_id == exc.transfer_id == "job_1" and exc.code == "timeout"
    again = pickle.loads(pickle.dumps(exc))
    assert again.job_id == "job_1" and isinstance(again, TimeoutError)
    assert DaemonTimeoutError("daemon did not answer").job_id is None


def test_job_and_event_models_read_the_new_fields() -> None:
    from dataerai import Event, Job

    job = Job.from_wire({"job_id": "job_1", "kind": "upload", "state": "queued", "priority": 3, "client": "pid:7"})
    assert (job.priority, job.client) == (3, "pid:7")
    event = Event.from_wire({"id": 5, "type": "job.priority", "job_id": "job_1", "priority": 3,
                             "job": {"job_id": "job_1", "priority": 3}})
    assert event.job is not None and event.job.priority == 3 and not event.is_gap
    gap = Event.from_wire({"id": 9, "type": "gap", "missed_from": 4, "missed_to": 9})
    assert gap.is_gap and (gap.missed_from, gap.missed_to) == (4, 9)


def test_a_waiting_job_says_why_and_when_it_tries_again() -> None:
    wire = {"job_id": "j", "state": "waiting_for_network",
            "error": {"code": "unavailable", "message": "cannot reach http://h: connection refused"},
            "waiting": {"code": "unavailable", "reason": "cannot reach http://h: connection refused",
                        "retry_at": "2026-11-25T14:00:08.000000Z", "attempts": 3}}
    job = Job.from_wire(wire)
    assert job.waiting == JobWaiting("unavailable", "cannot reach http://h: connection refused",
                                     datetime(2026, 11, 25, 14, 0, 8, tzinfo=timezone.utc))
    assert job.waiting.raw["attempts"] == 3
    assert job.waiting.retry_in_s(datetime(2026, 11, 25, 14, 0, 5, tzinfo=timezone.utc)) == 3.0
    assert job.waiting.retry_in_s(datetime(2026, 11, 25, 14, 1, tzinfo=timezone.utc)) == 0.0
    # A daemon that does not send `waiting`: the error that made the job wait says why.
    older = Job.from_wire({**wire, "waiting": None})
    assert older.waiting == JobWaiting("unavailable", "cannot reach http://h: connection refused", None)
    assert older.waiting.retry_in_s() is None
    # Only a waiting job waits; anything else in the field is ignored.
    assert Job.from_wire({**wire, "state": "running"}).waiting is None
    assert Job.from_wire({**wire, "waiting": "soon", "error": None}).waiting is None


def test_progress_says_the_state_and_why_the_job_waits() -> None:
    event = ProgressEvent.from_wire({"bytes_done": 5, "state": "waiting_for_auth",
                                     "waiting": {"code": "auth_expired", "reason": "log in again", "retry_at": None}})
    assert event.state == "waiting_for_auth"
    assert event.waiting == JobWaiting("auth_expired", "log in again")
    older = ProgressEvent.from_wire({"bytes_done": 5, "waiting": [1]})
    assert (older.state, older.waiting) == (None, None)


JUNK = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.lists(st.integers())
WATCH_EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["watch.state", "watch.file"])},
    optional={key: JUNK | st.dictionaries(st.text(), JUNK, max_size=4)
              for key in ("id", "time", "watch_id", "path", "state", "previous_state", "watch", "file")},
)


@given(WATCH_EVENT)
def test_any_watch_event_builds_an_event(obj: dict[str, Any]) -> None:
    event = Event.from_wire(obj)
    assert event.type == obj["type"] and event.job is None and event.progress is None
    assert (event.watch is not None) == (obj["type"] == "watch.state" and isinstance(obj.get("watch"), dict))
    assert (event.file is not None) == (obj["type"] == "watch.file" and isinstance(obj.get("file"), dict))


def test_a_watch_reads_tolerantly() -> None:
    watch = Watch.from_wire({"watch_id": "wat_1", "root": "/r", "state": "active", "files": {
        "seen": 2, "queued": True, "verified": "many", "quarantined": 1, "uploaded": 3}, "lag_s": float("nan"),
        "rescan_interval_s": "soon", "problem": "broken", "force_polling": "yes", "a_newer_key": 1})
    assert watch.files == {"seen": 2, "quarantined": 1, "uploaded": 3}  # counts only
    assert (watch.pending, watch.quarantined) == (5, 1)
    assert (watch.lag_s, watch.rescan_interval_s, watch.problem, watch.force_polling) == (None, 0.0, None, False)
    assert watch.raw["a_newer_key"] == 1 and "a_newer_key" not in repr(watch)
    assert Watch.from_wire({}).quarantined == 0
    assert WatchFile.from_wire({"path": "a", "error": "x", "size": -1.0}).error is None
    assert WatchProblem.from_wire({"message": "m"}) == WatchProblem("internal", "m")


def test_event_time_is_unix_seconds_or_iso() -> None:
    assert Event.from_wire({"id": 1, "type": "job.state", "time": 0}).time == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert Event.from_wire({"id": 1, "type": "gap", "time": "2026-11-25T14:00:00Z"}).time == datetime(
        2026, 11, 25, 14, tzinfo=timezone.utc)
    for junk in (True, float("inf"), 1e300, "soon", None):
        assert Event.from_wire({"id": 1, "type": "gap", "time": junk}).time is None
