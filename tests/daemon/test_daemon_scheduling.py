"""The scheduler's choice (priority, then fairness across clients) and the fair bandwidth split."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.engine.bandwidth import FairBandwidth
from dataeraid.scheduler import pick

MiB = 1024 * 1024


def _row(seq: int, client: str, priority: int = 0) -> dict[str, Any]:
    return {"job_id": f"job_{seq}", "seq": seq, "client": client, "priority": priority}


def test_one_greedy_client_does_not_fill_every_slot() -> None:
    queued = [_row(i, "a") for i in range(10)] + [_row(10, "b"), _row(11, "c")]
    chosen = pick(queued, {}, {}, 3)
    assert [r["client"] for r in chosen] == ["a", "b", "c"]


def test_a_client_with_fewer_running_jobs_goes_first_and_ties_go_round_robin() -> None:
    queued = [_row(1, "a"), _row(2, "a"), _row(3, "b"), _row(4, "b")]
    assert [r["job_id"] for r in pick(queued, {"a": 1}, {"a": 5}, 1)] == ["job_3"]
    # Equal running counts: the client that started a job longest ago goes first.
    assert [r["job_id"] for r in pick(queued, {"a": 1, "b": 1}, {"a": 7, "b": 9}, 2)] == ["job_1", "job_3"]


def test_priority_comes_before_fairness() -> None:
    queued = [_row(1, "a", 5), _row(2, "a", 5), _row(3, "b", 0)]
    assert [r["job_id"] for r in pick(queued, {}, {}, 2)] == ["job_1", "job_2"]


rows = st.lists(
    st.tuples(st.sampled_from("abcd"), st.integers(-2, 2)), min_size=0, max_size=30
).map(lambda items: [_row(i, c, p) for i, (c, p) in enumerate(items)])


@given(rows, st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)), st.integers(0, 8))
def test_pick_is_a_fair_prefix_of_the_priority_order(queued: list[dict[str, Any]], running: dict[str, int],
                                                     free: int) -> None:
    chosen = pick(queued, running, {}, free)
    assert len(chosen) == min(free, len(queued))
    assert len({r["job_id"] for r in chosen}) == len(chosen)
    # Never a lower priority while a higher one waits.
    left = [r for r in queued if r not in chosen]
    if chosen and left:
        assert min(r["priority"] for r in chosen) >= max(r["priority"] for r in left)
    # Within a client and a priority, first come first served.
    for client in "abcd":
        for priority in range(-2, 3):
            mine = [r["seq"] for r in chosen if r["client"] == client and r["priority"] == priority]
            assert mine == sorted(mine)
            skipped = [r["seq"] for r in left if r["client"] == client and r["priority"] == priority]
            assert not mine or not skipped or max(mine) < min(skipped)
    # Fair: among the jobs of the top priority, the running counts after picking differ by
    # at most one between clients that still have jobs waiting at that priority.
    if chosen and left:
        top = chosen[-1]["priority"]
        after = Counter(running) + Counter(r["client"] for r in chosen)
        waiting = {r["client"] for r in left if r["priority"] == top}
        picked_at_top = {r["client"] for r in chosen if r["priority"] == top}
        for c in picked_at_top:
            for w in waiting:
                assert after[c] <= after[w] + 1


async def _greedy(limit: FairBandwidth, client: str, sent: Counter[str], piece: int = 64 * 1024) -> None:
    """A job that sends as fast as the limit lets it."""
    share = limit.join(client)
    try:
        while True:
            await share.spend(piece)
            sent[client] += piece
    finally:
        limit.leave(client)


async def test_the_bandwidth_limit_is_split_between_clients_not_jobs(autojump_clock: trio.testing.MockClock) -> None:
    limit = FairBandwidth(8 * MiB)
    sent: Counter[str] = Counter()
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(_greedy, limit, "many", sent)
            nursery.start_soon(_greedy, limit, "one", sent, 256 * 1024)  # bigger pieces: shares count bytes
    total = sent["many"] + sent["one"]
    assert 78 * MiB <= total <= 83 * MiB  # 8 MiB/s for 10 s, plus a quarter second of burst
    assert abs(sent["many"] - sent["one"]) <= 0.05 * total


async def test_bandwidth_a_client_leaves_unused_goes_to_the_others(autojump_clock: trio.testing.MockClock) -> None:
    limit = FairBandwidth(8 * MiB)
    sent: Counter[str] = Counter()

    async def slow(client: str) -> None:
        """A job held back by something else (its disk, its server) to 1 MiB/s."""
        share = limit.join(client)
        start = trio.current_time()
        try:
            for piece in itertools.count(1):
                await share.spend(64 * 1024)
                sent[client] += 64 * 1024
                await trio.sleep_until(start + piece / 16)
        finally:
            limit.leave(client)

    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow, "slow")
            nursery.start_soon(_greedy, limit, "greedy", sent)
    assert 9 * MiB <= sent["slow"] <= 11 * MiB
    assert sent["greedy"] + sent["slow"] >= 78 * MiB  # the slow client's unused half is not wasted


async def test_a_spend_cancelled_while_waiting_does_not_stall_the_others(
        autojump_clock: trio.testing.MockClock) -> None:
    limit = FairBandwidth(1 * MiB)
    sent: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        # Clients whose spends queue behind each other, each of whom may be pacing the
        # link when it is cancelled.
        scopes = []
        for name in "abcd":
            scope = trio.CancelScope()
            scopes.append(scope)

            async def job(name: str = name, scope: trio.CancelScope = scope) -> None:
                with scope:
                    await _greedy(limit, name, sent)

            nursery.start_soon(job)
        for scope in scopes[:3]:
            await trio.sleep(0.6)
            scope.cancel()
        before = sent["d"]
        await trio.sleep(2)
        assert sent["d"] - before >= 1.8 * MiB  # the last one has the whole link
        scopes[3].cancel()
    assert limit._waiting == [] and not limit._pacing  # nothing left behind


async def test_an_unlimited_daemon_hands_out_unlimited_shares(autojump_clock: trio.testing.MockClock) -> None:
    # On the fake clock, any wait at all inside spend() would run into the deadline.
    limit = FairBandwidth(0)
    bucket = limit.join("a")
    with trio.fail_after(1):
        await bucket.spend(10**12)
    limit.leave("a")


_queue_engine: list[Any] = []


def _queue_db() -> Any:
    """One migrated queue database for every example below (made once: migrations are slow)."""
    if not _queue_engine:
        import tempfile
        from pathlib import Path

        from dataeraid.store import create_queue_engine, migrate

        engine = create_queue_engine(Path(tempfile.mkdtemp(prefix="dataerai-sched-")) / "q.sqlite3")
        migrate(engine)
        _queue_engine.append(engine)
    return _queue_engine[0]


jobs_in_every_state = st.lists(
    st.tuples(st.sampled_from("abcd"), st.integers(-2, 2), st.sampled_from(["queued", "queued", "running", "paused"])),
    min_size=0, max_size=40,
)


@given(jobs_in_every_state, st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)),
       st.dictionaries(st.sampled_from("abcd"), st.integers(0, 9)), st.integers(1, 6), st.sets(st.integers(0, 39)))
def test_the_scheduler_reads_only_the_front_of_each_clients_queue_and_picks_the_same(
        items: list[tuple[str, int, str]], running: dict[str, int], last_start: dict[str, int], free: int,
        excluded: set[int]) -> None:
    from dataeraid import schema
    from dataeraid.store import runnable

    rows: list[dict[str, Any]] = [
        {"job_id": f"job_{i}", "kind": "upload", "state": state, "priority": priority, "seq": i + 1,
         "created_at": 0.0, "updated_at": 0.0, "params": {}, "chunk_size": 1, "client": client}
        for i, (client, priority, state) in enumerate(items)]
    exclude = [f"job_{i}" for i in excluded]
    with _queue_db().begin() as conn:
        conn.execute(schema.jobs.delete())
        if rows:
            conn.execute(schema.jobs.insert(), rows)
        front = runnable(conn, exclude, free)
    whole = [r for r in rows if r["state"] == "queued" and r["job_id"] not in exclude]
    # At most `free` per client, in the queue's order, and the same choice as from the whole queue.
    assert max(Counter(r["client"] for r in front).values(), default=0) <= free
    assert [r["job_id"] for r in front] == [r["job_id"] for r in sorted(whole, key=lambda r: (-r["priority"],
                                                                                               r["seq"]))
                                            if r["job_id"] in {f["job_id"] for f in front}]
    assert [r["job_id"] for r in pick(front, running, last_start, free)] == \
        [r["job_id"] for r in pick(whole, running, last_start, free)]
