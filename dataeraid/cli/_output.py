"""Printing results: one JSON object with ``--json``, short lines otherwise."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_JSON_KEY = "dataerai.json"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_JSON_KEY] = value
    return value


def json_option(func: F) -> F:
    """``--json``; the error boundary reads the choice from ``ctx.meta`` to print errors as JSON too."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_remember_json,
        help="Print exactly one JSON object on stdout (errors as JSON on stderr).",
    )(func)


def json_requested(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(_JSON_KEY, False))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Fields hidden from the repr (the SDK's ``raw``, the wire object kept whole) stay out of the output too.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def as_dict(obj: Any) -> dict[str, Any]:
    """A result of the SDK (a frozen dataclass) or of a raw RPC call (a dict) as a plain dict."""
    if not (isinstance(obj, Mapping) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))):
        raise TypeError(f"cannot print a {type(obj).__name__} as an object")
    result: dict[str, Any] = _plain(obj)
    return result


def iso(value: datetime) -> str:
    """ISO-8601; UTC with a ``Z``, as the repository writes it."""
    if value.utcoffset() == timedelta(0):
        return value.replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for what the SDK returns: times, enums, paths."""
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def print_json(obj: Mapping[str, Any]) -> None:
    click.echo(json.dumps(obj, default=json_default, ensure_ascii=False))


def emit(result: Any, as_json: bool, text: str) -> None:
    """A command's result: the object as one JSON line for scripts (``--json``), else ``text``."""
    if as_json:
        print_json(as_dict(result))
    else:
        click.echo(text)


def human(value: Any) -> str:
    """One value on a line meant for a person."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(human(v) for v in value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)
