"""Serving content bytes: ``Range`` parsing and a streamed response with read-ahead.

The response reads the next block (in a worker thread, via the storage iterator)
while the current one is being sent, so disk and socket work overlap; at most two
blocks of about 1 MiB are held per download.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final

import anyio
from starlette.types import Receive, Scope, Send

from .concurrency import unwrap_single
from .logs import request_log_fields

_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class ByteRange:
    """``[start, start + length)`` of a resource of ``total`` bytes."""

    start: int
    length: int
    total: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.total}"


class Unsatisfiable(Exception):
    """A well-formed range that selects nothing of the resource (answer 416)."""


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """The single byte range a ``Range`` header asks for, or None for "the whole resource".

    Supports ``bytes=A-B``, ``bytes=A-`` and ``bytes=-N``. A header this server does not
    understand (another unit, several ranges) is ignored, as HTTP allows, and the whole
    resource is sent. Raises :class:`Unsatisfiable` when the range lies past the end.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match[1], match[2]
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or total == 0:
            raise Unsatisfiable
        start = max(0, total - suffix)
        return ByteRange(start, total - start, total)
    start = int(first)
    end = total - 1 if last == "" else min(int(last), total - 1)
    if last != "" and int(last) < start:
        return None  # syntactically invalid: ignore it
    if start >= total:
        raise Unsatisfiable
    return ByteRange(start, end - start + 1, total)


class StreamedBody:
    """An ASGI response whose body comes from ``open_blocks()``, read one block ahead.

    ``open_blocks`` is called only for GET (a HEAD gets the headers alone). If the client
    disconnects, reading stops (rather than reading the rest of the range for nobody) and
    the request's log line says ``client_disconnected``.
    """

    def __init__(
        self, status: int, headers: Mapping[str, str], open_blocks: Callable[[], AsyncGenerator[bytes, None]]
    ) -> None:
        self.status = status
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.open_blocks = open_blocks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        ahead_send, ahead_receive = anyio.create_memory_object_stream[bytes](1)
        gone = False

        async def read_ahead() -> None:
            async with ahead_send, aclosing(self.open_blocks()) as blocks:
                async for block in blocks:
                    await ahead_send.send(block)

        async def watch_for_disconnect() -> None:
            nonlocal gone
            # The (empty) request body comes first; after it, only a disconnect can arrive.
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            tasks.cancel_scope.cancel()

        with unwrap_single():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_ahead)
                tasks.start_soon(watch_for_disconnect)
                async with ahead_receive:
                    async for block in ahead_receive:
                        await send({"type": "http.response.body", "body": block, "more_body": True})
                tasks.cancel_scope.cancel()  # sent in full: stop watching
        if gone:
            request_log_fields(scope)["client_disconnected"] = True
            return
        await send({"type": "http.response.body", "body": b""})
