"""Reading request bodies: JSON objects and typed fields, with errors that name the field.

Every failure is ``invalid_argument`` (400) with ``field`` set when one field is at fault,
so a client learns exactly what to fix. Booleans are not accepted where integers are
(Python's ``bool`` is an ``int``; JSON's is not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from starlette.requests import Request

from . import paths
from .config import MAX_JSON_BODY
from .errors import ApiError

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_MISSING: Final = object()


def bad(name: str, message: str) -> ApiError:
    return ApiError("invalid_argument", f"`{name}` {message}", field=name)


async def read_json_object(request: Request, *, max_bytes: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The request body as a JSON object. An empty body reads as ``{}``; one over
    ``max_bytes`` is ``frame_too_large``."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError("frame_too_large", f"a JSON body here may be at most {max_bytes} bytes")
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_argument", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError("invalid_argument", "the body must be a JSON object")
    return value


def reject_unknown(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(
            "invalid_argument", f"unknown field(s): {', '.join(unknown)}", field=unknown[0], unknown_fields=unknown
        )


def string(
    body: Mapping[str, Any],
    name: str,
    *,
    required: bool = False,
    nullable: bool = True,
    default: str | None = None,
    max_length: int = 10_000,
) -> str | None:
    """A string field; absent gives ``default`` (or an error if ``required``)."""
    value = body.get(name, _MISSING)
    if value is _MISSING:
        if required:
            raise bad(name, "is required")
        return default
    if value is None:
        if not nullable:
            raise bad(name, "must not be null")
        return None
    if not isinstance(value, str):
        raise bad(name, "must be a string")
    if len(value) > max_length:
        raise bad(name, f"must be at most {max_length} characters")
    return value


def required_string(body: Mapping[str, Any], name: str, *, max_length: int = 10_000) -> str:
    value = string(body, name, required=True, nullable=False, max_length=max_length)
    assert value is not None
    return value


def integer(body: Mapping[str, Any], name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A required integer field within ``[minimum, maximum]``."""
    value = body.get(name, _MISSING)
    if value is _MISSING:
        raise bad(name, "is required")
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(name, "must be an integer")
    if minimum is not None and value < minimum:
        raise bad(name, f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise bad(name, f"must be at most {maximum}")
    return value


def string_list(body: Mapping[str, Any], name: str, *, default: list[str] | None = None) -> list[str]:
    """A list of strings; absent or null gives ``default`` (an empty list if not given)."""
    value = body.get(name)
    if value is None:
        return list(default or [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad(name, "must be a list of strings")
    return value


def json_object(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A JSON object field; absent or null gives ``{}``."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(name, "must be a JSON object")
    return value


def sha256_hex(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    """A SHA-256 as 64 hex digits, returned lower-case; absent or null gives None unless required."""
    value = body.get(name)
    if value is None:
        if required:
            raise bad(name, "is required (64 hex digits)")
        return None
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise bad(name, "must be a SHA-256 as 64 hex digits")
    return value.lower()


def is_sha256_hex(value: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(value))


def path(body: Mapping[str, Any], name: str, *, nullable: bool = True) -> str | None:
    """A relative POSIX path field (see ``paths.path_problem``); absent or null gives None."""
    value = string(body, name, nullable=nullable, max_length=paths.MAX_PATH_LENGTH)
    if value is not None and (problem := paths.path_problem(value)) is not None:
        raise bad(name, problem)
    return value


def file_list(body: Mapping[str, Any], name: str, *, total_size: int) -> list[dict[str, Any]] | None:
    """A multi-file manifest: ``[{"path", "size"}, ...]`` in stream order whose sizes add up
    to ``total_size``, with valid, distinct paths and no file that is also a directory.
    Absent or null gives None (one file)."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise bad(name, "must be a non-empty list of {path, size} objects")
    if len(value) > paths.MAX_FILES:
        raise bad(name, f"may list at most {paths.MAX_FILES} files")
    files: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"path", "size"}:
            raise ApiError("invalid_argument", f"`{where}` must be an object {{path, size}}", field=name, index=index)
        file_path = entry["path"]
        problem = "must be a string" if not isinstance(file_path, str) else paths.path_problem(file_path)
        if problem is not None:
            raise ApiError("invalid_argument", f"`{where}.path` {problem}", field=name, index=index)
        size = entry["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ApiError("invalid_argument", f"`{where}.size` must be an integer >= 0", field=name, index=index)
        files.append({"path": file_path, "size": size})
    problem = paths.manifest_problem([entry["path"] for entry in files])
    if problem is not None:
        raise bad(name, problem)
    listed = sum(entry["size"] for entry in files)
    if listed != total_size:
        raise bad(name, f"sizes add up to {listed} bytes, but `size` is {total_size}")
    return files


def sha256_list(body: Mapping[str, Any], name: str) -> list[str] | None:
    """A list of SHA-256 hex digests, returned lower-case; absent or null gives None."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) and _SHA256_HEX.fullmatch(item) for item in value):
        raise bad(name, "must be a list of SHA-256s as 64 hex digits")
    return [item.lower() for item in value]


def query_limit(query: Mapping[str, str], *, default: int, maximum: int) -> int:
    """The ``limit`` query parameter: an integer from 1 to ``maximum``."""
    text = query.get("limit")
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise bad("limit", f"must be an integer from 1 to {maximum}")
    return int(text)
