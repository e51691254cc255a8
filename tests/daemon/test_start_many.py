"""``upload.start_many`` and ``download.start_many``: many transfers queued in one call, all
or nothing, in the order given, each with the ``job.state`` event ``*.start`` would emit;
through the registry (the specs, then the handler) onto a real queue."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dataerai import contract
from dataerai.protocol import Request, Response
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.errors import DataeraiError
from dataeraid.events import EventBus
from dataeraid.jobs import Jobs
from dataeraid.methods import REGISTRY
from dataeraid.rpc.params import Integer, Invalid, Items, Param, Text
from dataeraid.store import Store

MiB = 1024 * 1024
PROJECT = "prj_12345678"
ASSET = "ast_12345678"


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    store = await Store.open(tmp_path / "queue.sqlite3")
    bus = EventBus(store)
    await bus.start()
    yield Jobs(bus)
    await store.close()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    made = []
    for i in range(5):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(b"x" * (i + 1))
        made.append(path)
    return made


async def _ask(jobs: Jobs, method: str, params: dict[str, Any]) -> Response:
    svc = SimpleNamespace(current=SimpleNamespace(default_chunk_size=64 * MiB), jobs=jobs)
    return await REGISTRY.answer(SimpleNamespace(svc=svc, conn=SimpleNamespace(peer_pid=4242)),
                                 Request(method, params, 1))


def _upload(path: Path, **more: Any) -> dict[str, Any]:
    return {"local_path": str(path), "title": path.name, "owner_type": "project", "owner_id": PROJECT, **more}


async def _queued(jobs: Jobs) -> list[str]:
    return [row["job_id"] for row in await jobs.store.list_jobs()]


async def test_the_jobs_are_queued_in_order_each_with_its_state_event(jobs: Jobs, files: list[Path]) -> None:
    answer = await _ask(jobs, "upload.start_many",
                        {"items": [_upload(f, priority=i, client={"name": "bulk"}) for i, f in enumerate(files)]})
    assert answer.error is None
    result = answer.result
    assert [job["local_path"] for job in result] == [str(f) for f in files]
    assert [job["bytes_total"] for job in result] == [1, 2, 3, 4, 5]
    assert [job["priority"] for job in result] == [0, 1, 2, 3, 4]
    assert {job["state"] for job in result} == {"queued"}
    assert {job["client"] for job in result} == {"name:bulk"}
    assert await _queued(jobs) == [job["job_id"] for job in result]  # the queue's order is the call's
    events = await jobs.store.events_since(0, None, types=["job.state"])
    assert [(e["job_id"], e["state"], e["previous_state"]) for e in events] == [
        (job["job_id"], "queued", None) for job in result]


async def test_an_item_the_specs_refuse_refuses_the_call_naming_the_item(jobs: Jobs, files: list[Path]) -> None:
    items = [_upload(f) for f in files]
    items[2]["title"] = 42
    answer = await _ask(jobs, "upload.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == "invalid_argument"
    assert answer.error.data == {"param": "title", "index": 2}
    assert answer.error.message.startswith("items[2]: ")
    assert await _queued(jobs) == []


@pytest.mark.parametrize(
    ("spoil", "code", "data"),
    [
        (lambda item, tmp: item.update(local_path=str(tmp / "gone.bin")), "not_found", {"index": 3}),
        (lambda item, tmp: item.pop("title"), "invalid_argument", {"param": "title", "index": 3}),
        (lambda item, tmp: (tmp / "empty").mkdir() or item.update(local_path=str(tmp / "empty")),
         "invalid_argument", {"param": "local_path", "index": 3}),
    ],
)
async def test_an_item_the_handler_refuses_queues_nothing_of_the_call(
    jobs: Jobs, files: list[Path], tmp_path: Path, spoil: Any, code: str, data: dict[str, Any]
) -> None:
    items = [_upload(f) for f in files]
    spoil(items[3], tmp_path)
    answer = await _ask(jobs, "upload.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == code
    assert answer.error.data == data
    assert await _queued(jobs) == []
    assert await jobs.store.events_since(0, None) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_an_unreadable_file_is_permission_denied_for_the_whole_call(jobs: Jobs, files: list[Path]) -> None:
    files[4].chmod(0)
    answer = await _ask(jobs, "upload.start_many", {"items": [_upload(f) for f in files]})
    assert answer.error is not None and answer.error.code == "permission_denied"
    assert answer.error.data == {"index": 4}
    assert await _queued(jobs) == []


@pytest.mark.parametrize(
    ("items", "problem"),
    [([], "must not be empty"), ("x", "must be an array"), (None, "must not be null")],
)
async def test_items_must_be_a_non_empty_array(jobs: Jobs, items: Any, problem: str) -> None:
    answer = await _ask(jobs, "upload.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == "invalid_argument"
    assert answer.error.data == {"param": "items"}
    assert problem in answer.error.message


async def test_more_items_than_the_limit_are_refused_whole(jobs: Jobs, files: list[Path]) -> None:
    items = [_upload(files[0])] * (contract.MAX_START_MANY_ITEMS + 1)
    answer = await _ask(jobs, "upload.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == "invalid_argument"
    assert answer.error.data == {"param": "items"}
    assert f"at most {contract.MAX_START_MANY_ITEMS}" in answer.error.message
    assert await _queued(jobs) == []
    # The limit itself is taken.
    answer = await _ask(jobs, "upload.start_many", {"items": items[:-1]})
    assert answer.error is None and len(answer.result) == contract.MAX_START_MANY_ITEMS


async def test_a_job_id_given_twice_in_one_call_is_invalid(jobs: Jobs, files: list[Path]) -> None:
    job_id = contract.new_job_id()
    items = [_upload(files[0], job_id=job_id), _upload(files[1]), _upload(files[2], job_id=job_id)]
    answer = await _ask(jobs, "upload.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == "invalid_argument"
    assert answer.error.data == {"param": "job_id", "index": 2}
    assert await _queued(jobs) == []


async def test_a_call_sent_again_answers_with_the_same_jobs_and_queues_nothing_more(
    jobs: Jobs, files: list[Path]
) -> None:
    items = [_upload(f, job_id=contract.new_job_id()) for f in files]
    first = await _ask(jobs, "upload.start_many", {"items": items})
    again = await _ask(jobs, "upload.start_many", {"items": items})
    assert first.error is None and again.error is None
    assert [j["job_id"] for j in again.result] == [j["job_id"] for j in first.result] == [i["job_id"] for i in items]
    assert len(await _queued(jobs)) == len(files)
    assert len(await jobs.store.events_since(0, None)) == len(files)


async def test_a_job_id_of_another_kind_is_a_conflict_and_rolls_back_the_call(
    jobs: Jobs, files: list[Path], tmp_path: Path
) -> None:
    upload = await _ask(jobs, "upload.start", _upload(files[0]))
    assert upload.error is None
    taken = upload.result["job_id"]
    items = [{"asset_id": ASSET, "dest_dir": str(tmp_path / "a")},
             {"asset_id": ASSET, "dest_dir": str(tmp_path / "b"), "job_id": taken}]
    answer = await _ask(jobs, "download.start_many", {"items": items})
    assert answer.error is not None and answer.error.code == "conflict"
    assert answer.error.data == {"index": 1}
    assert await _queued(jobs) == [taken]


async def test_downloads_are_queued_in_order_and_a_file_as_destination_is_refused(
    jobs: Jobs, files: list[Path], tmp_path: Path
) -> None:
    items = [{"asset_id": ASSET, "dest_dir": str(tmp_path / f"d{i}"), "overwrite": i == 1} for i in range(3)]
    answer = await _ask(jobs, "download.start_many", {"items": items})
    assert answer.error is None
    assert [(j["kind"], j["dest_dir"]) for j in answer.result] == [("download", i["dest_dir"]) for i in items]
    items.append({"asset_id": ASSET, "dest_dir": str(files[0])})
    refused = await _ask(jobs, "download.start_many", {"items": items})
    assert refused.error is not None and refused.error.code == "invalid_argument"
    assert refused.error.data == {"param": "dest_dir", "index": 3}
    assert len(await _queued(jobs)) == 3


_SPEC = Items("thing.start", (Param("n", Integer(0, 9), required=True), Param("s", Text(5))), 4)


@given(st.lists(st.one_of(st.fixed_dictionaries({"n": st.integers(-5, 15)}, optional={"s": st.text(max_size=7)}),
                          st.integers(), st.none()), max_size=6))
def test_items_bind_each_object_or_name_the_first_that_does_not(value: list[Any]) -> None:
    def ok(item: Any) -> bool:
        return (isinstance(item, dict) and 0 <= item["n"] <= 9
                and len(item.get("s", "")) <= 5 and contract.text_problem(item.get("s", "")) is None)

    bad = next((i for i, item in enumerate(value) if not ok(item)), None)
    if not value or len(value) > 4:
        with pytest.raises(Invalid, match=r"must not be empty|at most 4 items"):
            _SPEC.check(value)
    elif bad is None:
        assert _SPEC.check(value) == [{"n": item["n"], "s": item.get("s")} for item in value]
    else:
        with pytest.raises(DataeraiError) as raised:
            _SPEC.check(value)
        assert raised.value.code == "invalid_argument"
        assert raised.value.data["index"] == bad
        assert raised.value.message.startswith(f"items[{bad}]")
