"""Transfer windows (dataeraid/windows.py): the grammar, and "is it open at t / when does it
next open or close", in local time across daylight-saving changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataeraid import windows
from dataeraid.watch.config import WatchConfig, check_params
from dataeraid.windows import DAY_NAMES, WindowError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.timezone.utc
ZONES = st.sampled_from([UTC, BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")])
#: 2024 to 2030, whole seconds: the instants the scheduler asks about.
INSTANTS = st.integers(1_704_067_200, 1_893_456_000).map(float)


def at(zone: dt.tzinfo, *args: int) -> float:
    return dt.datetime(*args, tzinfo=zone).timestamp()  # type: ignore[misc, arg-type]


def wall(t: float, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(t, zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")


# --- the grammar -------------------------------------------------------------------------

HHMM = st.tuples(st.integers(0, 23), st.integers(0, 59))
DAYS = st.one_of(st.none(), st.tuples(st.sampled_from(DAY_NAMES), st.one_of(st.none(), st.sampled_from(DAY_NAMES))))


@st.composite
def span_texts(draw: st.DrawFn) -> tuple[str, windows.Span]:
    start = draw(HHMM)
    end = draw(st.one_of(HHMM, st.just((24, 0))).filter(lambda e: e != start))
    days = draw(DAYS)
    text = f"{start[0]:02d}:{start[1]:02d}-{end[0]:02d}:{end[1]:02d}"
    if days is None:
        day_set = frozenset(range(7))
    else:
        first, last = days
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if last else a
        day_set = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
        name = draw(st.sampled_from([first, first.title(), first.upper()]))
        text = f"{name}{'-' + last.title() if last else ''} {text}"
    return text, windows.Span(day_set, start[0] * 60 + start[1], end[0] * 60 + end[1])


@given(st.lists(span_texts(), min_size=1, max_size=4), st.sampled_from([",", ", ", " , "]))
def test_every_window_the_grammar_allows_parses_to_its_spans(spans: list[tuple[str, windows.Span]],
                                                            comma: str) -> None:
    text = comma.join(t for t, _ in spans)
    parsed = windows.parse(text)
    assert parsed.spans == tuple(s for _, s in spans)
    assert parsed.text == text
    assert windows.problem(text) is None


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_with_a_window_error(text: str) -> None:
    try:
        windows.parse(text)
    except WindowError as exc:
        assert str(exc) and windows.problem(text) == str(exc)


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("20:00", "not a span"),
    ("25:00-06:00", "not a time of day"),
    ("20:60-06:00", "not a time of day"),
    ("24:00-06:00", "24:00 only ends a span"),
    ("08:00-08:00", "same time"),
    ("Mon-Fri", "not a span"),
    ("Mo 20:00-06:00", "not a span"),
    ("Xyz 20:00-06:00", "not a day"),
    ("20:00-06:00,", "not a span"),
    ("Mon-Fri 8:00-18:00", "not a span"),
    ("x" * 201, "at most 200"),
])
def test_a_wrong_window_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(WindowError, match=says):
        windows.parse(text)


# --- open, next opening, next closing -------------------------------------------------------

def test_a_night_window_wraps_midnight_and_belongs_to_the_day_it_opens() -> None:
    w = windows.parse("Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00")
    thursday_noon = at(BERLIN, 2026, 12, 3, 12, 0)
    assert not w.is_open(thursday_noon, BERLIN)
    assert w.next_open(thursday_noon, BERLIN) == at(BERLIN, 2026, 12, 3, 20, 0)
    assert w.is_open(at(BERLIN, 2026, 12, 4, 5, 59), BERLIN)  # Friday morning: Thursday's night
    assert w.next_close(at(BERLIN, 2026, 12, 3, 23, 0), BERLIN) == at(BERLIN, 2026, 12, 4, 6, 0)
    # Friday night runs into the weekend, whose last span ends at Monday 00:00.
    assert w.next_close(at(BERLIN, 2026, 12, 4, 21, 0), BERLIN) == at(BERLIN, 2026, 12, 7, 0, 0)
    # A day range may wrap the week.
    assert windows.parse("Sat-Mon 10:00-11:00").spans[0].days == frozenset({5, 6, 0})


def test_a_window_open_all_week_never_closes() -> None:
    assert windows.parse("00:00-24:00").next_close(at(UTC, 2026, 1, 1), UTC) is None
    assert windows.parse("Mon-Sun 12:00-12:01,12:01-12:00").next_close(at(UTC, 2026, 1, 1), UTC) is None


@given(st.lists(span_texts(), min_size=1, max_size=3), INSTANTS, ZONES)
def test_the_next_opening_is_open_and_nothing_before_it_is(spans: list[tuple[str, windows.Span]], t: float,
                                                           zone: dt.tzinfo) -> None:
    w = windows.parse(",".join(text for text, _ in spans))
    opens = w.next_open(t, zone)
    assert opens >= t
    assert w.is_open(opens, zone), wall(opens, zone)
    assert opens - t <= 8 * 86400
    # Closed all the way to the opening (probed evenly, and the second before it).
    if opens > t:
        for probe in [t + k * (opens - t) // 64 for k in range(64)] + [opens - 1]:
            assert not w.is_open(probe, zone), (wall(probe, zone), wall(opens, zone))
    closes = w.next_close(t, zone)
    if closes is not None:
        assert closes >= t and not w.is_open(closes, zone)
        if closes > t:
            for probe in [t + k * (closes - t) // 64 for k in range(64)] + [closes - 1]:
                assert w.is_open(probe, zone), (wall(probe, zone), wall(closes, zone))


# --- daylight-saving changes -----------------------------------------------------------------

def test_a_window_keeps_its_wall_clock_time_across_a_dst_change() -> None:
    w = windows.parse("20:00-06:00")
    # Berlin leaves summer time on 2026-10-25: the night is an hour longer, the window still 20:00-06:00.
    saturday = at(BERLIN, 2026, 10, 24, 12, 0)
    assert wall(w.next_open(saturday, BERLIN), BERLIN).endswith("20:00:00 CEST")
    night = w.next_open(saturday, BERLIN)
    closes = w.next_close(night, BERLIN)
    assert closes is not None and wall(closes, BERLIN) == "Sun 2026-10-25 06:00:00 CET"
    assert closes - night == 11 * 3600  # 10 h of wall clock, and the hour the clock repeats


def test_a_window_that_opens_in_the_skipped_hour_opens_when_the_clock_jumps() -> None:
    # New York skips 02:00-03:00 on 2026-03-08.
    w = windows.parse("02:30-05:00")
    opens = w.next_open(at(NEW_YORK, 2026, 3, 8, 0, 0), NEW_YORK)
    assert wall(opens, NEW_YORK) == "Sun 2026-03-08 03:00:00 EDT"
    assert opens == dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC).timestamp()


def test_a_window_closing_in_the_repeated_hour_closes_on_the_first_pass_and_reopens_on_the_second() -> None:
    # New York repeats 01:00-02:00 on 2026-11-01.
    w = windows.parse("00:00-01:30")
    start = at(NEW_YORK, 2026, 11, 1, 0, 10)
    first_close = w.next_close(start, NEW_YORK)
    assert first_close is not None and wall(first_close, NEW_YORK) == "Sun 2026-11-01 01:30:00 EDT"
    reopens = w.next_open(first_close, NEW_YORK)
    assert wall(reopens, NEW_YORK) == "Sun 2026-11-01 01:00:00 EST"  # the wall clock reads 01:00 again
    assert reopens - first_close == 30 * 60


def test_the_local_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert str(windows.local_zone()) == "Europe/Berlin"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert windows.local_zone() is not None


def test_a_watch_keeps_its_window_and_gives_it_to_its_config(tmp_path: Path) -> None:
    params = check_params(str(tmp_path), {"project_id": "prj_00000000", "window": "Mon-Fri 20:00-06:00"},
                          events_usable=True)
    assert params["window"] == "Mon-Fri 20:00-06:00"
    row = {"watch_id": "wat_00000000", "root": str(tmp_path), "params": params}
    assert WatchConfig.from_row(row).transfer_window == "Mon-Fri 20:00-06:00"
    assert check_params(str(tmp_path), {"project_id": "prj_00000000"}, events_usable=True)["window"] is None
    with pytest.raises(ValueError, match=r"^window: .*not a time of day"):
        check_params(str(tmp_path), {"project_id": "prj_00000000", "window": "20:00-25:00"}, events_usable=True)


def test_the_timetable_reads_the_clock_in_the_windows_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # TZ changed without time.tzset(): the C library's idea of local time (what a bare
    # datetime.now() gives) stays behind, and the timetable must follow the windows' zone anyway.
    from dataeraid.control import local_wall_now

    far = "Pacific/Kiritimati"  # UTC+14: never the machine's own zone
    monkeypatch.setenv("TZ", far)
    expected = dt.datetime.now(ZoneInfo(far)).replace(tzinfo=None)
    got = local_wall_now()
    assert got.tzinfo is None
    assert abs((got - expected).total_seconds()) < 60
    assert windows.local_zone().utcoffset(dt.datetime.now()) == dt.timedelta(hours=14)
