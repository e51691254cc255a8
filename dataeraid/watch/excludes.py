"""Which paths below a watched folder are left alone: a small rsync/gitignore-like pattern list.

A watch folder on an instrument PC also holds what is not data: files an
instrument or an editor is still writing under a temporary name, lock files,
what desktop shells leave behind. The user names them with patterns; a path
that one pattern matches is excluded. The rules, all of them:

- A pattern without ``/`` matches the *name* of any path segment with
  :func:`fnmatch.fnmatchcase`: ``*.tmp``, ``~$*``, ``.DS_Store``. ``*`` is any
  run of characters, ``?`` one character, ``[abc]`` / ``[!abc]`` a set.
- A pattern with ``/`` in it matches the whole path relative to the watched
  root, segment by segment: ``raw/*.tmp`` matches ``raw/a.tmp`` but not
  ``raw/x/a.tmp`` or ``old/raw/a.tmp``. Here ``*`` stays within one segment,
  and a segment that is exactly ``**`` matches zero or more whole segments:
  ``raw/**/*.tmp`` matches ``raw/a.tmp`` and ``raw/x/y/a.tmp``, ``**/cache``
  matches ``cache`` at any depth, and ``raw/**`` matches ``raw`` itself too
  (its whole subtree is excluded either way). ``**`` inside a longer segment is
  an ordinary ``*``.
- A trailing ``/`` matches directories only: ``build/`` excludes a directory
  named ``build`` but not a file of that name.
- An excluded directory excludes everything below it: :meth:`Excludes.excluded`
  is true for a path when a pattern matches it or any of its parent directories.
- Matching is case-sensitive (``Thumbs.db`` does not match ``thumbs.db``), and
  there are no escapes: ``\\`` is an ordinary character, ``[*]`` matches a
  literal ``*``. There is no negation (``!pattern``): order does not matter.
- A pattern must not be empty, hold a NUL, start with ``/`` (paths are relative
  to the root already), or have an empty, ``.`` or ``..`` segment, none of which
  any relative path can match; such a pattern is a ``ValueError`` naming it.

Nothing is excluded unless the caller passes it: there are no built-in names.
:data:`DEFAULT_EXCLUDES` is the list a watch uses when the user gives none.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Names of files still being written (browser downloads, office lock files,
#: editor swap files) and of what desktop shells leave in folders: a watch
#: uploads none of them unless its user asks it to.
DEFAULT_EXCLUDES: Final[tuple[str, ...]] = (
    "*.part",
    "*.partial",
    "*.crdownload",
    ".~lock.*#",
    "*.swp",
    "~$*",
    ".DS_Store",
    "Thumbs.db",
)

#: A path pattern's segment that matches any number of whole segments.
_ANY_SEGMENTS: Final = "**"


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One checked pattern: a name pattern (one segment) or a path pattern (several)."""

    text: str
    segments: tuple[str, ...]
    is_path: bool
    dirs_only: bool


def _compile(segment: str) -> re.Pattern[str] | None:
    """One segment's pattern as a regular expression (None for ``**``), exactly as
    :func:`fnmatch.fnmatchcase` would match it, compiled once instead of looked up per name."""
    return None if segment == _ANY_SEGMENTS else re.compile(fnmatch.translate(segment))


def _names_regex(patterns: Sequence[_Pattern]) -> re.Pattern[str] | None:
    """One expression for several name patterns, so that a name is matched once, not once a pattern."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p.segments[0])})" for p in patterns))


def _match_segments(patterns: Sequence[re.Pattern[str] | None], names: Sequence[str]) -> bool:
    """Whether ``names`` match ``patterns`` one to one, where a ``**`` (None) takes any number of names.

    The linear wildcard match with one backtracking point (the last ``**`` seen):
    every other pattern takes exactly one name, which is what makes going back
    only to the latest ``**`` enough.
    """
    p = n = 0
    star_p, star_n = -1, 0
    while n < len(names):
        if p < len(patterns):
            pattern = patterns[p]
            if pattern is None:
                star_p, star_n = p, n
                p += 1
                continue
            if pattern.match(names[n]) is not None:
                p += 1
                n += 1
                continue
        if star_p < 0:
            return False
        # The latest ** takes one more name, and the rest is tried again after it.
        star_n += 1
        p, n = star_p + 1, star_n
    return all(pattern is None for pattern in patterns[p:])


def _parse(pattern: str) -> _Pattern:
    if not isinstance(pattern, str):
        raise ValueError(f"an exclude pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise ValueError("an exclude pattern must not be empty")
    if "\x00" in pattern:
        raise ValueError(f"the exclude pattern {pattern!r} must not hold a NUL")
    if pattern.startswith("/"):
        raise ValueError(f"the exclude pattern {pattern!r} must be relative to the watched folder "
                         "(no leading `/`)")
    dirs_only = pattern.endswith("/")
    body = pattern[:-1] if dirs_only else pattern
    segments = tuple(body.split("/"))
    for segment in segments:
        if segment == "":
            raise ValueError(f"the exclude pattern {pattern!r} must not have empty segments (`//`)")
        if segment in (".", ".."):
            raise ValueError(f"the exclude pattern {pattern!r} must not have `.` or `..` segments: "
                             "no relative path has them")
    return _Pattern(pattern, segments, is_path=len(segments) > 1, dirs_only=dirs_only)


class Excludes:
    """A checked list of exclude patterns (the rules are in this module's docstring)."""

    __slots__ = ("_any_name", "_dir_name", "_dir_paths", "_paths", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        """Check every pattern; ``ValueError`` names the first that is invalid."""
        if isinstance(patterns, str):
            raise ValueError("exclude patterns must be a list of strings, not one string")
        parsed = [_parse(pattern) for pattern in patterns]
        #: The patterns as given, in order.
        self.patterns: tuple[str, ...] = tuple(p.text for p in parsed)
        names = [p for p in parsed if not p.is_path]
        self._any_name = _names_regex([p for p in names if not p.dirs_only])
        self._dir_name = _names_regex([p for p in names if p.dirs_only])
        compiled = [(p.dirs_only, tuple(_compile(segment) for segment in p.segments)) for p in parsed if p.is_path]
        self._paths = tuple(segments for dirs_only, segments in compiled if not dirs_only)
        self._dir_paths = tuple(segments for dirs_only, segments in compiled if dirs_only)

    def __repr__(self) -> str:
        return f"Excludes({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Excludes) and self.patterns == other.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def matches(self, rel: str, is_dir: bool) -> bool:
        """Whether a pattern matches ``rel`` itself, not looking at its parent directories.

        What a walk asks of each entry: it never enters an excluded directory, so
        the parents of what it finds were already asked about.
        """
        name = rel.rpartition("/")[2]
        if self._any_name is not None and self._any_name.match(name) is not None:
            return True
        if is_dir and self._dir_name is not None and self._dir_name.match(name) is not None:
            return True
        if self._paths or (is_dir and self._dir_paths):
            names = rel.split("/")
            if any(_match_segments(segments, names) for segments in self._paths):
                return True
            if is_dir and any(_match_segments(segments, names) for segments in self._dir_paths):
                return True
        return False

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` (``/``-separated, relative to the root; ``is_dir`` if it is a
        directory) is excluded: a pattern matches it or one of its parent directories."""
        if not self.patterns:
            return False
        cut = rel.find("/")
        while cut != -1:
            if self.matches(rel[:cut], True):
                return True
            cut = rel.find("/", cut + 1)
        return self.matches(rel, is_dir)
