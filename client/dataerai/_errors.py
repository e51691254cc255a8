"""The SDK's exceptions, and the one place wire errors become them.

::

    Exception
     ├── DaemonError(code, message)        the daemon (or the SDK on its behalf) reported a coded error
     │    └── DaemonTimeoutError           also a TimeoutError: a request, a transfer or the start ran out of time
     └── OSError
          └── ConnectionError              (the builtin)
               └── DaemonConnectionError   also ``dataerai.ConnectionError``: the daemon cannot be reached
                                           or the connection broke

``DaemonError.code`` is one of the stable string codes of the catalogue in
``dataerai.protocol`` (``not_found``, ``auth_required``, ...). A code the SDK
does not know yet (from a newer daemon) is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .protocol import RpcError


class DaemonError(Exception):
    """The daemon answered with a coded error.

    ``code`` is the stable string code, ``message`` a sentence a person can act
    on, ``data`` any extra fields the daemon sent (for example ``job_id``).
    """

    code: str
    message: str
    data: dict[str, Any]

    def __init__(self, code: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        # Not super().__init__: for DaemonTimeoutError that would reach OSError,
        # which reads two arguments as (errno, strerror).
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message
        self.data = dict(data or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.code, self.message, self.data, dict(self.__dict__)))


class DaemonTimeoutError(DaemonError, TimeoutError):
    """A request, a transfer, or the daemon's start did not finish in time. ``code`` is ``timeout``.

    ``transfer_id`` is the id of the job that goes on in the daemon when a
    transfer's wait ran out (``client.wait(transfer_id)`` waits again), and
    ``None`` for a plain request timeout or a daemon that did not start.
    """

    transfer_id: str | None

    def __init__(self, message: str, *, transfer_id: str | None = None, data: Mapping[str, Any] | None = None) -> None:
        super().__init__("timeout", message, data)
        self.transfer_id = transfer_id

    @property
    def job_id(self) -> str | None:
        """The same as ``transfer_id``: a transfer is a job of the daemon."""
        return self.transfer_id


class DaemonConnectionError(ConnectionError):
    """The daemon could not be reached, or the connection to it broke.

    A subclass of the builtin ``ConnectionError``, and exported as
    ``dataerai.ConnectionError`` too, so both ``except ConnectionError`` and
    ``except dataerai.ConnectionError`` catch it. A request that was in flight
    may or may not have been carried out. The client reconnects on its next call.
    """

    socket_path: str | None

    def __init__(self, message: str, *, socket_path: str | None = None) -> None:
        super().__init__(message)
        self.socket_path = socket_path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),), dict(self.__dict__))


def _rebuild(
    cls: type[DaemonError], code: str, message: str, data: dict[str, Any], state: dict[str, Any]
) -> DaemonError:
    exc = cls.__new__(cls)
    DaemonError.__init__(exc, code, message, data)
    exc.__dict__.update(state)
    return exc


def error_from_rpc(error: RpcError) -> DaemonError:
    """The exception for an error object read off the wire."""
    if error.code == "timeout":
        job_id = error.data.get("job_id")
        return DaemonTimeoutError(
            error.message, transfer_id=job_id if isinstance(job_id, str) else None, data=error.data
        )
    return DaemonError(error.code, error.message, error.data)
