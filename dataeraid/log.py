"""structlog set-up: JSON lines when stderr is not a terminal, console otherwise.

Lines about a job carry ``job_id`` (bind it with ``log.bind(job_id=...)``).
Secrets never reach a log: nothing logs headers or credentials, and the
``hide_secrets`` processor, as a second fence, blanks any key that looks like one
and cuts signed URLs' query strings and tokens from every text, tracebacks
included (``dataeraid.redact``, the same rule as for the messages clients see).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Protocol, TextIO, cast

import structlog

from dataeraid.redact import redact

_SECRET_KEYS = ("token", "authorization", "secret", "password", "signature")


def hide_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


def configure(level: str = "info", stream: Stream | None = None) -> None:
    stream = stream or sys.stderr
    renderer: Any = structlog.dev.ConsoleRenderer() if stream.isatty() else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            hide_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # PrintLogger only writes and flushes, which a RotatingFile does as a file would.
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, stream)),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)


class Stream(Protocol):
    """Where log lines go: a text stream, or a :class:`RotatingFile`."""

    def write(self, text: str) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


class RotatingFile:
    """An append-only log file that never grows past ``max_bytes``: when a line would take it
    over, it becomes ``NAME.1`` (``NAME.1`` becomes ``NAME.2`` …) and a new one starts, keeping
    at most ``keep`` old files. A daemon on an instrument PC runs for months; its log must not
    fill the disk it writes data to."""

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, keep: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._file = self._open()
        self._size = self._file.tell()

    def _open(self) -> TextIO:
        """The log file for appending, 0600 whatever the umask (an older one made 0644 is made private)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, 0o600)
            return open(fd, "a", buffering=1, encoding="utf-8")  # held for the daemon's life
        except BaseException:
            os.close(fd)
            raise

    def write(self, text: str) -> int:
        size = len(text.encode("utf-8"))
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(text)
        self._size += size
        return len(text)

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.keep > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self._open()
        self._size = 0

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()
