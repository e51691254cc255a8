"""The token's expiry: each threshold announced once, not again after a restart, afresh for a new token;
thresholds changed by a reload checked at once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import trio

from dataeraid.auth import Auth
from dataeraid.credentials import Credentials, save
from dataeraid.errors import AuthProblem, TransientError
from dataeraid.events import EventBus
from dataeraid.observe.expiry import AuthMonitor, iso, threshold_crossed
from dataeraid.store import Store

DAY = 86400.0
T0 = 1_800_000_000.0


class Repository:
    def __init__(self, expires_at: float | None) -> None:
        self.expires_at = expires_at
        self.fail: Exception | None = None

    async def me(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {"user_id": "usr_1", "token_expires_at": None if self.expires_at is None else iso(self.expires_at)}


async def _signed_in(tmp_path: Path) -> tuple[Path, Store, EventBus]:
    """Saved credentials, and a queue whose event bus runs (close the store after)."""
    credentials = tmp_path / "credentials.json"
    save(credentials, Credentials(server_url="https://repo.example.org", token="dtk_" + "a" * 43))
    store = await Store.open(tmp_path / "q.sqlite3")
    bus = EventBus(store)
    await bus.start()
    return credentials, store, bus


def test_thresholds() -> None:
    assert threshold_crossed(20, (14, 7, 1)) is None
    assert threshold_crossed(14, (14, 7, 1)) == 14
    assert threshold_crossed(0.5, (1, 14, 7)) == 1


async def test_each_threshold_once_across_restarts(tmp_path: Path) -> None:
    credentials, store, bus = await _signed_in(tmp_path)
    now = [T0]
    repository = Repository(T0 + 20 * DAY)

    def monitor() -> AuthMonitor:
        return AuthMonitor(Auth(credentials), repository, bus, (14.0, 7.0, 1.0), clock=lambda: now[0])

    async def announced() -> list[dict[str, Any]]:
        return await store.events_since(0, None, types=["auth.expiring"])

    first = monitor()
    await first.check()
    assert first.expires_at == T0 + 20 * DAY and first.days_left() == 20 and await announced() == []
    now[0] = T0 + 7 * DAY  # 13 days left
    await first.check()
    await first.check()
    assert [e["threshold_days"] for e in await announced()] == [14.0]
    now[0] = T0 + 14 * DAY  # 6 days left, checked by a daemon started again
    second = monitor()
    await second.check()
    await second.check()
    now[0] = T0 + 14.5 * DAY
    await monitor().check()  # 5.5 days: still the 7-day threshold, not told again
    events = await announced()
    assert [e["threshold_days"] for e in events] == [14.0, 7.0]
    assert events[1]["days_left"] == 6.0 and events[1]["server_url"] == "https://repo.example.org"
    # A new token with another expiry starts over, at its own threshold.
    repository.expires_at = T0 + 14.5 * DAY + 0.5 * DAY
    await second.check()
    assert [e["threshold_days"] for e in await announced()] == [14.0, 7.0, 1.0]

    # Unreachable: remembered since when; refused: said so; never expires: infinity.
    repository.fail = TransientError("connection refused")
    await second.check()
    await second.check()
    assert second.reachable is False and second.unreachable_since == now[0]
    repository.fail = AuthProblem("auth_expired", "expired")
    await second.check()
    # Typed afresh: mypy would keep the narrowing of the assert above across the awaits.
    state: tuple[bool | None, float | None, str | None] = (second.reachable, second.unreachable_since, second.rejected)
    assert state == (True, None, "auth_expired")
    repository.fail, repository.expires_at = None, None
    await second.check()
    assert second.expires_at == math.inf and second.rejected is None
    await store.close()


async def test_thresholds_read_at_each_check_and_a_recheck_comes_at_once(tmp_path: Path) -> None:
    credentials, store, bus = await _signed_in(tmp_path)
    repository = Repository(T0 + 10 * DAY)
    warn_days: list[tuple[float, ...]] = [(7.0, 1.0)]
    monitor = AuthMonitor(Auth(credentials), repository, bus, lambda: warn_days[0], clock=lambda: T0)
    subscription = await bus.subscribe(types=["auth.expiring"])
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await monitor.checked()
        assert await store.events_since(0, None, types=["auth.expiring"]) == []  # 10 days: none crossed
        warn_days[0] = (14.0, 7.0, 1.0)
        monitor.recheck()  # not the 15 minutes of the next check
        with trio.fail_after(10):
            event = await subscription.__anext__()
        assert (event["type"], event["threshold_days"]) == ("auth.expiring", 14.0)
        nursery.cancel_scope.cancel()
    subscription.close()
    await store.close()
