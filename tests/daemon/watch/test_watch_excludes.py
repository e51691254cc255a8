"""Exclude patterns: names, whole paths with ``**``, directories only, subtrees, invalid patterns."""

from __future__ import annotations

import itertools
from fnmatch import fnmatchcase

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dataeraid.watch.excludes import DEFAULT_EXCLUDES, Excludes

# Small alphabets, so that generated patterns and paths often meet.
names = st.sampled_from(["a", "b", "ab", "a.tmp", "x.part", ".DS_Store", "~$doc", "raw"])
rels = st.lists(names, min_size=1, max_size=6).map("/".join)
segment_patterns = st.sampled_from(["a", "b", "*", "?", "a*", "*.tmp", "[ab]", "[!a]*", "raw", "**"])


def _oracle(pattern_segments: list[str], rel: str) -> bool:
    """A path pattern matched the slow, obvious way: every way of letting each ``**`` stand
    for some number of ``*`` segments, then one name per segment."""
    names_ = rel.split("/")
    stars = [i for i, s in enumerate(pattern_segments) if s == "**"]
    for counts in itertools.product(range(len(names_) + 1), repeat=len(stars)):
        expanded: list[str] = []
        for i, segment in enumerate(pattern_segments):
            expanded.extend(["*"] * counts[stars.index(i)] if segment == "**" else [segment])
        if len(expanded) == len(names_) and all(fnmatchcase(n, p) for n, p in zip(names_, expanded, strict=True)):
            return True
    return False


@given(pattern=st.lists(segment_patterns, min_size=2, max_size=4), rel=rels)
@example(pattern=["raw", "**"], rel="raw")  # ** may stand for nothing, at the end too
@example(pattern=["**", "a", "**", "b"], rel="a/a/x/b")  # the second ** must take over after a false start
def test_a_path_pattern_matches_exactly_what_expanding_its_double_stars_matches(pattern: list[str], rel: str) -> None:
    assert Excludes(["/".join(pattern)]).matches(rel, is_dir=False) == _oracle(pattern, rel)


@given(pattern=segment_patterns.filter(lambda p: p != "**"), rel=rels)
def test_a_name_pattern_matches_any_segment_and_equals_its_double_star_path_form(pattern: str, rel: str) -> None:
    by_name = Excludes([pattern])
    segments = rel.split("/")
    assert by_name.excluded(rel, is_dir=False) == any(fnmatchcase(s, pattern) for s in segments)
    # "NAME" matches the entry itself exactly where "**/NAME" does.
    assert by_name.matches(rel, is_dir=False) == Excludes([f"**/{pattern}"]).matches(rel, is_dir=False)


any_pattern = st.tuples(
    st.one_of(segment_patterns, st.lists(segment_patterns, min_size=2, max_size=3).map("/".join)), st.booleans(),
).map(lambda p: p[0] + "/" if p[1] else p[0])


@given(patterns=st.lists(any_pattern, max_size=4), directory=rels, below=rels, is_dir=st.booleans())
def test_everything_below_an_excluded_directory_is_excluded(
    patterns: list[str], directory: str, below: str, is_dir: bool
) -> None:
    excludes = Excludes(patterns)
    if excludes.excluded(directory, is_dir=True):
        assert excludes.excluded(f"{directory}/{below}", is_dir)


@given(pattern=segment_patterns, rel=rels)
def test_a_trailing_slash_matches_directories_only(pattern: str, rel: str) -> None:
    dirs_only = Excludes([pattern + "/"])
    assert not dirs_only.matches(rel, is_dir=False)
    assert dirs_only.matches(rel, is_dir=True) == Excludes([pattern]).matches(rel, is_dir=True)


@given(patterns=st.lists(st.text(max_size=12), max_size=4), rel=st.text(min_size=1, max_size=40), is_dir=st.booleans())
def test_any_pattern_is_taken_or_refused_with_value_error_and_matching_never_raises(
    patterns: list[str], rel: str, is_dir: bool
) -> None:
    try:
        excludes = Excludes(patterns)
    except ValueError as exc:
        assert "pattern" in str(exc)
        return
    assert isinstance(excludes.excluded(rel, is_dir), bool)


@pytest.mark.parametrize(("pattern", "words"), [
    ("", "must not be empty"),
    ("a\x00b", "NUL"),
    ("/raw/*.tmp", "relative"),
    ("/", "relative"),
    ("raw//x", "empty segments"),
    ("raw/../x", "`..`"),
    ("./x", "`.`"),
])
def test_an_invalid_pattern_is_a_value_error_that_says_what_is_wrong(pattern: str, words: str) -> None:
    with pytest.raises(ValueError, match="exclude pattern") as caught:
        Excludes(["*.ok", pattern])
    assert words in str(caught.value)


def test_one_string_instead_of_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match="list"):
        Excludes("*.tmp")


@pytest.mark.parametrize(("rel", "is_dir", "expected"), [
    ("run1/tile.tif.part", False, True),
    ("run1/download.crdownload", False, True),
    ("docs/.~lock.report.odt#", False, True),
    (".notes.txt.swp", False, True),
    ("reports/~$budget.xlsx", False, True),
    ("S0042/.DS_Store", False, True),
    ("S0042/Thumbs.db", False, True),
    ("S0042/thumbs.db", False, False),  # case-sensitive
    ("S0042/run007/tile_0001.tif", False, False),
    ("S0042/partial/tile.tif", False, False),
    ("old.partial", False, True),
])
def test_the_default_excludes_leave_out_files_still_being_written(rel: str, is_dir: bool, expected: bool) -> None:
    assert Excludes(DEFAULT_EXCLUDES).excluded(rel, is_dir) is expected


def test_the_documented_examples() -> None:
    excludes = Excludes(["raw/**/*.tmp", "build/", "cache/x", "*.bak"])
    assert excludes.excluded("raw/a.tmp", False)
    assert excludes.excluded("raw/x/y/a.tmp", False)
    assert not excludes.excluded("old/raw/a.tmp", False)  # anchored at the root
    assert not excludes.excluded("raw/a.tmpx", False)
    assert excludes.excluded("build", True)
    assert excludes.excluded("src/build/out.o", False)  # below an excluded directory
    assert not excludes.excluded("src/build", False)  # a file named build
    assert excludes.excluded("cache/x/deep/file", False)
    assert not excludes.excluded("cache/xy", False)
    assert excludes.excluded("a/b/c.bak", False)
    assert excludes.excluded("a/b.bak/c", False)  # b.bak is a parent directory
    assert Excludes(["raw/**"]).excluded("raw", True)
    assert not Excludes([]).excluded("anything", False)
    assert Excludes(["a*b"]).patterns == ("a*b",)
    assert Excludes(["a", "b/"]) == Excludes(["a", "b/"]) != Excludes(["a"])
