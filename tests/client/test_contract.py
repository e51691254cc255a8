"""One definition of each fact: the SDK, the daemon and the server all read the contract."""

from __future__ import annotations

import dataclasses

import dataerai
from dataerai import contract
from dataerai._models import Event, Job, ProgressEvent, Watch, WatchFile, WatchProblem
from hypothesis import assume, given, settings
from hypothesis import strategies as st


def test_the_daemon_and_the_server_use_the_contracts_limits_not_copies() -> None:
    from dataerai_server import config as server_config
    from dataerai_server import paths as server_paths

    from dataeraid import config, fileset, jobs

    assert config.Settings().default_chunk_size == contract.DEFAULT_PART_SIZE
    assert (server_config.MIN_PART_SIZE, server_config.MAX_PART_SIZE, server_config.MAX_PART_COUNT) == (
        contract.MIN_PART_SIZE, contract.MAX_PART_SIZE, contract.MAX_PARTS)
    assert server_paths.path_problem is contract.path_problem
    assert server_paths.MAX_FILES == fileset.MAX_FILES == contract.MAX_FILES_PER_CONTENT
    assert jobs.STATES == contract.JOB_STATES and jobs.TERMINAL == contract.TERMINAL_JOB_STATES
    assert dataerai.TERMINAL_JOB_STATES is contract.TERMINAL_JOB_STATES


def test_the_sdk_reads_every_field_of_the_job_object_and_of_every_event() -> None:
    job_fields = {f.name for f in dataclasses.fields(Job)}
    assert set(contract.JobObject.__annotations__) <= job_fields | {"files", "error"}
    assert set(contract.EVENT_FIELDS) == set(contract.EVENT_TYPES)
    event_fields = {f.name for f in dataclasses.fields(Event)}
    progress = {f.name for f in dataclasses.fields(ProgressEvent)}
    for type_, keys in contract.EVENT_FIELDS.items():
        unread = set(keys) - event_fields - progress - {"priority", "previous_priority", "logged_in", "server_url",
                                                        "waiting_jobs"}
        assert not unread, (type_, unread)


def test_the_sdk_reads_every_field_of_the_watch_and_the_watched_file() -> None:
    assert set(contract.WatchObject.__annotations__) <= {f.name for f in dataclasses.fields(Watch)}
    assert set(contract.WatchFileObject.__annotations__) <= {f.name for f in dataclasses.fields(WatchFile)}
    assert set(contract.WatchProblemObject.__annotations__) == {f.name for f in dataclasses.fields(WatchProblem)}
    # Field names are the wire's keys, and each is read from its own key: a value put under
    # every key comes back from its field (not a neutral default).
    from fake_watches import watch_file_object, watch_object

    wire = watch_object(problem={"code": "root_missing", "message": "gone"}, lag_s=12.5, prefix="raw/",
                        collection_id="col_0123456789", free_space_below="15%", force_polling=True, mode="polling",
                        mode_reason={"code": "no_inotify", "message": "n"}, oldest_pending="S1/run2/tile.tif",
                        metadata_template={"beam": 7}, tags=["raw"], priority=3, state="unavailable")
    watch = Watch.from_wire(wire)
    for key, value in wire.items():
        read = getattr(watch, key)
        if key in ("problem", "mode_reason"):
            read = dataclasses.asdict(read)
        elif key.endswith("_at"):
            read = read.isoformat().replace("+00:00", "Z")
        assert read == value, key
    file_wire = watch_file_object("run/a.h5", "quarantined", asset_id="ast_0123456789", content_id="cnt_0123456789",
                                  job_id=contract.new_job_id(), sha256="ab" * 32, attempts=4,
                                  retry_at="2026-11-25T15:00:00Z", error={"code": "permission_denied", "message": "m"})
    watched = WatchFile.from_wire(file_wire)
    for key, value in file_wire.items():
        read = getattr(watched, key)
        if key == "error":
            read = {"code": read.code, "message": read.message}
        elif key.endswith("_at") or key == "mtime":
            read = read.isoformat().replace("+00:00", "Z")
        assert read == value, key


def test_job_ids_match_their_pattern_and_sort_by_creation() -> None:
    ids = [contract.new_job_id() for _ in range(50)]
    assert all(contract.is_id("job", i) for i in ids)
    assert len(set(ids)) == 50


def test_a_repository_path_is_refused_for_what_would_escape_or_not_be_written() -> None:
    for bad in ("", "/abs", "a//b", "a/../b", "./a", "a\\b", "a\x00b", "a\nb", "a\ud800", "x" * 1025):
        assert contract.path_problem(bad) is not None, bad
    for good in ("a", "run42/raw/a.h5", "é/ü.bin", ".hidden/x"):
        assert contract.path_problem(good) is None, good


@settings(max_examples=500)
@given(
    parent=st.lists(st.from_regex(r"[A-Za-z0-9é_. -]{1,8}", fullmatch=True), min_size=1, max_size=3).map("/".join),
    name=st.one_of(st.text(max_size=8), st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8),
                   st.sampled_from(["", ".", "..", "...", "a\\b", "a/b", "\x7f", " "])),
)
def test_a_plain_segment_keeps_a_taken_path_taken(parent: str, name: str) -> None:
    # scan_source takes a plain name under a taken path without path_problem: never wrongly.
    assume(contract.path_problem(parent) is None)
    path = f"{parent}/{name}"
    assume(len(path) <= contract.MAX_PATH_LENGTH)
    if contract.plain_segment(name):
        assert contract.path_problem(path) is None, path


def test_common_file_names_are_plain_and_others_go_to_the_whole_check() -> None:
    assert all(map(contract.plain_segment, ["run42.h5", ".hidden", "a b", "...", "x" * 255]))
    assert not any(map(contract.plain_segment, ["", ".", "..", "a/b", "a\\b", "é.bin", "a\tb", "\x7f"]))


def test_the_daemon_emits_the_job_object_of_the_contract() -> None:
    from dataeraid import schema
    from dataeraid.jobs import to_wire

    row: dict[str, object] = dict.fromkeys(schema.jobs.c.keys())
    row.update(job_id=contract.new_job_id(), kind="upload", state="failed", priority=0, error_code="io_error",
               error_message="disk", files=None, created_at=0.0, updated_at=0.0)
    job = to_wire(row, 0, 0)
    assert set(job) == set(contract.JobObject.__annotations__)
