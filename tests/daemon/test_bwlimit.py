"""The bwlimit timetable: rclone's grammar, errors that point at the column, and what is in force when."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.bwlimit import DAY_NAMES, OFF, BwlimitError, Limit, Slot, Timetable, format_size, week_minute
from dataeraid.config import Settings

KiB, MiB = 1024, 1024 * 1024
MONDAY = datetime(2026, 12, 7)  # a Monday


def test_the_issue_example() -> None:
    table = Timetable.parse("Mon-Fri 08:00,2M 19:00,off Sat-Sun 00:00,off")
    assert table.limit_at(MONDAY + timedelta(hours=8)) == Limit(2 * MiB, 2 * MiB)
    assert table.limit_at(MONDAY + timedelta(hours=7, minutes=59)) == OFF  # wraps from Sunday's slot
    assert table.limit_at(MONDAY + timedelta(days=4, hours=18, minutes=59)) == Limit(2 * MiB, 2 * MiB)
    assert table.limit_at(MONDAY + timedelta(days=5, hours=12)) == OFF
    assert table.next_change(MONDAY + timedelta(hours=9, seconds=30)) == (MONDAY + timedelta(hours=19), OFF)
    # Friday evening: the next change is Monday morning, across the weekend.
    assert table.next_change(MONDAY + timedelta(days=4, hours=20)) == (MONDAY + timedelta(days=7, hours=8),
                                                                        Limit(2 * MiB, 2 * MiB))


@pytest.mark.parametrize(("text", "limit"), [
    ("10M", Limit(10 * MiB, 10 * MiB)),
    ("666", Limit(666 * KiB, 666 * KiB)),  # a bare number is KiB/s, as in rclone
    ("0", OFF), ("off", OFF), ("OFF", OFF),
    ("10M:100k", Limit(10 * MiB, 100 * KiB)),
    ("10M:off", Limit(10 * MiB, 0)),
    ("0.5M", Limit(MiB // 2, MiB // 2)),
    ("1000b", Limit(1000, 1000)), ("2MiB", Limit(2 * MiB, 2 * MiB)), ("1g", Limit(1024 * MiB, 1024 * MiB)),
])
def test_a_plain_rate_holds_all_week(text: str, limit: Limit) -> None:
    table = Timetable.parse(text)
    assert table.is_constant and table.next_change(MONDAY) is None
    assert table.limit_at(MONDAY + timedelta(days=3, hours=5)) == limit


def test_rclone_forms_slots_without_a_day_are_every_day_and_a_later_slot_replaces() -> None:
    table = Timetable.parse("08:00,512k 12:00,10M 23:00,off")
    assert len(table.slots) == 21
    assert table.limit_at(MONDAY + timedelta(days=2, hours=12, minutes=30)).up == 10 * MiB
    assert table.limit_at(MONDAY + timedelta(days=2, hours=3)) == OFF
    # rclone's weekday-prefixed slots, semicolons as separators, and the same minute given twice.
    table = Timetable.parse("Mon-00:00,512;Fri-23:59,10M  Sat-10:00,1M Sun-20:00,off Sun-20:00,1k")
    assert [str(s) for s in table.slots] == ["Mon-00:00,512k", "Fri-23:59,10M", "Sat-10:00,1M", "Sun-20:00,1k"]
    # Days wrap: Fri-Mon is Friday to Monday.
    table = Timetable.parse("Fri-Mon 00:00,1M")
    assert {DAY_NAMES[s.day] for s in table.slots} == {"Fri", "Sat", "Sun", "Mon"}


@pytest.mark.parametrize(("text", "column", "words"), [
    ("", 1, "empty"),
    ("Mox 08:00,1M", 1, "'Mox'"),
    ("Mon-Fri 08:00,2M 19:00,2X", 24, "'2X' is not a rate"),
    ("Mon-Fri 24:00,2M", 9, "not a time of day"),
    ("Mon-Fri 8h,2M", 9, "not a time"),
    ("Mon-Fri Sat 08:00,1M", 1, "no HH:MM,RATE slot after it"),
    ("08:00,1M Sun", 10, "no HH:MM,RATE slot after it"),
    ("Mox-08:00,1M", 1, "'Mox' is not a day"),
    ("08:00,0.0001b", 7, "under 1 byte"),
    ("08:00,2000000000000", 7, "over 1 PiB"),
    ("1M:2M:3M", 4, "not a rate"),
])
def test_bad_input_names_the_column(text: str, column: int, words: str) -> None:
    with pytest.raises(BwlimitError) as caught:
        Timetable.parse(text)
    assert caught.value.column == column, str(caught.value)
    assert words in str(caught.value) and f"at column {column}:" in str(caught.value)


def test_a_bad_timetable_or_both_limits_refuse_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('bwlimit = "Mon-Fri 08:00,2Q"\n')
    with pytest.raises(ValueError, match=r"config.toml: bwlimit 'Mon-Fri 08:00,2Q': at column 15: '2Q' is not"):
        Settings.load(config)
    config.write_text('bwlimit = "10M"\nbandwidth_limit_bps = 1000\n')
    with pytest.raises(ValueError, match="bwlimit and bandwidth_limit_bps are both set"):
        Settings.load(config)
    config.write_text("bwlimit = 10\n")
    with pytest.raises(ValueError, match="bwlimit must be a string"):
        Settings.load(config)
    config.write_text('bwlimit = "Sat-Sun 00:00,off 06:00,1M:off"\n')
    expected = Timetable.parse("Sat 00:00,off Sat-06:00,1M:off Sun 00:00,off 06:00,1M:off")
    assert Settings.load(config).timetable == expected


rates = st.one_of(st.just(0), st.integers(1, 2**40))
limits = st.builds(Limit, rates, rates)
slots = st.builds(Slot, st.integers(0, 6), st.integers(0, 1439), limits)
timetables = st.lists(slots, min_size=1, max_size=12, unique_by=lambda s: (s.day, s.minute)).map(
    lambda found: Timetable(tuple(sorted(found))))
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


@given(timetables)
def test_what_it_writes_reads_back_the_same(table: Timetable) -> None:
    again = Timetable.parse(str(table))
    if table.is_constant:
        assert again.is_constant and again.slots[0].limit == table.slots[0].limit
    else:
        assert again == table


@given(st.integers(0, 2**50))
def test_sizes_read_back(rate: int) -> None:
    assert Timetable.parse(format_size(rate)).slots[0].limit == Limit(rate, rate)


@given(timetables, times)
def test_the_limit_is_the_last_slot_before_and_changes_exactly_at_next_change(table: Timetable, when: datetime) -> None:
    minute = week_minute(when)
    before = [s for s in table.slots if s.week_minute <= minute]
    assert table.limit_at(when) == (before or table.slots)[-1].limit
    found = table.next_change(when)
    if found is None:
        assert table.is_constant
        return
    at, limit = found
    assert when < at <= when + timedelta(days=7)
    assert table.limit_at(at) == limit != table.limit_at(when)
    assert table.limit_at(at - timedelta(minutes=1)) == table.limit_at(when)


@given(st.text(alphabet="MonFriSat-0123456789:,kMGoffb ;", max_size=40))
def test_any_text_parses_or_raises_a_bwlimit_error_with_a_column_inside_it(text: str) -> None:
    try:
        Timetable.parse(text)
    except BwlimitError as exc:
        # One past the end for what is missing at the end ('0:' lacks its download rate: column 3).
        assert 1 <= exc.column <= len(text) + 1


def test_every_setting_is_either_live_or_named_as_needing_a_restart_in_the_docs() -> None:
    from dataeraid.config import RESTART_KEYS

    names = Settings.keys()
    assert RESTART_KEYS.issubset(names)
    section = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text().split(
        "### Reloading config.toml", 1)[1]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    for key in names:
        named = f"`{key}`" in table or (key.startswith(("health_", "alert_")) and "`health_*`" in table)
        assert named, f"{key} is not in the reload table of docs/configuration.md"
