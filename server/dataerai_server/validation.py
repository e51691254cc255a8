"""Reading requests with the models of :mod:`schemas`, with errors that name the field.

Every failure is ``invalid_argument`` (400) with ``field`` set when one field is at fault
(and ``index`` when it is one item of a list), so a client learns exactly what to fix. A
body is read once, up to its size cap (``frame_too_large`` past it), and parsed and
validated in one pass by the model's compiled validator; nothing is built per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from . import paths, schemas
from .config import MAX_JSON_BODY
from .errors import ApiError

M = TypeVar("M", bound=BaseModel)

_EMPTY_OBJECT: Final = b"{}"


def bad(name: str, message: str, **extra: Any) -> ApiError:
    return ApiError("invalid_argument", f"`{name}` {message}", field=name, **extra)


async def read_body(request: Request, max_bytes: int = MAX_JSON_BODY) -> bytes:
    """The request body, at most ``max_bytes`` (``frame_too_large`` past that)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError("frame_too_large", f"a JSON body here may be at most {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError("frame_too_large", f"a JSON body here may be at most {max_bytes} bytes")
    return bytes(body)


def parse_body(model: type[M], body: bytes) -> M:
    """``body`` (JSON; empty reads as ``{}``) as ``model``, or ``invalid_argument``."""
    try:
        return model.model_validate_json(body if body.strip() else _EMPTY_OBJECT)
    except ValidationError as exc:
        raise _api_error(exc) from None


def parse_query(model: type[M], query: Mapping[str, str]) -> M:
    """Query parameters as ``model``; an empty value counts as not given."""
    try:
        return model.model_validate({name: value for name, value in query.items() if value != ""})
    except ValidationError as exc:
        raise _api_error(exc) from None


def check_path_parameters(params: Mapping[str, str]) -> None:
    """No NUL in a path parameter (no id holds one, and PostgreSQL's text cannot)."""
    for name, value in params.items():
        if "\x00" in value:
            raise bad(name, "must not contain NUL")


def path_number(text: str, name: str = "number") -> int:
    """A positive integer path parameter (decimal digits only)."""
    if not (text.isascii() and text.isdigit()):
        raise ApiError("invalid_argument", f"part number must be a positive integer, not {text!r}", field=name)
    return int(text)


# --- pydantic's errors in the API's words ----------------------------------------------------


def _api_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_context=True, include_input=True)
    unknown = sorted(str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden")
    if unknown:
        return ApiError(
            "invalid_argument", f"unknown field(s): {', '.join(unknown)}", field=unknown[0], unknown_fields=unknown
        )
    return _one_error(errors[0])


def _one_error(error: ErrorDetails) -> ApiError:
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx") or {}
    if kind == "json_invalid":
        return ApiError("invalid_argument", f"the body is not valid JSON: {ctx.get('error', '')}")
    if kind == "dataerai_field":
        return ApiError("invalid_argument", str(ctx["message"]), field=str(ctx["field"]))
    if not loc:
        return ApiError("invalid_argument", "the body must be a JSON object")
    field = str(loc[0])
    # The innermost field named (`files[3].path`), and the list index where there is one.
    where = field + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    index = next((part for part in loc[1:] if isinstance(part, int)), None)
    message = f"`{where}` {_phrase(error)}"
    if index is None:
        return ApiError("invalid_argument", message, field=field)
    return ApiError("invalid_argument", message, field=field, index=index)


def _phrase(error: ErrorDetails) -> str:
    """What is wrong, as a phrase after the field's name."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "is required"
    if kind in ("string_type", "int_type", "int_parsing", "dict_type", "list_type", "model_type", "bool_type"):
        if value is None:
            return "must not be null"
        return {
            "string_type": "must be a string",
            "int_type": "must be an integer",
            "int_parsing": "must be an integer",
            "dict_type": "must be a JSON object",
            "model_type": "must be a JSON object",
            "list_type": "must be a list",
            "bool_type": "must be true or false",
        }[kind]
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_short":
        return "must not be empty"
    if kind == "too_long":
        return f"may list at most {ctx['max_length']} items"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        if pattern == schemas.SHA256_PATTERN:
            return "must be a SHA-256 as 64 hex digits"
        if pattern == schemas.PATH_PATTERN and isinstance(value, str):
            return paths.path_problem(value) or "must be a relative POSIX path"
        if isinstance(value, str) and "\x00" in value:
            return "must not contain NUL"
        if pattern == schemas.NOT_BLANK_PATTERN:
            return "must not be empty"
        if pattern == schemas.TIMESTAMP_PATTERN:
            return "must be an ISO-8601 timestamp such as 2026-11-30T12:00:00Z"
        return f"must match {pattern}"
    return str(error["msg"])
