"""The one error boundary: ``ApiError`` raised anywhere becomes the JSON error body here.

Every error the API reports carries a code from the shared catalogue in
``dataerai.protocol``; the HTTP status comes from that catalogue too, so the
server, the daemon and the SDK cannot disagree about what a code means.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any, Final

from dataerai.protocol import ERRORS, error_kind
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .storage.base import StoreError


class ApiError(Exception):
    """An error the client is told about: a catalogue ``code``, a message a person can act on,
    and extra fields that go into the error object beside them (``missing_parts``, ``reason``, ...).

    ``status`` overrides the catalogue's status only for HTTP-level conditions that the
    catalogue has no code for (405); everything else takes the catalogue's.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}: add it to dataerai.protocol first")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else error_kind(code).http_status
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"code", "message", **extra}}``."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def error_response(error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method) in the API's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError("not_found", f"no such endpoint: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        error = ApiError(
            "invalid_argument",
            f"{request.method} is not allowed on {request.url.path}",
            status=405,
            headers=exc.headers,
        )
    elif 400 <= exc.status_code < 500:
        error = ApiError("invalid_argument", str(exc.detail), status=exc.status_code)
    else:
        error = ApiError("internal", str(exc.detail))
    return error_response(error)


def internal_error() -> ApiError:
    """What an unexpected exception is shown as (the details go to the log, not the client)."""
    return ApiError("internal", "internal server error; the server log has the details")


#: ``Retry-After`` (seconds) on a storage failure: long enough not to hammer a full or
#: read-only disk, short enough that a disk an operator freed is used again soon.
STORAGE_RETRY_AFTER_SECONDS: Final = 30
#: errno values that mean the storage has no room: none left, or none for this user.
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_failure(exc: OSError | StoreError, what: str) -> ApiError:
    """The answer to a storage operation that failed in the operating system or at the S3
    store (the one boundary for both): ``disk_full`` (507) when the storage has no room,
    ``unavailable`` (503) for any other failure (read-only filesystem, I/O error, a store
    that refused or did not answer). Both carry ``Retry-After``: the condition is the
    server's, and may pass."""
    if isinstance(exc, StoreError):
        reason = exc.code or "no answer"
    else:
        reason = os.strerror(exc.errno) if exc.errno is not None else str(exc)
    headers = {"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)}
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return ApiError(
            "disk_full", f"the repository's storage is full ({what}: {reason}); try again once space is freed",
            headers=headers,
        )
    return ApiError(
        "unavailable", f"the repository's storage failed ({what}: {reason}); try again later", headers=headers
    )
