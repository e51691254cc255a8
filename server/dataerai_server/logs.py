"""Logging: structlog for our own events, and the standard library's (Uvicorn, Alembic)
rendered the same way. JSON lines when stderr is not a terminal, readable text when it is.

Nothing logged anywhere in the server carries a token, an ``Authorization`` header or
a URL query (signatures). Each request gets one line, event ``request``, with
``method``, ``path`` (no query), ``status``, ``bytes`` (response body bytes sent) and
``duration_ms``, plus what its handler adds through :func:`request_log_fields`
(content reads add ``range``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: The ASGI scope key of the dict whose items are added to the request's log line.
REQUEST_LOG_FIELDS = "dataerai.log_fields"


def request_log_fields(scope: MutableMapping[str, Any]) -> dict[str, Any]:
    """The fields to add to this request's log line; a handler sets items in it. Nothing
    secret: no header but those known to be harmless, no query string."""
    fields: dict[str, Any] = scope.setdefault(REQUEST_LOG_FIELDS, {})
    return fields


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Send all logs at ``level`` or above to ``stream`` (stderr by default)."""
    stream = stream or sys.stderr
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}")
    as_json = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    # Tracebacks without local variables: a frame's locals may hold a token or a header.
    if as_json:
        shared.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_no)
    # Alembic's per-migration chatter is noise on every start.
    logging.getLogger("alembic").setLevel(max(level_no, logging.WARNING))
    # Uvicorn's start and stop lines say what server.listening, server.stopping and server.stopped say.
    logging.getLogger("uvicorn").setLevel(max(level_no, logging.WARNING))
