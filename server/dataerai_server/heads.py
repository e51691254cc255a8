"""Bounds on a request's head (the request line and headers, before any body): its size,
and the time it may take to arrive.

httptools keeps a request head in memory however long it grows (a header value sent
forever is one growing string), and Uvicorn sets no bound on it, where h11 under
Hypercorn refused past 16 KiB. :class:`BoundedHeadProtocol` is Uvicorn's httptools
protocol counting the bytes of each head as they arrive: past
:data:`MAX_REQUEST_HEAD_BYTES` the request is answered ``431`` with the API's error
body (code ``frame_too_large``) and the connection is ended, before more is parsed.

Ended gracefully ("lingering close", as web servers do): the answer and then our end of
the stream go out, and what the client still sends is read and dropped for up to
:data:`LINGER_SECONDS` before the socket is closed. Closed at once, a socket with unread
bytes resets the connection, and a client still sending would lose the answer with it.

And time: Uvicorn times a connection out only while it is idle after an answer, and any
byte received stops that clock, so a connection that never sends a request (a client that
lost power right after connecting), or sends its head a byte now and then, stays open
for good. Here a connection must send a whole head within the keep-alive timeout
(``serve.KEEP_ALIVE_SECONDS``) of being opened or of its last answer, or it is closed.

The count runs from the end of one request to the end of the next head (the blank line,
``\\r\\n\\r\\n``, found across reads too); a body is never counted. A pipelined request
whose head begins in the same read as the previous request's end is counted from the
next read on: the bound then holds to within one read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import MAX_REQUEST_HEAD_BYTES
from .errors import ApiError

log = structlog.get_logger(__name__)

#: How long a refused connection's further bytes are read and dropped before it is closed.
LINGER_SECONDS: Final = 2.0
_END: Final = b"\r\n\r\n"


def head_end(tail: bytes, data: bytes) -> int | None:
    """How many bytes of ``data`` complete a request head that ``tail`` (up to its last three
    bytes) began, or None if it does not end in ``data``."""
    across = (tail[-3:] + data[:3]).find(_END)
    if across >= 0:
        return across + len(_END) - len(tail[-3:])
    end = data.find(_END)
    return None if end < 0 else end + len(_END)


class BoundedHeadProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol, refusing a request head over :data:`MAX_REQUEST_HEAD_BYTES`
    and closing a connection whose next head does not arrive whole in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Bytes of the current head read so far; None from its end until the request's end.
        self._head_bytes: int | None = 0
        self._head_tail = b""
        #: Set once a head was refused: the connection only lingers until it is closed.
        self._lingering: asyncio.TimerHandle | None = None
        #: While a head is awaited: when the connection is closed unless one has arrived whole.
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next head is awaited once both the answer and the request (its body) are done,
        # whichever ends last: a pipelined head already read needs no deadline.
        if self._head_bytes is not None and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            log.info("request.head_timed_out", client=self.client[0] if self.client else None,
                     partial_head=bool(self._head_bytes))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes, self._head_tail = 0, b""
        if self.cycle.response_complete and not self.transport.is_closing():
            self._await_head()  # answered before its body had all arrived (an unread body)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return
        if self._head_bytes is not None:
            used = head_end(self._head_tail, data)
            total = self._head_bytes + (len(data) if used is None else used)
            if total > MAX_REQUEST_HEAD_BYTES:
                self._refuse_head()
                return
            if used is None:
                self._head_bytes, self._head_tail = total, (self._head_tail + data)[-3:]
        super().data_received(data)

    def _refuse_head(self) -> None:
        error = ApiError("frame_too_large", f"the request line and headers are over {MAX_REQUEST_HEAD_BYTES} bytes",
                         status=431, limit_bytes=MAX_REQUEST_HEAD_BYTES)
        body = json.dumps(error.body()).encode()
        log.warning("request.head_too_large", client=self.client[0] if self.client else None,
                    limit_bytes=MAX_REQUEST_HEAD_BYTES)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingering = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._lingering, self._head_deadline):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)
