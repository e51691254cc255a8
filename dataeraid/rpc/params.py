"""What an RPC parameter may be: its type and range, checked before any handler runs.

Each method declares its parameters as :class:`Param` values holding a :class:`Spec`.
A spec checks a value that came off the wire and says in one phrase what it takes,
for the error message and the generated reference (docs/protocol.md). Everything a
caller can get wrong ends here as ``invalid_argument`` naming the parameter: a
wrong type, a number that is not finite or out of range, text holding a NUL, a
control character or a lone surrogate, an id that does not match its pattern, a
path the OS cannot take. A handler sees only values that passed.

The specs are data, not code paths, so the fuzz test (tests/daemon/test_rpc_fuzz.py)
can generate good and hostile values for every parameter of every method from them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dataerai import contract

from dataeraid.errors import DataeraiError


class Invalid(Exception):
    """A value did not pass its spec; ``problem`` is a phrase after the parameter's name."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


class Spec:
    """A parameter's type and range. ``check`` returns the value to hand the handler."""

    #: The JSON type, for the reference: string, integer, number, boolean, array, object.
    json_type = "any"

    def check(self, value: object) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """One phrase for the reference, e.g. "integer, 1 to 10000"."""
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Spec):
    """A string: no NUL, control character or lone surrogate (``multiline`` allows tabs and
    newlines), within ``min_length`` to ``max_length`` characters. ``non_blank`` refuses
    one of only spaces."""

    max_length: int
    min_length: int = 0
    multiline: bool = False
    non_blank: bool = False
    json_type = "string"

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {_type_name(value)}")
        if len(value) > self.max_length:
            raise Invalid(f"must be at most {self.max_length} characters")
        if len(value) < self.min_length:
            raise Invalid("must not be empty" if self.min_length == 1 else
                          f"must be at least {self.min_length} characters")
        if self.non_blank and not value.strip():
            raise Invalid("must not be blank")
        problem = contract.text_problem(value, multiline=self.multiline)
        if problem is not None:
            raise Invalid(problem)
        return value

    def describe(self) -> str:
        low = "1" if self.min_length <= 1 and self.non_blank else str(self.min_length)
        return f"string, {low} to {self.max_length} characters"


@dataclass(frozen=True)
class Choice(Spec):
    """One of a fixed set of strings."""

    values: tuple[str, ...]
    json_type = "string"

    def check(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.values:
            raise Invalid(f"must be one of {', '.join(self.values)}")
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{v}`" for v in self.values)


@dataclass(frozen=True)
class Id(Spec):
    """An id of one of ``kinds`` (keys of ``contract.ID_PATTERNS``)."""

    kinds: tuple[str, ...]
    json_type = "string"

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {_type_name(value)}")
        if any(contract.is_id(kind, value) for kind in self.kinds):
            return value
        if len(self.kinds) == 1:
            problem = contract.id_problem(self.kinds[0], value)
            assert problem is not None
            raise Invalid(problem)
        prefixes = ", ".join(f"{contract.ID_PREFIXES[k]}_" for k in self.kinds)
        raise Invalid(f"must be an id starting {prefixes} and 8 to 64 lower-case letters or digits")

    def describe(self) -> str:
        return " or ".join(f"{kind} id (`{contract.ID_PATTERNS[kind].pattern}`)" for kind in self.kinds)


@dataclass(frozen=True)
class Integer(Spec):
    """An integer (not a boolean, not a float) from ``low`` to ``high``."""

    low: int
    high: int
    json_type = "integer"

    def check(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, not {_type_name(value)}")
        if not self.low <= value <= self.high:
            raise Invalid(f"must be from {self.low} to {self.high}")
        return value

    def describe(self) -> str:
        return f"integer, {self.low} to {self.high}"


@dataclass(frozen=True)
class Number(Spec):
    """A finite number from ``low`` to ``high``; ``positive`` excludes ``low`` itself."""

    low: float
    high: float
    positive: bool = False
    json_type = "number"

    def check(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number, not {_type_name(value)}")
        number = float(value) if not isinstance(value, float) else value
        if not math.isfinite(number):
            raise Invalid("must be a finite number")
        if not self.low <= number <= self.high or (self.positive and number <= self.low):
            low = f"more than {self.low:g}" if self.positive else f"from {self.low:g}"
            raise Invalid(f"must be {low} to {self.high:g}")
        return number

    def describe(self) -> str:
        low = f"more than {self.low:g}" if self.positive else f"{self.low:g}"
        return f"number, {low} to {self.high:g}"


@dataclass(frozen=True)
class Boolean(Spec):
    json_type = "boolean"

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false, not {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "boolean"


@dataclass(frozen=True)
class ListOf(Spec):
    """An array of at most ``max_items`` values of ``item``."""

    item: Spec
    max_items: int
    json_type = "array"

    def check(self, value: object) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(f"must be an array, not {_type_name(value)}")
        if len(value) > self.max_items:
            raise Invalid(f"must have at most {self.max_items} items")
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item.check(item))
            except Invalid as exc:
                raise Invalid(f"[{index}] {exc.problem}") from None
        return checked

    def describe(self) -> str:
        return f"array of at most {self.max_items}: {self.item.describe()}"


class _Rule(Spec):
    """A string held to one of the contract's rules (``problem`` says what breaks it)."""

    json_type = "string"

    def problem(self, value: str) -> str | None:
        raise NotImplementedError

    def check(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {_type_name(value)}")
        problem = self.problem(value)
        if problem is not None:
            raise Invalid(problem)
        return value


@dataclass(frozen=True)
class LocalPath(_Rule):
    """An absolute path on this machine that the OS can take (``contract.local_path_problem``)."""

    def problem(self, value: str) -> str | None:
        return contract.local_path_problem(value)

    def describe(self) -> str:
        return f"absolute local path, at most {contract.MAX_LOCAL_PATH_BYTES} bytes"


@dataclass(frozen=True)
class RepositoryPath(_Rule):
    """A repository path (``contract.path_problem``): relative, ``/``-separated, no ``..``."""

    def problem(self, value: str) -> str | None:
        return contract.path_problem(value)

    def describe(self) -> str:
        return f"relative repository path, at most {contract.MAX_PATH_LENGTH} characters"


@dataclass(frozen=True)
class TransferWindow(_Rule):
    """When a job may move bytes, in local time (``dataeraid.windows``: ``Mon-Fri 20:00-06:00``)."""

    def problem(self, value: str) -> str | None:
        from dataeraid import windows

        return windows.problem(value)

    def describe(self) -> str:
        return f"transfer window like `Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00`, at most " \
               f"{contract.MAX_WINDOW_LENGTH} characters"


@dataclass(frozen=True)
class JsonObject(Spec):
    """A JSON object that the repository can store: finite numbers, text that is valid
    UTF-8, at most ``max_depth`` deep and ``max_bytes`` long when encoded."""

    max_bytes: int = contract.MAX_METADATA_BYTES
    max_depth: int = contract.MAX_METADATA_DEPTH
    json_type = "object"

    def check(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(f"must be an object, not {_type_name(value)}")
        _check_json(value, self.max_depth)
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
        if size > self.max_bytes:
            raise Invalid(f"must be at most {self.max_bytes} bytes as JSON")
        return value

    def describe(self) -> str:
        return f"object, at most {self.max_bytes} bytes as JSON and {self.max_depth} deep"


def _check_json(value: object, depth: int, where: str = "") -> None:
    if depth < 0:
        raise Invalid(f"is nested too deeply{' at ' + where if where else ''}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"must hold only finite numbers{' (at ' + where + ')' if where else ''}")
    if isinstance(value, str):
        problem = contract.text_problem(value, multiline=True)
        if problem is not None:
            raise Invalid(f"{where or 'a string'} {problem}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth - 1, where)
            _check_json(item, depth - 1, f"{where}.{key}"[:80])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, depth - 1, f"{where}[{index}]"[:80])


@dataclass(frozen=True)
class Record(Spec):
    """An object with these optional fields (and no others). A null field is dropped, or
    with ``keep_nulls`` kept (where null means "clear it")."""

    fields: Mapping[str, Spec]
    keep_nulls: bool = False
    json_type = "object"

    def check(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Invalid(f"must be an object, not {_type_name(value)}")
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise Invalid(f"has no field {', '.join(repr(u)[:40] for u in unknown[:3])}; "
                          f"its fields are {', '.join(self.fields)}")
        checked: dict[str, Any] = {}
        for name, item in value.items():
            if item is None:
                if self.keep_nulls:
                    checked[name] = None
                continue
            try:
                checked[name] = self.fields[name].check(item)
            except Invalid as exc:
                raise Invalid(f".{name} {exc.problem}") from None
        return checked

    def describe(self) -> str:
        return "object: " + ", ".join(f"`{k}` ({s.describe()})" for k, s in self.fields.items())


_REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    """One named parameter: its spec, whether it must be given, its default, its help.

    An optional parameter may be sent as null, which reads as its default.
    """

    name: str
    spec: Spec
    help: str = ""
    required: bool = False
    default: Any = None

    def check(self, value: object) -> Any:
        if value is None:
            if self.required:
                raise DataeraiError("invalid_argument", f"`{self.name}` must not be null", param=self.name)
            return self.default
        try:
            return self.spec.check(value)
        except Invalid as exc:
            raise DataeraiError("invalid_argument", f"`{self.name}` {exc.problem}", param=self.name) from None


def bind(method: str, params: Sequence[Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """The handler's keyword arguments from the ``given`` parameters, or ``invalid_argument``."""
    known = {p.name for p in params}
    unknown = [name for name in given if name not in known]
    if unknown:
        shown = ", ".join(repr(name)[:40] for name in sorted(unknown)[:3])
        raise DataeraiError("invalid_argument", f"{method} takes no parameter {shown}",
                            param=unknown[0][:100])
    bound: dict[str, Any] = {}
    for p in params:
        if p.name not in given:
            if p.required:
                raise DataeraiError("invalid_argument", f"{method} needs `{p.name}`", param=p.name)
            bound[p.name] = p.default
            continue
        bound[p.name] = p.check(given[p.name])
    return bound


@dataclass(frozen=True)
class Items(Spec):
    """An array of 1 to ``max_items`` objects, each holding the parameters ``params`` of
    ``method`` (a ``*.start_many`` call: one request per item, checked as that method checks it).

    An item that does not pass is ``invalid_argument`` for the whole array, its ``data``
    naming the item's ``index`` (from 0) and, as for a single call, the item's ``param``.
    """

    method: str
    params: tuple[Param, ...]
    max_items: int
    json_type = "array"

    def check(self, value: object) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise Invalid(f"must be an array, not {_type_name(value)}")
        if not value:
            raise Invalid("must not be empty")
        if len(value) > self.max_items:
            raise Invalid(f"must have at most {self.max_items} items (send more in several calls)")
        checked = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise DataeraiError("invalid_argument", f"items[{index}] must be an object, not {_type_name(item)}",
                                    param="items", index=index)
            try:
                checked.append(bind(self.method, self.params, item))
            except DataeraiError as exc:
                raise item_error(exc, index) from None
        return checked

    def describe(self) -> str:
        return f"array of 1 to {self.max_items} objects, each with the parameters of `{self.method}`"


def item_error(exc: DataeraiError, index: int) -> DataeraiError:
    """``exc``, raised for item ``index`` of a batch, as the batch's error: the item named."""
    return DataeraiError(exc.code, f"items[{index}]: {exc.message}", **{**exc.data, "index": index})


# The specs the methods share, so that a limit is stated once.
TITLE = Text(contract.MAX_TITLE_LENGTH, min_length=1, non_blank=True)
FREE_TEXT = Text(contract.MAX_TEXT_LENGTH, multiline=True)
TAGS = ListOf(Text(contract.MAX_TAG_LENGTH, min_length=1), contract.MAX_TAGS)
