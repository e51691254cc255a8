"""Part targets asked at the same moment share one transaction (``Uploads._mint_together``),
and each ask still gets its own answer: a refusal stays with the ask that earned it.

Run against a real SeaweedFS (S3 storage, whose part targets are recorded) on SQLite and on
PostgreSQL, through the real application in process. The batcher under it
(``db.Batcher``) is tested alone first.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from dataerai_server import uploads
from dataerai_server.db import Batcher, Pending
from dataerai_server.services import Services
from in_process import asgi_client
from server_harness import error, ok
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

PART = 5 * 1024 * 1024
PARTS = 12


# -- the batcher alone


async def test_calls_arriving_while_a_batch_runs_are_the_next_batch_each_answered_alone() -> None:
    batches: list[list[int]] = []
    first_running = trio.Event()
    release = trio.Event()

    async def run(batch: list[Pending[int, int]]) -> None:
        batches.append([p.item for p in batch])
        if len(batches) == 1:
            first_running.set()
            await release.wait()
        for pending in batch:
            if pending.item % 3 == 0:
                pending.fail(ValueError(pending.item))
            else:
                pending.answer(pending.item * 10)

    batcher: Batcher[int, int] = Batcher(run, most=4)
    got: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_answer, batcher, 1, got)
        await first_running.wait()
        for i in range(2, 12):  # one by one, so that they queue in this order
            nursery.start_soon(_answer, batcher, i, got)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    # Alone, the first call was a batch of one, run at once; the ten that came while it ran
    # were taken in arrival order, at most four at a time.
    assert batches == [[1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
    assert {i: (-i if i % 3 == 0 else i * 10) for i in range(1, 12)} == {
        i: (-answer.args[0] if isinstance(answer, ValueError) else answer) for i, answer in got.items()
    }


async def _answer(batcher: Batcher[Any, Any], item: Any, answers: dict[Any, object]) -> None:
    """What ``batcher(item)`` answers, or the exception it raises, into ``answers[item]``."""
    try:
        answers[item] = await batcher(item)
    except Exception as exc:
        answers[item] = exc


async def test_what_a_batch_raises_reaches_its_runner_and_every_caller_left_unanswered() -> None:
    async def run(batch: list[Pending[str, str]]) -> None:
        batch[1].answer("second")
        raise OSError("the batch broke after one answer")

    batcher: Batcher[str, str] = Batcher(run, most=8)
    answers: dict[str, object] = {}
    # All three queue behind the slot, then go as one batch.
    async with trio.open_nursery() as nursery, batcher._slot:
        for item in "xyz":
            nursery.start_soon(_answer, batcher, item, answers)
            await trio.testing.wait_all_tasks_blocked()
    assert answers["y"] == "second"
    assert all(isinstance(answers[item], OSError) for item in "xz"), answers  # x ran the batch


async def test_a_call_cancelled_while_queued_is_taken_back_and_never_runs() -> None:
    ran: list[list[str]] = []

    async def run(batch: list[Pending[str, str]]) -> None:
        ran.append([p.item for p in batch])
        for pending in batch:
            pending.answer(pending.item)

    batcher: Batcher[str, str] = Batcher(run, most=8)
    scope = trio.CancelScope()
    cancelled_done = trio.Event()

    async def cancelled() -> None:
        with scope:
            await batcher("cancelled")
        cancelled_done.set()

    async with trio.open_nursery() as nursery, batcher._slot:
        nursery.start_soon(batcher, "kept")
        nursery.start_soon(cancelled)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await cancelled_done.wait()
    assert ran == [["kept"]]


async def test_the_caller_running_a_batch_is_cancelled_only_after_the_batch_is_done() -> None:
    started, go_on = trio.Event(), trio.Event()

    async def run(batch: list[Pending[str, str]]) -> None:
        started.set()
        await go_on.wait()  # a checkpoint where the runner's cancellation would land
        for pending in batch:
            pending.answer(pending.item.upper())

    batcher: Batcher[str, str] = Batcher(run, most=8)
    scope = trio.CancelScope()
    answers: dict[str, object] = {}

    async def runner() -> None:
        with scope:
            answers["x"] = await batcher("x")
        answers.setdefault("x", "cancelled")

    async def other() -> None:
        answers["y"] = await batcher("y")

    async with trio.open_nursery() as nursery:
        async with batcher._slot:
            nursery.start_soon(runner)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
        await started.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        go_on.set()
    assert answers == {"x": "cancelled", "y": "Y"}


# -- part targets through the real application


async def _session(client: httpx.AsyncClient) -> str:
    user_id = ok(await client.get("/api/v1/me"))["user_id"]
    created = await client.post(
        "/api/v1/uploads",
        json={"owner_type": "user", "owner_id": user_id, "size": PART * PARTS, "part_size": PART},
    )
    return str(ok(created, 201)["upload_id"])


def _targets(services: Services, upload_id: str) -> dict[int, str]:
    rows = services.db.read_sync(
        lambda s: s.execute(
            text("SELECT number, sha256 FROM upload_part_targets WHERE upload_id = :u"), {"u": upload_id}
        ).all()
    )
    return {number: digest for number, digest in rows}


async def _ask_together(
    services: Services, asks: list[tuple[httpx.AsyncClient, str, int, int]]
) -> list[httpx.Response]:
    """Ask every target at once: held behind the part targets' slot until all are queued, so
    that they go as one batch whatever the machine's speed."""
    answers: list[httpx.Response | None] = [None] * len(asks)

    async def ask(i: int, client: httpx.AsyncClient, upload_id: str, number: int, size: int) -> None:
        answers[i] = await client.post(
            f"/api/v1/uploads/{upload_id}/parts/{number}/target", json={"sha256": f"{number:064x}", "size": size}
        )

    async with trio.open_nursery() as nursery, services.uploads._targets._slot:
        for i, (client, upload_id, number, size) in enumerate(asks):
            nursery.start_soon(ask, i, client, upload_id, number, size)
            await trio.testing.wait_all_tasks_blocked()  # so that they queue in this order
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


async def test_targets_asked_together_take_one_transaction_and_each_gets_its_own_answer(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    mint_batch = services.uploads._mint_batch

    def counted(session: Any, batch: list[Any]) -> None:
        batches.append(len(batch))
        mint_batch(session, batch)

    monkeypatch.setattr(services.uploads, "_mint_batch", counted)
    async with asgi_client(services, "ada@example.org") as ada, asgi_client(services, "bob@example.org") as bob:
        mine, bobs = await _session(ada), await _session(bob)
        asks = [(ada, mine, number, PART) for number in range(1, PARTS + 1)]
        asks += [
            (ada, mine, 3, PART + 1),  # the wrong size
            (ada, mine, PARTS + 1, PART),  # past the last part
            (ada, bobs, 1, PART),  # someone else's session
            (ada, "upl_" + "0" * 24, 1, PART),  # no such session
            (bob, bobs, 2, PART),  # bob's own, in the same batch
        ]
        answers = await _ask_together(services, asks)

    assert batches == [len(asks)]  # one transaction for all of them
    for number, answer in zip(range(1, PARTS + 1), answers, strict=False):
        assert ok(answer)["url"].startswith("http"), number
    assert error(answers[PARTS], 400, "invalid_argument")["field"] == "size"
    assert error(answers[PARTS + 1], 400, "invalid_argument")["field"] == "number"
    error(answers[PARTS + 2], 404, "not_found")
    error(answers[PARTS + 3], 404, "not_found")
    ok(answers[PARTS + 4])
    # Every signed target was recorded before its URL was handed out, and nothing else.
    assert _targets(services, mine) == {number: f"{number:064x}" for number in range(1, PARTS + 1)}
    assert _targets(services, bobs) == {2: f"{2:064x}"}


async def test_a_batch_whose_write_fails_is_asked_again_one_by_one(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = uploads._record_targets
    calls: list[int] = []

    def failing_together(session: Any, asks: Any) -> None:
        calls.append(len(asks))
        if len(asks) > 1:
            raise IntegrityError("INSERT", {}, Exception("as if a row broke a constraint"))
        record(session, asks)

    monkeypatch.setattr(uploads, "_record_targets", failing_together)
    async with asgi_client(services, "cy@example.org") as cy:
        upload_id = await _session(cy)
        asks = [(cy, upload_id, number, PART) for number in (1, 2, 3)] + [(cy, upload_id, 4, 1)]
        answers = await _ask_together(services, asks)

    assert calls == [3, 1, 1, 1]  # the batch failed as a whole; each signed ask went alone
    assert all(ok(answer)["url"] for answer in answers[:3])
    assert error(answers[3], 400, "invalid_argument")["field"] == "size"
    assert _targets(services, upload_id) == {n: f"{n:064x}" for n in (1, 2, 3)}
