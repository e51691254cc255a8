"""The words a watch is configured with: parsed strictly, printed back the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.watch import rules


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0), ("250ms", 0.25),
    ("1.5s", 1.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert rules.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "-3", "1h-5m", "inf", "nan", "5 m"])
def test_bad_durations_say_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError):
        rules.parse_duration(text)


@given(st.integers(min_value=0, max_value=10 * 86400))
def test_a_whole_duration_prints_back_to_itself(seconds: int) -> None:
    assert rules.parse_duration(rules.format_duration(float(seconds))) == seconds


@given(st.text(max_size=40))
def test_any_text_is_a_rule_or_a_value_error(text: str) -> None:
    try:
        rule = rules.parse_complete_when(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert rules.parse_complete_when(str(rule)) == rule


def test_completion_rules() -> None:
    assert rules.parse_complete_when("close") == rules.CompleteWhen("close")
    assert str(rules.parse_complete_when("stable:90s")) == "stable:1m30s"
    assert rules.parse_complete_when("sentinel:DONE").sentinel == "DONE"
    for bad in ("close:5", "stable", "stable:0", "stable:8d", "sentinel:", "sentinel:a/b", "sentinel:..", "soon"):
        with pytest.raises(ValueError):
            rules.parse_complete_when(bad)


def test_after_upload_actions() -> None:
    assert str(rules.parse_after_upload("keep")) == "keep"
    assert str(rules.parse_after_upload("delete")) == "delete"
    assert rules.parse_after_upload("move:/data/done/", "/data/in").target == "/data/done"
    for bad in ("move:", "move:relative", "remove", "keep:x"):
        with pytest.raises(ValueError):
            rules.parse_after_upload(bad, "/data/in")
    with pytest.raises(ValueError, match="outside the watched folder"):
        rules.parse_after_upload("move:/data/in/done", "/data/in")


def test_free_space() -> None:
    assert rules.parse_free_space("20G").bytes == 20 << 30
    assert rules.parse_free_space("512MiB").bytes == 512 << 20
    assert rules.parse_free_space("15%").wanted(1000) == 150
    for bad in ("", "0", "100%", "-5G", "12 parsecs", "5GB!"):
        with pytest.raises(ValueError):
            rules.parse_free_space(bad)


@given(st.text(max_size=20))
def test_any_text_is_a_free_space_or_a_value_error(text: str) -> None:
    try:
        free = rules.parse_free_space(text)
    except ValueError:
        return
    assert free.bytes > 0 or 0 < free.percent < 100
