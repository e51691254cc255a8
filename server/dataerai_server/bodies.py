"""Answering before a request body is read: drain what is left, or close the connection.

A route may answer without reading the whole request body: a part ``PUT`` refused for
its signature before any byte is read, or one whose storage failed half-way (a full
disk). Hypercorn queues a few body chunks for the app (``serve.APP_QUEUE_CHUNKS``) and
stops reading the socket while that queue is full; when the response ends it puts an
``http.disconnect`` into the same queue, and waits for room. With nobody left reading,
that wait never ends: the answer was written, but the client, still sending its body
into a socket nobody reads, hangs until its write timeout, and the connection with it.

:class:`FinishRequestBodies` wraps the application so that this cannot happen. When a
response starts while the request body is unread:

- if at most :data:`DRAIN_BYTES` of it are left (by ``Content-Length``), they are read
  and dropped first; the connection stays open for the client's next request;
- otherwise the response carries ``Connection: close`` and a task keeps taking (and
  dropping) what Hypercorn queues until the connection is gone, which Hypercorn does
  right after the response: the client's write fails and it reads the answer at once
  (httpx does so), instead of sending the rest of a large body for nothing.
"""

from __future__ import annotations

from typing import Final

import trio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The most of an unread body that is read (and dropped) to keep a connection open.
DRAIN_BYTES: Final = 1 << 20


class _RequestBody:
    """The request's ``receive``, counting the body and noticing its end."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.length: int | None = int(length) if length is not None and length.isdigit() else None
        self.chunked = chunked
        #: The body has been read to its end (or there is none, or the client has gone).
        self.complete = not chunked and not self.length
        self.received = 0
        self._discarding = False
        self._gone = trio.Event()

    @property
    def remaining(self) -> int | None:
        """Body bytes not read yet, if the length is known."""
        return None if self.length is None else max(0, self.length - self.received)

    async def _next(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        elif message["type"] == "http.disconnect":
            self.complete = True
            self._gone.set()
        return message

    async def receive(self) -> Message:
        """What the app reads. Once the rest is being discarded, only the disconnect is left for it."""
        if self._discarding:
            await self._gone.wait()
            return {"type": "http.disconnect"}
        return await self._next()

    async def drain(self) -> None:
        """Read and drop the rest of the body."""
        while not self.complete:
            await self._next()

    async def discard_until_disconnect(self) -> None:
        """Take and drop whatever arrives until the connection is gone (run as a task)."""
        self._discarding = True
        while not self._gone.is_set():
            await self._next()


class FinishRequestBodies:
    """ASGI middleware: a response never waits on a request body the app left unread (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _RequestBody(scope, receive)
        if body.complete:
            # No body (most requests): nothing can be left unread.
            await self.app(scope, receive, send)
            return
        if not body.chunked and body.length is not None and body.length <= self.drain_bytes:
            # A small body (a JSON request) is drained at worst, never discarded by a task:
            # no nursery for it, which every request paid for before.
            async def draining_send(message: Message) -> None:
                if message["type"] == "http.response.start" and not body.complete:
                    await body.drain()
                await send(message)

            await self.app(scope, body.receive, draining_send)
            return
        async with trio.open_nursery() as nursery:

            async def finishing_send(message: Message) -> None:
                if message["type"] == "http.response.start" and not body.complete:
                    remaining = body.remaining
                    if remaining is not None and remaining <= self.drain_bytes:
                        await body.drain()
                    if not body.complete:
                        headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                        message = {**message, "headers": [*headers, (b"connection", b"close")]}
                        nursery.start_soon(body.discard_until_disconnect)
                await send(message)

            await self.app(scope, body.receive, finishing_send)
            # A complete response had the disconnect queued before its last send returned. A
            # response cut off half-way gets its disconnect only after the app has returned:
            # waiting for it here would never end.
            nursery.cancel_scope.cancel()
