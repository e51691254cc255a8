"""The limit changes at run time: FairBandwidth.set_rate keeps fairness, and the daemon's
timetable task switches the links at each boundary of local wall time (fake clocks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

from dataeraid.config import LiveSettings, Settings
from dataeraid.control import RECHECK_S, DaemonControl
from dataeraid.engine.bandwidth import FairBandwidth, Links

MiB = 1024 * 1024


async def _greedy(limit: FairBandwidth, client: str, sent: Counter[str], piece: int = 64 * 1024) -> None:
    share = limit.join(client)
    try:
        while True:
            await share.spend(piece)
            sent[client] += piece
            await trio.lowlevel.checkpoint()  # an unlimited spend returns at once; a real job does I/O
    finally:
        limit.leave(client)


async def test_fairness_holds_across_rate_changes_and_off_lets_waiting_spends_through(
        autojump_clock: trio.testing.MockClock) -> None:
    limit = FairBandwidth(8 * MiB)
    sent: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(_greedy, limit, "many", sent)
        nursery.start_soon(_greedy, limit, "one", sent, 256 * 1024)
        await trio.sleep(5)
        at_5 = sent.copy()
        limit.set_rate(2 * MiB)  # while spends wait, booked at the old rate
        await trio.sleep(5)
        slow = sent - at_5
        # 2 MiB/s, not 8, from the change on: the quarter second booked ahead at 8 MiB/s is a second at 2.
        assert 8 * MiB <= slow.total() <= 10.5 * MiB
        assert abs(slow["many"] - slow["one"]) <= 0.1 * slow.total()
        limit.set_rate(0)  # off: what waited goes through at once, and nothing waits any more
        before = sent.total()
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        assert not limit._waiting and sent.total() > before
        limit.set_rate(4 * MiB)  # and on again
        mark = sent.copy()
        await trio.sleep(5)
        fast = sent - mark
        assert 19 * MiB <= fast.total() <= 21.5 * MiB
        assert abs(fast["many"] - fast["one"]) <= 0.1 * fast.total()
        nursery.cancel_scope.cancel()


def _wall(zone: str, start_utc: datetime) -> Callable[[], datetime]:
    """Local wall time in ``zone``, running with Trio's (fake) clock from ``start_utc``."""
    tz = ZoneInfo(zone)

    def now() -> datetime:
        return (start_utc + timedelta(seconds=trio.current_time())).astimezone(tz).replace(tzinfo=None)

    return now


async def _control(bwlimit: str, wall: Callable[[], datetime], tmp: Path,
                   nursery: trio.Nursery) -> tuple[DaemonControl, list[tuple[float, int]]]:
    control = DaemonControl(LiveSettings(Settings(bwlimit=bwlimit)), tmp / "config.toml", wall_now=wall)
    changes: list[tuple[float, int]] = []
    original = control.links.up.set_rate

    def record(rate_bps: int) -> None:
        if rate_bps != control.links.up.rate:
            changes.append((trio.current_time(), rate_bps))
        original(rate_bps)

    await nursery.start(control.serve)  # the limit at the start is in force once it started
    control.links.up.set_rate = record  # type: ignore[method-assign]
    return control, changes


async def test_the_limit_switches_at_each_boundary_and_across_the_week(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    # Friday 2026-12-11 18:00 in Berlin (UTC+1 in winter).
    wall = _wall("Europe/Berlin", datetime(2026, 12, 11, 17, 0, tzinfo=timezone.utc))
    async with trio.open_nursery() as nursery:
        control, changes = await _control("Mon-Fri 08:00,2M 19:00,off Sat-Sun 00:00,off", wall, tmp_path, nursery)
        assert control.links.up.rate == control.links.down.rate == 2 * MiB
        assert control.bandwidth()["next_change"] == "2026-12-11T19:00"
        await trio.sleep(3 * 86400)  # over the weekend to Monday 18:00
        nursery.cancel_scope.cancel()
    hours = [(t / 3600, rate) for t, rate in changes]
    # Off at 19:00 Friday (1 h in), on at 08:00 Monday (62 h in), exactly: the task sleeps to the boundary.
    assert hours == [(1.0, 0), (62.0, 2 * MiB)]


async def test_dst_spring_forward_a_boundary_in_the_skipped_hour_applies_at_the_jump(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    # 2027-03-28: Berlin's clocks go from 02:00 to 03:00. Start at 01:00 local (00:00 UTC).
    wall = _wall("Europe/Berlin", datetime(2027, 3, 28, 0, 0, tzinfo=timezone.utc))
    async with trio.open_nursery() as nursery:
        _, changes = await _control("00:00,1M 02:30,off 04:00,1M", wall, tmp_path, nursery)
        await trio.sleep(4 * 3600)
        nursery.cancel_scope.cancel()
    (off_at, off), (on_at, on) = changes
    assert off == 0 and on == MiB
    assert 3600 <= off_at <= 3600 + RECHECK_S  # at most a recheck after the jump (01:59 -> 03:00)
    assert on_at == 2 * 3600  # 04:00 CEST is two real hours after 01:00 CET


async def test_dst_fall_back_the_limit_follows_the_wall_clock_through_the_repeated_hour(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    # 2026-10-25: Berlin's clocks go from 03:00 back to 02:00. Start at 01:00 CEST (23:00 UTC).
    wall = _wall("Europe/Berlin", datetime(2026, 10, 24, 23, 0, tzinfo=timezone.utc))
    async with trio.open_nursery() as nursery:
        _, changes = await _control("00:00,off 02:30,1M 05:00,off", wall, tmp_path, nursery)
        await trio.sleep(5.5 * 3600)
        nursery.cancel_scope.cancel()
    times = [(t / 3600, rate) for t, rate in changes]
    # 02:30 is passed twice (1.5 h and 2.5 h in), and 05:00 is 5 real hours after 01:00 CEST.
    assert times[0] == (1.5, MiB)
    assert times[-1] == (5.0, 0)
    assert all(rate in (0, MiB) for _, rate in times)


async def test_a_reload_switches_kinds_of_limit_at_once_and_a_bad_file_keeps_the_old(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("bandwidth_limit_bps = 1048576\n")
    live = LiveSettings(Settings.load(config))
    control = DaemonControl(live, config, wall_now=_wall("UTC", datetime(2026, 12, 7, tzinfo=timezone.utc)))
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve)
        assert (control.links.shared.rate, control.links.up.rate) == (MiB, 0)
        config.write_text('bwlimit = "10M:1M"\nmax_active_jobs = 2\nauth_warn_days = [3]\n')
        answer = await control.reload()
        assert answer == {"changed": ["max_active_jobs", "bandwidth_limit_bps", "auth_warn_days", "bwlimit"],
                          "restart_needed": []}
        assert (control.links.shared.rate, control.links.up.rate, control.links.down.rate) == (0, 10 * MiB, MiB)
        assert live.current.max_active_jobs == 2
        config.write_text('bwlimit = "10M" \nbandwidth_limit_bps = 5\n')
        from dataeraid.errors import DataeraiError

        with pytest.raises(DataeraiError) as refused:
            await control.reload()
        assert refused.value.code == "invalid_argument"
        assert refused.value.message.startswith(f"{config}: bwlimit and bandwidth_limit_bps are both set")
        assert live.current.bwlimit == "10M:1M" and control.links.down.rate == MiB
        nursery.cancel_scope.cancel()


async def test_links_spend_through_the_direction_and_the_shared_link(autojump_clock: trio.testing.MockClock) -> None:
    links = Links(up_bps=MiB)
    up, down = links.join("a", "upload"), links.join("a", "download")
    start = trio.current_time()
    with trio.fail_after(1):
        await down.spend(100 * MiB)  # downloads are not limited
    for _ in range(8):
        await up.spend(MiB)
    assert trio.current_time() - start >= 6.5  # uploads are: 8 MiB at 1 MiB/s, less the burst
    links.set_rates(shared_bps=MiB, up_bps=0, down_bps=0)
    start = trio.current_time()
    for _ in range(4):
        await down.spend(MiB)
    assert trio.current_time() - start >= 2.5
    links.leave("a", "upload")
    links.leave("a", "download")


async def test_a_jobs_burst_is_the_quarter_second_of_the_tightest_link_that_limits_it() -> None:
    links = Links(up_bps=8 * MiB)
    up, down = links.join("a", "upload"), links.join("a", "download")
    assert down.burst_bytes() is None  # nothing limits downloads: their slices may be large
    assert up.burst_bytes() == 2 * MiB  # 8 MiB/s for a quarter second
    links.set_rates(shared_bps=MiB, up_bps=8 * MiB, down_bps=0)
    assert (up.burst_bytes(), down.burst_bytes()) == (MiB // 4, MiB // 4)  # the shared link is tighter
    links.set_rates(shared_bps=0, up_bps=0, down_bps=0)
    assert (up.burst_bytes(), down.burst_bytes()) == (None, None)
    links.leave("a", "upload")
    links.leave("a", "download")
