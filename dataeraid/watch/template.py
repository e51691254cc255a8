"""An uploaded file's title, description, tags and metadata, filled in from its path.

An instrument PC writes files whose paths already say what they are
(``S0042/run007/tile_0001.tif``: sample S0042, run 7); a template turns that into
the asset's fields, so nobody types them. A template is a TOML table (the CLI
reads the file with :func:`load_template_file`; the daemon gets the parsed table
as JSON), checked whole by :meth:`Template.from_dict` before any file is seen::

    title = "{stem}"
    description = "Run {match.run} of sample {match.sample} on {host}"
    tags = ["raw", "{parent}", "sample-{match.sample}"]
    [match]
    pattern = '(?P<sample>S\\d+)/run(?P<run>\\d+)'
    required = false
    [metadata]
    instrument = "microscope-3"
    sample = "{match.sample}"
    acquired = "{mtime:%Y-%m-%dT%H:%M:%S}"

The keys, all optional: ``title`` (default ``"{name}"``), ``description``, ``tags``
(a list of strings), ``match`` (``pattern``: a regular expression that
:func:`re.search` looks for in the file's path relative to the watched folder;
``required``: when true, a file whose path does not match is not uploaded but
quarantined, :meth:`Template.render` raising ``TemplateError`` with code
``template_mismatch``), and ``metadata`` (a table whose string values are rendered,
at any depth, in nested tables and arrays; numbers and booleans are kept as they
are; keys are not rendered). Any other key is an error.

The placeholders, and no others (``{{`` and ``}}`` write a literal brace); for the
file ``S0042/run007/tile_0001.tif``:

=====================  ===================================================  ==========================
``{path}``             the path relative to the watched folder              ``S0042/run007/tile_0001.tif``
``{name}``             the file's name                                      ``tile_0001.tif``
``{stem}``             the name without its suffix                          ``tile_0001``
``{suffix}``           the last ``.`` and what follows it (a name that      ``.tif``
                       starts with its only dot has none)
``{parent}``           the name of the directory holding the file           ``run007``
                       (empty at the top of the folder)
``{parents[N]}``       the N-th directory up from the file, 0 the parent    ``{parents[1]}`` is ``S0042``
                       (empty where the path is not that deep)
``{dir}``              the path of the directory holding the file           ``S0042/run007``
``{mtime}``            the file's modification time, local, ISO 8601        ``2024-05-01T14:03:09+02:00``
``{mtime:FORMAT}``     the same in a :func:`time.strftime` format           ``{mtime:%Y-%m-%d}``
``{host}``             this machine's name (given by the daemon)            ``microscope-pc``
``{match.NAME}``       the pattern's named group NAME (empty when the       ``{match.sample}`` is ``S0042``
                       pattern did not match or the group took no part)
=====================  ===================================================  ==========================

Only ``{mtime}`` takes a format, and no placeholder takes a conversion (``!r``).

**Never str.format.** A template comes from a user, and ``str.format`` would let
``{path.__class__.__mro__}`` reach any object behind a value. Templates are
split with :meth:`string.Formatter.parse` and only the names above are
substituted, by this module, from plain strings.

**Limits.** What a template renders must be what the daemon's ``upload.start``
takes (its parameter specs, in dataeraid/rpc/params.py, built on the contract's
limits): a title that is not blank and at most ``MAX_TITLE_LENGTH`` characters,
tags of at most ``MAX_TAG_LENGTH`` and at most ``MAX_TAGS`` of them, metadata of
at most ``MAX_METADATA_BYTES`` as JSON and ``MAX_METADATA_DEPTH`` deep, and text
without control characters. A rendering that breaks one is a ``TemplateError``
(code ``template_render``) naming the key. A tag that renders empty is left out,
and a tag that renders like an earlier one (after NFC normalisation, as the
repository compares tags) is not repeated.
"""

from __future__ import annotations

import copy
import math
import posixpath
import re
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from dataerai import contract

from dataeraid.rpc.params import FREE_TEXT, TAGS, TITLE, Invalid, JsonObject

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATE_KEYS: Final = ("title", "description", "tags", "match", "metadata")
MATCH_KEYS: Final = ("pattern", "required")
#: The placeholders without an argument, in the order the documentation lists them.
SIMPLE_PLACEHOLDERS: Final = ("path", "name", "stem", "suffix", "parent", "dir", "mtime", "host")
PLACEHOLDERS_HELP: Final = ("{path}, {name}, {stem}, {suffix}, {parent}, {parents[N]}, {dir}, {mtime}, "
                            "{mtime:FORMAT}, {host}, {match.NAME}")
DEFAULT_TITLE: Final = "{name}"
#: ``{parents[N]}``: N has at most this many digits (no path is deeper than its length).
_MAX_PARENT_DIGITS: Final = 4
_PARENTS: Final = re.compile(rf"parents\[([0-9]{{1,{_MAX_PARENT_DIGITS}}})\]")
#: A time every strftime format is tried on when the template is checked.
_SAMPLE_TIME: Final = datetime(2024, 5, 1, 14, 3, 9).astimezone()

_METADATA_CHECK: Final = JsonObject()


class TemplateError(ValueError):
    """A template that cannot be used, or a file it cannot render; the message names the key.

    ``code`` says which: ``template_invalid`` (the template itself, found before any
    file is seen), ``template_mismatch`` (``match.required`` and the path does not
    match: the watch quarantines the file), ``template_render`` (what it rendered for
    this file breaks a limit).
    """

    def __init__(self, message: str, code: str = "template_invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Rendered:
    """What a template made of one file: the fields of its upload."""

    title: str
    description: str | None
    tags: list[str]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Field:
    """One placeholder: ``kind`` is a name of :data:`SIMPLE_PLACEHOLDERS`, ``parents`` or
    ``match``; ``arg`` the ancestor's number, the group's name or the time format."""

    kind: str
    arg: int | str | None = None


_Part = str | _Field


@dataclass(frozen=True, slots=True)
class _Text:
    """A template string split into literal text and placeholders."""

    parts: tuple[_Part, ...]


def _parse_text(where: str, text: object, groups: Mapping[str, int] | None, *, multiline: bool = False) -> _Text:
    """``text`` as parts, or ``TemplateError`` naming ``where`` for anything but the placeholders
    above (or for a control character; ``multiline`` text may hold tabs and newlines)."""
    if not isinstance(text, str):
        raise TemplateError(f"{where} must be a string, not {_type_name(text)}")
    problem = contract.text_problem(text, multiline=multiline)
    if problem is not None:
        raise TemplateError(f"{where} {problem}")
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{where}: {exc} (write {{{{ and }}}} for a literal brace)") from None
    parts: list[_Part] = []
    for literal, name, spec, conversion in pieces:
        if literal:
            parts.append(literal)
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if conversion is not None:
            raise TemplateError(f"{where}: {shown} has a conversion; placeholders take none")
        if spec and name != "mtime":
            raise TemplateError(f"{where}: {shown} has a format; only {{mtime}} takes one")
        parts.append(_parse_field(where, name, spec, shown, groups))
    return _Text(tuple(parts))


def _parse_field(where: str, name: str, spec: str | None, shown: str, groups: Mapping[str, int] | None) -> _Field:
    if name == "mtime":
        if not spec:
            return _Field("mtime")
        if "{" in spec or "}" in spec:
            raise TemplateError(f"{where}: the format of {shown} must not hold braces")
        try:
            _SAMPLE_TIME.strftime(spec)
        except (ValueError, OverflowError) as exc:
            raise TemplateError(f"{where}: {shown} is not a strftime format: {exc}") from None
        return _Field("mtime", spec)
    if name in SIMPLE_PLACEHOLDERS:
        return _Field(name)
    parents = _PARENTS.fullmatch(name)
    if parents is not None:
        return _Field("parents", int(parents.group(1)))
    if name.startswith("match."):
        group = name[len("match."):]
        if groups is None:
            raise TemplateError(f"{where}: {shown} needs a [match] pattern, and the template has none")
        if group not in groups:
            known = ", ".join(groups) or "none"
            raise TemplateError(f"{where}: {shown} names no group of the pattern (its named groups: {known})")
        return _Field("match", group)
    raise TemplateError(f"{where}: unknown placeholder {shown[:80]}; the placeholders are {PLACEHOLDERS_HELP}")


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__} (write it as a string)"


def _parse_metadata(where: str, value: object, groups: Mapping[str, int] | None, depth: int) -> Any:
    """``value`` with its strings parsed, or ``TemplateError``: only what JSON holds, finite
    numbers, at most :data:`contract.MAX_METADATA_DEPTH` deep (checked before going deeper)."""
    if depth > contract.MAX_METADATA_DEPTH:
        raise TemplateError(f"{where} is nested more than {contract.MAX_METADATA_DEPTH} deep")
    if isinstance(value, str):
        return _parse_text(where, value, groups, multiline=True)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateError(f"{where} must be a finite number, not {value}")
        return value
    if isinstance(value, Mapping):
        parsed: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TemplateError(f"{where} has a key that is not a string: {key!r:.40}")
            problem = contract.text_problem(key)
            if problem is not None:
                raise TemplateError(f"{where} has a key that {problem}")
            parsed[key] = _parse_metadata(f"{where}.{key}"[:120], item, groups, depth + 1)
        return parsed
    if isinstance(value, (list, tuple)):
        return [_parse_metadata(f"{where}[{i}]"[:120], item, groups, depth + 1) for i, item in enumerate(value)]
    raise TemplateError(f"{where} must be a string, number, boolean, table or array, not {_type_name(value)}")


@dataclass(frozen=True)
class Template:
    """A checked template: build it with :meth:`from_dict` (constructing it checks it too)."""

    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] | None = None
    pattern: str | None = None
    required: bool = False
    metadata: dict[str, Any] | None = None
    _compiled: _Compiled = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", _compile(self))
        # Copied once it is known to be small and shallow enough to copy: the template
        # owns its metadata, whatever the caller does with the table it passed.
        if self.metadata is not None:
            object.__setattr__(self, "metadata", copy.deepcopy(self.metadata))
        if self.tags is not None:
            object.__setattr__(self, "tags", tuple(self.tags))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Template:
        """The template the table ``raw`` describes, checked whole (see the module
        docstring); ``TemplateError`` names the first key that is wrong."""
        if not isinstance(raw, Mapping):
            raise TemplateError(f"a template must be a table, not {_type_name(raw)}")
        unknown = [key for key in raw if key not in TEMPLATE_KEYS]
        if unknown:
            raise TemplateError(f"unknown key {str(unknown[0])[:80]!r}: a template has {', '.join(TEMPLATE_KEYS)}")
        title = raw.get("title")
        if title is not None and not isinstance(title, str):
            raise TemplateError(f"title must be a string, not {_type_name(title)}")
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise TemplateError(f"description must be a string, not {_type_name(description)}")
        tags = raw.get("tags")
        if tags is not None:
            if not isinstance(tags, Sequence) or isinstance(tags, str):
                raise TemplateError(f"tags must be an array of strings, not {_type_name(tags)}")
            for index, tag in enumerate(tags):
                if not isinstance(tag, str):
                    raise TemplateError(f"tags[{index}] must be a string, not {_type_name(tag)}")
            tags = tuple(tags)
        pattern, required = None, False
        match = raw.get("match")
        if match is not None:
            if not isinstance(match, Mapping):
                raise TemplateError(f"match must be a table with a pattern, not {_type_name(match)}")
            unknown = [key for key in match if key not in MATCH_KEYS]
            if unknown:
                raise TemplateError(f"unknown key match.{str(unknown[0])[:80]}: [match] has {', '.join(MATCH_KEYS)}")
            pattern = match.get("pattern")
            if not isinstance(pattern, str):
                raise TemplateError(f"match.pattern must be a string (a regular expression), not {_type_name(pattern)}")
            required = match.get("required", False)
            if not isinstance(required, bool):
                raise TemplateError(f"match.required must be true or false, not {_type_name(required)}")
        metadata = raw.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TemplateError(f"metadata must be a table, not {_type_name(metadata)}")
            metadata = dict(metadata)
        return cls(title, description, tags, pattern, required, metadata)

    def to_dict(self) -> dict[str, Any]:
        """The table this template was made from (absent keys left out): JSON- and TOML-ready,
        and ``Template.from_dict(t.to_dict()) == t``."""
        raw: dict[str, Any] = {}
        if self.title is not None:
            raw["title"] = self.title
        if self.description is not None:
            raw["description"] = self.description
        if self.tags is not None:
            raw["tags"] = list(self.tags)
        if self.pattern is not None:
            raw["match"] = {"pattern": self.pattern, "required": self.required}
        if self.metadata is not None:
            raw["metadata"] = copy.deepcopy(self.metadata)
        return raw

    def render(self, rel: str, mtime_ns: int, host: str) -> Rendered:
        """The upload fields for the file at ``rel`` (``/``-separated, relative to the
        watched folder) last modified at ``mtime_ns``, on the machine ``host``.

        Raises only ``TemplateError``: ``template_mismatch`` when the pattern is
        required and ``rel`` does not match it, ``template_render`` when a rendered
        value breaks a limit or the time cannot be shown.
        """
        compiled = self._compiled
        found = compiled.regex.search(rel) if compiled.regex is not None else None
        if found is None and self.required:
            raise TemplateError(f"template_mismatch: {rel[:200]!r} does not match the pattern "
                                f"{(self.pattern or '')[:200]!r}", code="template_mismatch")
        values = _Values(rel, mtime_ns, host, found)
        title = values.render("title", compiled.title, contract.MAX_TITLE_LENGTH)
        description = (None if compiled.description is None else
                       values.render("description", compiled.description, contract.MAX_TEXT_LENGTH))
        tags: list[str] = []
        seen: set[str] = set()
        for index, tag_text in enumerate(compiled.tags):
            tag = values.render(f"tags[{index}]", tag_text, contract.MAX_TAG_LENGTH)
            # The repository compares tags after NFC normalisation: é typed two ways is one tag.
            if tag and contract.normalize_tag(tag) not in seen:
                seen.add(contract.normalize_tag(tag))
                tags.append(tag)
        metadata = values.render_tree("metadata", compiled.metadata) if compiled.metadata is not None else {}
        try:
            TITLE.check(title)
        except Invalid as exc:
            raise TemplateError(f"the rendered title {exc.problem}", code="template_render") from None
        if description is not None:
            try:
                FREE_TEXT.check(description)
            except Invalid as exc:
                raise TemplateError(f"the rendered description {exc.problem}", code="template_render") from None
        try:
            TAGS.check(tags)
        except Invalid as exc:
            raise TemplateError(_rendered("tags", exc.problem), code="template_render") from None
        try:
            _METADATA_CHECK.check(metadata)
        except Invalid as exc:
            raise TemplateError(_rendered("metadata", exc.problem), code="template_render") from None
        return Rendered(title, description, tags, metadata)


def _rendered(key: str, problem: str) -> str:
    """"the rendered tags[3] must ...": a spec's problem may start with where in the value it is."""
    return f"the rendered {key}{'' if problem.startswith(('.', '[')) else ' '}{problem}"


@dataclass(frozen=True, slots=True)
class _Compiled:
    regex: re.Pattern[str] | None
    title: _Text
    description: _Text | None
    tags: tuple[_Text, ...]
    metadata: dict[str, Any] | None


def _compile(template: Template) -> _Compiled:
    regex = None
    if template.pattern is not None:
        try:
            regex = re.compile(template.pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise TemplateError(f"match.pattern is not a valid regular expression: {exc}") from None
    groups = regex.groupindex if regex is not None else None
    if template.title is not None and not template.title.strip():
        raise TemplateError("title must not be blank (leave it out for the file's name)")
    title = _parse_text("title", template.title if template.title is not None else DEFAULT_TITLE, groups)
    description = (None if template.description is None else
                   _parse_text("description", template.description, groups, multiline=True))
    tags = template.tags or ()
    if len(tags) > contract.MAX_TAGS:
        raise TemplateError(f"tags must have at most {contract.MAX_TAGS} items")
    for index, tag in enumerate(tags):
        if not tag:
            raise TemplateError(f"tags[{index}] must not be empty")
    parsed_tags = tuple(_parse_text(f"tags[{index}]", tag, groups) for index, tag in enumerate(tags))
    metadata = None
    if template.metadata is not None:
        metadata = _parse_metadata("metadata", template.metadata, groups, 0)
        try:
            _METADATA_CHECK.check(template.metadata)
        except Invalid as exc:
            raise TemplateError(f"metadata {exc.problem}") from None
    return _Compiled(regex, title, description, parsed_tags, metadata)


class _Values:
    """The placeholders' values for one file, and rendering with them."""

    __slots__ = ("_found", "_mtime", "dir", "host", "name", "parent", "parents", "path", "stem", "suffix")

    def __init__(self, rel: str, mtime_ns: int, host: str, found: re.Match[str] | None) -> None:
        self.path = rel
        self.dir, _, self.name = rel.rpartition("/")
        self.stem, self.suffix = posixpath.splitext(self.name)
        #: The directories above the file, nearest first.
        self.parents = self.dir.split("/")[::-1] if self.dir else []
        self.parent = self.parents[0] if self.parents else ""
        self.host = host
        self._found = found
        self._mtime: datetime | None = None
        try:
            seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
            self._mtime = datetime.fromtimestamp(seconds).replace(microsecond=nanoseconds // 1000).astimezone()
        except (ValueError, OverflowError, OSError):
            pass  # only an error if a template shows it

    def value(self, where: str, f: _Field) -> str:
        kind = f.kind
        if kind == "match":
            if self._found is None:
                return ""
            return self._found.group(str(f.arg)) or ""
        if kind == "parents":
            n = int(f.arg or 0)
            return self.parents[n] if n < len(self.parents) else ""
        if kind == "mtime":
            if self._mtime is None:
                raise TemplateError(f"{where}: the file's modification time cannot be shown as a date",
                                    code="template_render")
            try:
                if f.arg is None:
                    return self._mtime.isoformat(timespec="seconds")
                return self._mtime.strftime(str(f.arg))
            except (ValueError, OverflowError) as exc:
                raise TemplateError(f"{where}: the modification time cannot be shown: {exc}",
                                    code="template_render") from None
        text: str = getattr(self, kind)
        return text

    def render(self, where: str, text: _Text, limit: int) -> str:
        """``text`` with its placeholders filled in; stops as soon as it grows past ``limit``
        characters, so that a hostile template cannot make a huge string first."""
        out: list[str] = []
        length = 0
        for part in text.parts:
            piece = part if isinstance(part, str) else self.value(where, part)
            out.append(piece)
            length += len(piece)
            if length > limit:
                raise TemplateError(f"the rendered {where} is longer than {limit} characters", code="template_render")
        return "".join(out)

    def render_tree(self, where: str, node: Any) -> Any:
        if isinstance(node, _Text):
            return self.render(where, node, contract.MAX_METADATA_BYTES)
        if isinstance(node, dict):
            return {key: self.render_tree(f"{where}.{key}"[:120], item) for key, item in node.items()}
        if isinstance(node, list):
            return [self.render_tree(f"{where}[{i}]"[:120], item) for i, item in enumerate(node)]
        return node


def load_template_file(path: str) -> dict[str, Any]:
    """The table in the TOML file at ``path``, for :meth:`Template.from_dict` (which checks
    it). ``TemplateError`` if the file is not TOML (or not UTF-8); ``OSError`` if it cannot
    be read."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        table: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{path} is not valid TOML: {exc}") from None
    return table
