"""Calls that share a transaction (``db.Together``): each answered alone, a check's refusal
its own, and a database error sending the batch again call by call. On SQLite and on
PostgreSQL (``database_url``)."""

from __future__ import annotations

import trio
import trio.testing
from dataerai_server.db import Database, Together
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


def _insert(session: Session, n: int) -> int:
    if n < 0:
        raise ValueError(n)  # a refusal before anything is written
    session.execute(text("INSERT INTO together_rows (n) VALUES (:n)"), {"n": n})
    return n * 10


async def _together(
    database_url: str, first: list[int], items: list[int]
) -> tuple[dict[int, object], list[int], set[int]]:
    """Answers to ``items`` asked at once (after ``first``, one by one), the sizes of the
    transactions they took, and the rows written."""
    db = Database(database_url)
    try:
        db.write_sync(lambda s: s.execute(text("CREATE TABLE together_rows (n INTEGER PRIMARY KEY)")))
        transactions: list[int] = []

        def counted(session: Session, items: list[int]) -> list[int | Exception]:
            transactions.append(len(items))
            return Together.one_by_one(_insert)(session, items)

        together: Together[int, int] = Together(db.write, counted, most=16)
        for n in first:
            await together(n)
        transactions.clear()
        answers: dict[int, object] = {}

        async def ask(n: int) -> None:
            try:
                answers[n] = await together(n)
            except Exception as exc:
                answers[n] = exc

        async with trio.open_nursery() as nursery, together._batcher._slot:
            for n in items:  # all queued behind the slot, so that they go as one batch
                nursery.start_soon(ask, n)
                await trio.testing.wait_all_tasks_blocked()
        rows = set(db.read_sync(lambda s: s.execute(text("SELECT n FROM together_rows")).scalars().all()))
        return answers, transactions, rows
    finally:
        db.dispose()


async def test_a_refusal_is_its_own_and_the_others_share_one_transaction(database_url: str) -> None:
    answers, transactions, rows = await _together(database_url, [], [1, 2, -3, 4])
    assert transactions == [4]
    assert {n: a for n, a in answers.items() if n != -3} == {1: 10, 2: 20, 4: 40}
    assert isinstance(answers[-3], ValueError)
    assert rows == {1, 2, 4}


async def test_a_database_error_sends_the_batch_again_call_by_call(database_url: str) -> None:
    answers, transactions, rows = await _together(database_url, [1], [5, 6, 1, 7])
    # The duplicate key failed the shared transaction; nothing of it was written, and each
    # call went again alone: only the duplicate fails.
    assert transactions == [4, 1, 1, 1, 1]
    assert {n: a for n, a in answers.items() if n != 1} == {5: 50, 6: 60, 7: 70}
    assert isinstance(answers[1], IntegrityError)
    assert rows == {1, 5, 6, 7}
