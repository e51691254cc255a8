"""Relative POSIX paths (of assets, and of the files inside a content) and path globs.

One set of rules for every path the server stores, so that whatever a client
restores from them stays inside its destination: :func:`dataerai.contract.path_problem`,
the same rules the daemon checks what it writes against (a server is not to be trusted
blindly), so a well-behaved server's answers pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from dataerai.contract import MAX_FILES_PER_CONTENT
from dataerai.contract import MAX_PATH_LENGTH as MAX_PATH_LENGTH
from dataerai.contract import path_problem as path_problem

#: The most files one content (one upload session) may list.
MAX_FILES: Final = MAX_FILES_PER_CONTENT


def is_valid_path(path: str) -> bool:
    return path_problem(path) is None


def manifest_problem(paths: Sequence[str]) -> str | None:
    """What is wrong with ``paths`` as the files of one content, or None.

    The paths (each already valid, see :func:`path_problem`) must be at most
    :data:`MAX_FILES`, each listed once, and no file may also be a directory of
    another (``a`` and ``a/b``): such a tree cannot be written to a disk.
    """
    if len(paths) > MAX_FILES:
        return f"may list at most {MAX_FILES} files"
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            return f"lists {path!r} twice"
        seen.add(path)
    for path in paths:
        # Every proper prefix that ends at a `/` is a directory of this file.
        for cut in (i for i, char in enumerate(path) if char == "/"):
            if path[:cut] in seen:
                return f"lists {path[:cut]!r} as a file and as a directory of {path!r}"
    return None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex for a path glob, matched against whole paths.

    As DANDI's asset globs: ``*`` matches within one segment (never ``/``), ``**``
    matches across segments, ``?`` one character other than ``/``, ``[abc]`` and
    ``[!abc]`` a character class; everything else is literal. ``**/`` also matches
    no directory at all, so ``**/*.nwb`` finds ``a.nwb`` as well as ``x/y/a.nwb``.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and (end := _class_end(pattern, i)) is not None:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\").replace("^", "\\^") + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_end(pattern: str, start: int) -> int | None:
    """The index of the ``]`` closing the class opened at ``start``, or None (then ``[`` is literal)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "!":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a `]` first in the class is a member, as in fnmatch
    end = pattern.find("]", i)
    return None if end < 0 else end


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard: every match starts with it."""
    match = re.search(r"[*?\[]", pattern)
    return pattern if match is None else pattern[: match.start()]
