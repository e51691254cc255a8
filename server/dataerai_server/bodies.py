"""Answering before a request body is read: end the connection rather than read a large rest.

A route may answer without reading the whole request body: a part ``PUT`` refused for
its signature before any byte is read, or one whose storage failed half-way (a full
disk). Uvicorn then reads what is left of the body and drops it, so that the connection
can carry the client's next request. For a few bytes that is the cheapest way on; for
the rest of a 64 MiB part it is the client sending, and the server reading, 64 MiB for
nothing before the client even looks at the answer.

:class:`CloseOnLargeUnreadBody` wraps the application so that when a response starts with
more than :data:`DRAIN_BYTES` of the request body unread (or an unknown amount: a chunked
body), the response carries ``Connection: close``. Uvicorn closes the connection right
after it; the client's write fails and it reads the answer at once (httpx does so). A
smaller rest is left to Uvicorn to drop, and the connection stays open.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The most of an unread body that is read (and dropped) to keep a connection open.
DRAIN_BYTES: Final = 1 << 20


class _RequestBody:
    """The request's ``receive``, counting the body and noticing its end."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._receive = receive
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        self.length: int | None = int(length) if length is not None and length.isdigit() else None
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        #: The body has been read to its end (or there is none, or the client has gone).
        self.complete = not self.chunked and not self.length
        self.received = 0

    @property
    def remaining(self) -> int | None:
        """Body bytes not read yet, if the length is known."""
        return None if self.length is None else max(0, self.length - self.received)

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        elif message["type"] == "http.disconnect":
            self.complete = True
        return message


class CloseOnLargeUnreadBody:
    """ASGI middleware: a response never waits on a large request body the app left unread
    (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _RequestBody(scope, receive)
        if body.complete or (not body.chunked and body.length is not None and body.length <= self.drain_bytes):
            # No body, or a small one (a JSON request): whatever is left unread is dropped by
            # Uvicorn at little cost, and nothing here is needed.
            await self.app(scope, receive, send)
            return

        async def finishing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                remaining = body.remaining
                if remaining is None or remaining > self.drain_bytes:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, body.receive, finishing_send)
