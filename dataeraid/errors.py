"""The daemon's exceptions, all carrying a code from the one catalogue in
``dataerai.protocol``. OS errors are mapped to it here, once.

    DataeraiError(code, message)      a failure the caller sees with its code
     ├── AuthProblem                  auth_required / auth_expired: the job waits for a new login
    TransientError                    worth retrying: network, timeouts, 5xx, 429
     └── TargetExpired                a signed URL expired: ask the server for a new one
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from dataerai.protocol import ERRORS


class DataeraiError(Exception):
    def __init__(self, code: str, message: str, **data: Any) -> None:
        if code not in ERRORS:
            code = "internal"
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class AuthProblem(DataeraiError):
    pass


class TransientError(Exception):
    """``code`` is what a waiting job shows: ``rate_limited`` when the server asked to
    slow down (429), else ``unavailable``."""

    def __init__(self, message: str, retry_after: float | None = None, code: str = "unavailable") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class TargetExpired(TransientError):
    pass


_OS_CODES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.ENOENT: "not_found",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ELOOP: "unsafe_path",
}


def from_os_error(exc: OSError, what: str) -> DataeraiError:
    """The catalogue's view of a local file error; ``what`` says which file and why."""
    code = _OS_CODES.get(exc.errno or 0, "io_error")
    return DataeraiError(code, f"{what}: {exc.strerror or exc}")


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception (group) is made of, groups flattened."""
    return _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@contextmanager
def first_error() -> Iterator[None]:
    """Around a nursery of one job's tasks: raise the error that stopped them, not a group.

    When one task fails, Trio cancels its siblings and raises an exception group.
    The job's outcome is the failure that started it: a ``DataeraiError`` if any
    task raised one (its code is what the user sees), else the one error that is
    not a cancellation. Anything else leaves the group as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        coded = [leaf for leaf in leaves if isinstance(leaf, DataeraiError)]
        if coded:
            raise coded[0] from None
        real = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        raise
