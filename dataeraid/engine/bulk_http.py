"""Range GETs and part PUTs without httpx: raw HTTP/1.1 on blocking sockets in worker threads.

Receiving a download's ranges through httpx cost the daemon most of its CPU per
downloaded GB: h11's receive buffer copies every byte in and out, httpx wraps
each piece again, and every piece wakes a task on the event loop
(docs/benchmarks.md, "Where the daemon's time goes"). Here a worker thread sends
the request, reads the response head (parsed by h11, strictly), then, in one more
call for the whole range, ``recv_into`` a buffer that lives with the connection and
hands each slice (``RESPONSE_READ_BYTES``) to the caller's ``write`` in the same
thread. Each slice is reported to the event loop without waiting for it
(``TrioToken.run_sync_soon``), where it is charged to the job's bandwidth, turn and
progress (``landed``); the thread waits only while ``LANDING_AHEAD`` slices are
not landed yet, so limits and fairness hold per MiB, and a thread no longer waits
for the scheduler twice per slice (docs/benchmarks.md, "Where a large download waits").

What it promises:

- only what it can do exactly: an ``http``/``https`` URL without user info, and
  no proxy in the environment (:meth:`BulkHTTP.usable`); anything else is
  httpx's, as before;
- TLS always verified, with the context the httpx client uses
  (:func:`dataeraid.remote.ssl_context`); redirects are never followed;
- the answer is exactly the range asked for: ``206`` with ``Content-Length`` equal
  to the range and a ``Content-Range`` naming it, if it has one (``200`` only for a
  range that is the whole content from 0), no content coding; anything else, a short body or a
  connection that ends early is a :class:`~dataeraid.errors.TransientError` (so the
  engine's retry goes on from the last byte written), a non-2xx answer maps
  through :func:`dataeraid.remote.raise_for_status` as httpx's do;
- cancellation is prompt and leaves no thread behind: the socket is shut down,
  which ends a blocked ``recv_into`` at once (and a wait for ``landed``), and the
  call returns only after the worker did, so nothing writes into a file after its
  job stopped.

Part bodies go the other way on the same connections (:meth:`BulkHTTP.send_from`):
sending one through httpx took an async generator of 1 MiB reads, each a thread
hop and a copy into a ``bytes``, then h11's and the socket's copies. Here a worker
thread hands a slice (:func:`send_slice_bytes`) of the part from its file to the
socket: ``os.sendfile`` on plain TCP (no byte enters the process), and on TLS,
where the kernel cannot encrypt, a read into the connection's buffer and
``sendall``, the whole body in one worker-thread call. Each slice is charged on
the event loop before it goes (``charge``: the job's bandwidth limit, its turn, its
progress), as httpx's path did per block, at most ``LANDING_AHEAD`` slices ahead of
the thread, so the socket is fed while the loop charges. The
answer (a small JSON object or an empty S3 answer) is read whole by h11 and
handed back as an :class:`httpx.Response`, a non-2xx one mapped through
:func:`~dataeraid.remote.raise_for_status` first, so the caller reads it exactly
as it reads httpx's (an S3 store's ``BadDigest`` for a file that changed after it
was hashed is ``checksum_mismatch`` either way). A server that answers before the
body is all sent (an expired URL) and closes is heard: its answer is what the call
raises. Only the URL's scheme and ``host:port`` ever appear in an error: a part
URL's query is a credential.

Connections are kept alive per origin (a few idle ones each) and a connection
the server closed while idle is noticed before reuse.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import select
import socket
import ssl
import threading
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import h11
import httpx
import trio

from dataeraid.errors import DataeraiError, TransientError
from dataeraid.remote import RESPONSE_READ_BYTES, USER_AGENT, raise_for_status

#: ``write(offset, view)``: put ``view`` at stream ``offset``; runs in a worker thread.
WriteAt = Callable[[int, memoryview], None]
#: ``await landed(n)``: ``n`` more bytes were written, on the event loop, after each slice;
#: first ``landed(0)`` once, when the answer's head was found to be the range (its time is
#: the store's time to the first byte, for the download timeline).
Landed = Callable[[int], Awaitable[None]]
#: ``body(offset, length, out)``: hand bytes ``offset .. offset + length`` of a part's body
#: to ``out`` (:class:`Outlet`), in order; runs in a worker thread.
Body = Callable[[int, int, "Outlet"], None]
#: ``await charge(n)``: the next ``n`` bytes of a body are about to be sent, on the event loop.
Charge = Callable[[int], Awaitable[None]]
#: ``burst()``: the most one charge may let go at once now (a bandwidth limit's even pace);
#: None while nothing limits (:meth:`~dataeraid.engine.accounting.Accounting.burst_bytes`).
Burst = Callable[[], "int | None"]

_T = TypeVar("_T")

#: A response head larger than this is not a storage server's answer.
MAX_HEAD_BYTES = 64 * 1024
#: An error answer's body is read up to this much (enough for any JSON or XML error).
MAX_ERROR_BODY = 64 * 1024
#: Range GETs in worker threads at once (the scheduler's slots times parts_per_job stay far below).
MAX_RANGE_THREADS = 256
#: Idle connections kept per origin: one per range in flight is what a job reuses.
MAX_IDLE_PER_ORIGIN = 16
#: Bytes of a part body charged to the job (its bandwidth limit, its progress) before they
#: go, at most, while a bandwidth limit holds: the limit's quarter second
#: (:meth:`~dataeraid.engine.bandwidth.Spender.burst_bytes`) within these bounds, so a slow
#: limit feeds the link evenly rather than in bursts.
SEND_SLICE_BYTES = 1024 * 1024
MIN_SEND_SLICE_BYTES = 64 * 1024
#: A slice while nothing limits the job: each slice costs a charge on the event loop and a
#: hand-over to the sending thread, and 4 MiB ones take 0.1-0.15 CPU s/GB off the daemon
#: and 7-10% off a loopback upload's time against 1 MiB ones (docs/benchmarks.md, "Part
#: bodies in larger slices"). 4 MiB is also the burst rclone's bandwidth limiter allows.
UNPACED_SEND_SLICE_BYTES = 4 * 1024 * 1024
#: Slices of a range its worker thread may have written before the event loop landed them
#: (charged to the bandwidth limit, the job's turn, its progress): with one, the thread
#: would wait for the loop after every slice, as a thread hop per slice did; with two it
#: receives the next while the loop lands the last, and a limit still holds within a
#: slice of where it held (docs/benchmarks.md, "Where a large download waits").
LANDING_AHEAD = 2

_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+|\*)")


def send_slice_bytes(burst: int | None) -> int:
    """The next slice of a part body, for a limit that lets ``burst`` bytes go at once (None: no limit)."""
    if burst is None:
        return UNPACED_SEND_SLICE_BYTES
    return min(SEND_SLICE_BYTES, max(MIN_SEND_SLICE_BYTES, burst))


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    #: The Host header: the URL's own spelling of host and port.
    netloc: str


class _NoAnswer(Exception):
    """A reused connection ended before any byte of the answer: the server had closed it."""

    def __str__(self) -> str:
        return "the connection ended before any answer"


class _Connection:
    """One socket with its receive buffer; used by one request at a time.

    ``abort`` may be called from the event loop while a worker thread blocks in it.
    """

    def __init__(self, origin: _Origin, buffer_size: int) -> None:
        self.origin = origin
        self.sock: socket.socket | None = None
        self.buffer = memoryview(bytearray(buffer_size))
        self.reused = False
        self._lock = threading.Lock()
        self._aborted = False
        self._on_abort: Callable[[], None] | None = None

    def _adopt(self, sock: socket.socket) -> None:
        """From now on ``abort`` shuts ``sock`` down (raises if it already was aborted)."""
        with self._lock:
            self.sock = sock
            if self._aborted:
                raise OSError("the transfer was stopped")

    def on_abort(self, stop: Callable[[], None] | None) -> None:
        """Call ``stop`` too when the connection is aborted (at once if it already was), until
        the next ``on_abort``: it ends a wait of the worker that is not on the socket."""
        with self._lock:
            self._on_abort = stop
            aborted = self._aborted
        if aborted and stop is not None:
            stop()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        """End whatever a worker waits for on this connection, at once."""
        with self._lock:
            self._aborted = True
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    # socket.socket's own shutdown: an SSLSocket's would drop its TLS state under the worker.
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            stop = self._on_abort
        if stop is not None:
            stop()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()

    def stale(self) -> bool:
        """Whether an idle connection was closed (or spoken to) by the server meanwhile."""
        if self.sock is None:
            return True
        # Anything readable on an idle connection is its end (EOF, a reset, a TLS close_notify).
        # (Not a MSG_DONTWAIT peek: on a socket with a timeout, Python waits that long first.)
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def open(self, context: ssl.SSLContext, connect_timeout: float, read_timeout: float) -> None:
        """Connect (and shake hands, for https); in a worker thread."""
        origin = self.origin
        last: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                self._adopt(sock)
                sock.settimeout(connect_timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                if self._aborted:
                    raise
                continue
            break
        else:
            raise last or OSError(f"no address for {origin.host}")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.scheme == "https":
            sock = context.wrap_socket(sock, server_hostname=origin.host, do_handshake_on_connect=False)
            self._adopt(sock)
            sock.do_handshake()
        sock.settimeout(read_timeout)

    def send_and_read_head(self, request: h11.Request) -> tuple[h11.Response, bytes]:
        """Send ``request``; the answer's head and the body bytes that came with it."""
        parser = self.send_head(request)
        response, _ = self.read_head(parser)
        leftover, _ = parser.trailing_data
        return response, bytes(leftover)

    def send_head(self, request: h11.Request) -> h11.Connection:
        """Send ``request``'s head; the parser that reads its answer."""
        assert self.sock is not None
        # A new parser per request: a body bypasses h11, so its state ends with the request.
        parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        data = parser.send(request) or b""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            if self.reused:
                raise _NoAnswer() from exc
            raise
        return parser

    def read_head(self, parser: h11.Connection) -> tuple[h11.Response, int]:
        """The answer's head (informational answers skipped), and the bytes received for it."""
        assert self.sock is not None
        received = 0
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = self.sock.recv(MAX_HEAD_BYTES)
                except ConnectionResetError as exc:
                    if self.reused and not received:
                        raise _NoAnswer() from exc
                    raise
                if not data and self.reused and not received:
                    raise _NoAnswer()
                received += len(data)
                parser.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return event, received
            raise h11.RemoteProtocolError(f"the server ended the connection before its answer ({event!r})")

    def read_answer(self, parser: h11.Connection) -> tuple[h11.Response, bytes, bool]:
        """The whole answer to a request whose body was sent past h11: its head, its body (at
        most ``MAX_ERROR_BODY`` bytes), and whether it ended within that (the connection
        may then serve another request)."""
        assert self.sock is not None
        response, _ = self.read_head(parser)
        body = bytearray()
        while len(body) <= MAX_ERROR_BODY:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(MAX_HEAD_BYTES)
                parser.receive_data(data)  # b"": the end of the connection, which h11 judges
                continue
            if isinstance(event, h11.Data):
                body += event.data
                continue
            if isinstance(event, h11.EndOfMessage):
                return response, bytes(body), True
            raise h11.RemoteProtocolError(f"the server ended the connection within its answer ({event!r})")
        return response, bytes(body[:MAX_ERROR_BODY]), False

    def receive(self, head: bytes, want: int) -> int:
        """Fill the buffer with ``head`` then the socket's bytes, up to ``want``; how many
        there are (fewer only where the connection ended)."""
        assert self.sock is not None
        view = self.buffer
        got = len(head)
        view[:got] = head
        while got < want:
            n = self.sock.recv_into(view[got:want], want - got)
            if n == 0:
                break
            got += n
        return got

    def read_error_body(self, head: bytes, declared: int | None) -> bytes:
        assert self.sock is not None
        body = bytearray(head)
        limit = min(declared if declared is not None else MAX_ERROR_BODY, MAX_ERROR_BODY)
        with contextlib.suppress(OSError):
            while len(body) < limit:
                data = self.sock.recv(limit - len(body))
                if not data:
                    break
                body += data
        return bytes(body[:limit])


class _Gate:
    """How many more slices a range's worker thread may receive before the event loop
    landed the ones it has (``take`` blocks at none); ``abort`` ends every wait."""

    def __init__(self, credit: int) -> None:
        self._credit = credit
        self._aborted = False
        self._changed = threading.Condition()

    def take(self) -> bool:
        """One slice's credit, once there is one; False once aborted. In the worker thread."""
        with self._changed:
            while self._credit <= 0 and not self._aborted:
                self._changed.wait()
            if self._aborted:
                return False
            self._credit -= 1
            return True

    def give(self) -> None:
        with self._changed:
            self._credit += 1
            self._changed.notify()

    def abort(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()


class Outlet(Protocol):
    """Where a :data:`Body` puts a part's bytes, from a worker thread."""

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Send ``count`` bytes of file ``fd`` from ``offset`` (read without moving its
        position); how many went, fewer only where the file ends first."""
        ...

    def sendall(self, data: bytes | memoryview) -> None:
        """Send ``data`` (bytes held in memory)."""
        ...


class _SocketOutlet:
    """An :class:`Outlet` onto a connection's socket."""

    def __init__(self, conn: _Connection, timeout: float) -> None:
        assert conn.sock is not None
        self._conn = conn
        self._sock = conn.sock
        self._timeout = timeout

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """``os.sendfile`` on plain TCP; over TLS, through the connection's buffer."""
        if isinstance(self._sock, ssl.SSLSocket):
            return self._copy(fd, offset, count)
        out = self._sock.fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, fd, offset + sent, count - sent)
            except BlockingIOError:
                # A socket with a timeout is non-blocking underneath: wait for room, as sendall does.
                self._wait_writable(out)
                continue
            if n == 0:
                break
            sent += n
        return sent

    def sendall(self, data: bytes | memoryview) -> None:
        self._sock.sendall(data)

    def _copy(self, fd: int, offset: int, count: int) -> int:
        view = self._conn.buffer
        sent = 0
        while sent < count:
            n = os.preadv(fd, [view[:min(len(view), count - sent)]], offset + sent)
            if n == 0:
                break
            self._sock.sendall(view[:n])
            sent += n
        return sent

    def _wait_writable(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        # An aborted socket polls as hung up at once; the next sendfile then raises.
        if not poller.poll(self._timeout * 1000):
            raise TimeoutError("timed out")


def _header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


class BulkHTTP:
    """The download engine's range GETs on raw HTTP/1.1 (the module's docstring says what it promises)."""

    def __init__(self, context: ssl.SSLContext, *, connect_timeout_s: float, read_timeout_s: float,
                 slice_bytes: int = RESPONSE_READ_BYTES, user_agent: str = USER_AGENT) -> None:
        self._context = context
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._slice = slice_bytes
        self._user_agent = user_agent
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False
        # A worker here may wait on the network for a whole read timeout; on Trio's default
        # limiter, enough slow ranges would hold every thread the store and the hashers need.
        self._threads = trio.CapacityLimiter(MAX_RANGE_THREADS)

    @classmethod
    def like(cls, http: httpx.AsyncClient, context: ssl.SSLContext) -> BulkHTTP:
        """One with ``http``'s timeouts and ``context`` (the one ``http`` verifies TLS with)."""
        timeout = http.timeout
        return cls(context, connect_timeout_s=timeout.connect or 10.0, read_timeout_s=timeout.read or 60.0)

    def usable(self, url: str) -> bool:
        """Whether this can fetch ``url`` exactly as httpx would; else httpx must."""
        try:
            parts = urlsplit(url)
            _ = parts.port  # a port that is not one raises here
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return False
        # httpx follows the proxy variables (and NO_PROXY's exceptions); rather than
        # rebuild its rules, any proxy in the environment leaves every range to it.
        proxies = urllib.request.getproxies()
        return not any(proxies.get(key) for key in ("http", "https", "all"))

    def _origin(self, url: str) -> tuple[_Origin, str]:
        parts = urlsplit(url)
        assert parts.hostname is not None
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _Origin(parts.scheme, parts.hostname, port, parts.netloc), target

    def _request(self, origin: _Origin, target: str, headers: Mapping[str, str], start: int,
                 length: int) -> h11.Request:
        mine = [("Host", origin.netloc), ("User-Agent", self._user_agent), ("Accept-Encoding", "identity"),
                ("Range", f"bytes={start}-{start + length - 1}")]
        taken = {name.lower() for name, _ in mine} | {"connection", "content-length", "transfer-encoding"}
        signed = [(name, value) for name, value in headers.items() if name.lower() not in taken]
        try:
            return h11.Request(method="GET", target=target, headers=mine + signed)
        except h11.LocalProtocolError as exc:
            raise DataeraiError("internal", f"a signed URL or header h11 cannot send: {exc}") from exc

    def _upload_request(self, method: str, origin: _Origin, target: str, headers: Mapping[str, str],
                        length: int) -> h11.Request:
        mine = [("Host", origin.netloc), ("User-Agent", self._user_agent), ("Accept-Encoding", "identity"),
                ("Content-Length", str(length))]
        taken = {name.lower() for name, _ in mine} | {"connection", "transfer-encoding", "expect"}
        for name, value in headers.items():
            if name.lower() == "content-length" and value.strip() != str(length):
                raise DataeraiError("internal", f"a part target asks for Content-Length {value!r} "
                                                f"for a body of {length} bytes")
        signed = [(name, value) for name, value in headers.items() if name.lower() not in taken]
        try:
            return h11.Request(method=method, target=target, headers=mine + signed)
        except h11.LocalProtocolError as exc:
            raise DataeraiError("internal", f"a signed URL or header h11 cannot send: {exc}") from exc

    def _take(self, origin: _Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.stale():
                conn.close()
                continue
            conn.reused = True
            return conn
        return _Connection(origin, self._slice)

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
        else:
            idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; later ones are closed after their request."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def read_into(self, url: str, headers: Mapping[str, str], start: int, length: int, write: WriteAt,
                        landed: Landed, what: str) -> None:
        """Fetch ``length`` (> 0) bytes from ``start`` of ``url`` into ``write``, slice by
        slice in order, awaiting ``landed(n)`` after each slice is written.

        Raises as :class:`~dataeraid.engine.repository.Repository` methods do; bytes
        already written when it raises were reported to ``landed``.
        """
        if length <= 0:
            raise ValueError("a bulk range is at least one byte")
        origin, target = self._origin(url)
        request = self._request(origin, target, headers, start, length)

        async def answer(used: list[_Connection]) -> tuple[bool, None]:
            return await self._answer(used, origin, request, start, length, write, landed, what), None

        await self._guarded(origin, answer)

    async def send_from(self, method: str, url: str, headers: Mapping[str, str], length: int, body: Body,
                        charge: Charge, what: str, sent: Callable[[], None] | None = None, *,
                        burst: Burst | None = None) -> httpx.Response:
        """Send a ``length``-byte body (``body``, slice after slice, each awaiting
        ``charge(n)`` before it goes) to ``url``; ``sent()`` once all of it was handed to
        the connection. Each slice is as large as ``burst()`` allows (:func:`send_slice_bytes`;
        without ``burst``, :data:`SEND_SLICE_BYTES`). The 2xx answer, read whole; a non-2xx one raises through
        :func:`~dataeraid.remote.raise_for_status`, a failed connection or a body that
        could not be sent is a :class:`~dataeraid.errors.TransientError`.

        Bytes charged before it raises may not have arrived; the caller takes them back.
        What ``body`` raises (the source changed) is raised as it is.
        """
        if length < 0:
            raise ValueError("a body is at least empty")
        origin, target = self._origin(url)
        request = self._upload_request(method, origin, target, headers, length)

        def slicing() -> int:
            return send_slice_bytes(burst()) if burst is not None else SEND_SLICE_BYTES

        async def exchange(used: list[_Connection]) -> tuple[bool, httpx.Response]:
            return await self._exchange(used, origin, request, length, body, charge, slicing, what, sent)

        return await self._guarded(origin, exchange)

    async def _guarded(self, origin: _Origin,
                       work: Callable[[list[_Connection]], Awaitable[tuple[bool, _T]]]) -> _T:
        """``work`` on a connection to ``origin`` (``used[-1]``; it appends a new one if that
        one turned out closed), which is aborted at once if the caller is cancelled. The
        connections are closed after, but the last one when ``work`` says it may be kept."""
        conn = self._take(origin)
        used: list[_Connection] = [conn]
        keep = False
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                stopped = False

                async def abort_on_cancel() -> None:
                    try:
                        await trio.sleep_forever()
                    finally:
                        if not stopped:
                            for each in used:
                                each.abort()

                nursery.start_soon(abort_on_cancel)
                try:
                    keep, result = await work(used)
                except BaseException as exc:  # raised below, not wrapped in the nursery's group
                    failure = exc
                finally:
                    stopped = True
                    nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            failure = None
            for each in used[:-1] if keep else used:
                each.close()
        if keep:
            self._give_back(used[-1])
        return result

    async def _answer(self, used: list[_Connection], origin: _Origin, request: h11.Request, start: int,
                      length: int, write: WriteAt, landed: Landed, what: str) -> bool:
        """The request on ``used[-1]`` (on a new connection, appended, if that one turned out
        closed); whether the connection may be kept for another request."""
        where = f"{origin.scheme}://{origin.netloc}"
        conn = used[-1]
        try:
            try:
                response, body = await trio.to_thread.run_sync(self._head, conn, request, limiter=self._threads)
            except _NoAnswer:
                if conn.aborted:
                    raise
                conn = _Connection(origin, self._slice)
                used.append(conn)
                response, body = await trio.to_thread.run_sync(self._head, conn, request, limiter=self._threads)
        except (OSError, h11.ProtocolError) as exc:
            raise TransientError(f"{what}: cannot reach {where}: {_reason(exc)}") from exc
        except _NoAnswer as exc:
            raise TransientError(f"{what}: {where} closed the connection before answering") from exc
        if response.status_code >= 300:
            declared = _header(response, b"content-length")
            error_body = await trio.to_thread.run_sync(
                conn.read_error_body, body, int(declared) if declared and declared.isdigit() else None,
                limiter=self._threads)
            raise_for_status(httpx.Response(response.status_code, headers=list(response.headers),
                                            content=error_body), what)
        _check(response, body, start, length, what)
        await landed(0)
        received, failure = await self._receive(conn, body, start, length, write, landed)
        if failure is not None:
            raise TransientError(f"{what}: connection to {where} failed after {received} of {length} bytes: "
                                 f"{_reason(failure)}") from failure
        if received < length:
            raise TransientError(f"{what}: {where} ended the connection after {received} of {length} bytes")
        return response.http_version == b"1.1" and (_header(response, b"connection") or b"").lower() != b"close"

    async def _exchange(self, used: list[_Connection], origin: _Origin, request: h11.Request, length: int,
                        body: Body, charge: Charge, slicing: Callable[[], int], what: str,
                        sent: Callable[[], None] | None) -> tuple[bool, httpx.Response]:
        """The request and its body on ``used[-1]`` (on a new connection, appended, if that
        one turned out closed); whether the connection may be kept, and the answer."""
        where = f"{origin.scheme}://{origin.netloc}"
        conn = used[-1]
        try:
            try:
                parser = await trio.to_thread.run_sync(self._send_head, conn, request, limiter=self._threads)
            except _NoAnswer:
                if conn.aborted:
                    raise
                conn = _Connection(origin, self._slice)
                used.append(conn)
                parser = await trio.to_thread.run_sync(self._send_head, conn, request, limiter=self._threads)
        except (OSError, _NoAnswer) as exc:
            raise TransientError(f"{what}: cannot reach {where}: {_reason(exc)}") from exc
        outlet = _SocketOutlet(conn, self._read_timeout)
        done, failure = await self._send_body(conn, length, body, outlet, charge, slicing)
        if failure is not None:
            # The server may have answered early (an expired URL, a refused part) and
            # closed: that answer, if it came, says more than the broken pipe does.
            failed = TransientError(f"{what}: connection to {where} failed after {done} of {length} body "
                                    f"bytes: {_reason(failure)}")
            if not conn.aborted and not isinstance(failure, TimeoutError):
                early = await trio.to_thread.run_sync(self._early_answer, conn, parser, limiter=self._threads)
                if early is not None:
                    raise_for_status(early, what)
            raise failed from failure
        if sent is not None:
            sent()
        try:
            response, content, complete = await trio.to_thread.run_sync(conn.read_answer, parser,
                                                                        limiter=self._threads)
        except (OSError, h11.ProtocolError, _NoAnswer) as exc:
            raise TransientError(f"{what}: no answer from {where} after the body: {_reason(exc)}") from exc
        answer = httpx.Response(response.status_code, headers=list(response.headers), content=content)
        raise_for_status(answer, what)
        if not complete:
            raise TransientError(f"{what}: {where} answered with more than {MAX_ERROR_BODY} bytes")
        keep = response.http_version == b"1.1" and (_header(response, b"connection") or b"").lower() != b"close"
        return keep, answer

    async def _send_body(self, conn: _Connection, length: int, body: Body, outlet: _SocketOutlet,
                         charge: Charge, slicing: Callable[[], int]) -> tuple[int, OSError | None]:
        """The ``length``-byte body into ``outlet`` by one worker-thread call: how many bytes
        went, and the connection's failure if it failed.

        Each slice (``slicing()`` bytes, asked as it is charged: a limit set meanwhile holds
        from the next slice on) is charged on the event loop before it goes (a task here, in
        order, at most ``LANDING_AHEAD`` slices ahead of the thread), so the thread sends the
        next slice while the loop charges the one after, where a slice charged then sent in
        turn left the socket idle between them; where ``charge`` waits for the bandwidth
        limit or the job's turn, the thread waits with it."""
        token = trio.lowlevel.current_trio_token()
        gate = _Gate(0)
        window = trio.Semaphore(LANDING_AHEAD)
        charged: collections.deque[int] = collections.deque()  # the slices charged, not yet sent
        went = [0]

        def push() -> None:
            # In the worker thread: nothing here waits for the event loop but ``gate.take``.
            while went[0] < length:
                if not gate.take():
                    raise OSError("the transfer was stopped")
                n = charged.popleft()
                body(went[0], n, outlet)
                went[0] += n
                token.run_sync_soon(window.release)

        async def charge_ahead() -> None:
            at = 0
            while at < length:
                await window.acquire()
                n = min(slicing(), length - at)
                await charge(n)
                charged.append(n)
                gate.give()
                at += n

        def stop_charging(nursery: trio.Nursery) -> None:
            nursery.cancel_scope.cancel()  # nothing more to charge once the thread stopped

        failure = await self._thread_beside(conn, gate, push, charge_ahead, stop_charging)
        return went[0], failure

    async def _thread_beside(self, conn: _Connection, gate: _Gate, worker: Callable[[], None],
                             beside: Callable[[], Awaitable[None]],
                             worker_done: Callable[[trio.Nursery], None]) -> OSError | None:
        """``worker`` in a worker thread, ``beside`` in a task on the event loop (the two pace
        each other through ``gate``), then ``worker_done(nursery)`` to let ``beside`` end. The
        connection's failure (an ``OSError`` of the worker), else None; what either raised
        otherwise is raised as it is, not in an exception group. A failure of ``beside``, and
        an abort of ``conn``, end the worker's wait at ``gate``."""
        stopped: list[BaseException] = []

        async def guarded() -> None:
            try:
                await beside()
            except trio.Cancelled:
                raise  # this nursery's (the worker is done), or the caller's (which aborts ``conn``)
            except BaseException as exc:
                stopped.append(exc)
                conn.abort()  # the worker may wait for this task at ``gate``: end it

        conn.on_abort(gate.abort)
        failure: OSError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guarded)
                try:
                    await trio.to_thread.run_sync(worker, limiter=self._threads)
                except OSError as exc:
                    failure = exc
                except BaseException as exc:  # what the caller's callback raised (the source changed...)
                    stopped.append(exc)
                finally:
                    worker_done(nursery)
            if stopped:
                raise stopped[0]
        finally:
            stopped.clear()
            conn.on_abort(None)
        return failure

    def _send_head(self, conn: _Connection, request: h11.Request) -> h11.Connection:
        if conn.sock is None:
            conn.open(self._context, self._connect_timeout, self._read_timeout)
        return conn.send_head(request)

    @staticmethod
    def _early_answer(conn: _Connection, parser: h11.Connection) -> httpx.Response | None:
        """An answer the server sent before it stopped taking the body, if it did."""
        try:
            response, content, _ = conn.read_answer(parser)
        except (OSError, h11.ProtocolError, _NoAnswer):
            return None
        return httpx.Response(response.status_code, headers=list(response.headers), content=content)

    def _head(self, conn: _Connection, request: h11.Request) -> tuple[h11.Response, bytes]:
        if conn.sock is None:
            conn.open(self._context, self._connect_timeout, self._read_timeout)
        return conn.send_and_read_head(request)

    async def _receive(self, conn: _Connection, head: bytes, start: int, length: int, write: WriteAt,
                       landed: Landed) -> tuple[int, OSError | None]:
        """The range's body, after ``head``, into ``write`` by one worker-thread call: how many
        bytes arrived (each landed), and the connection's failure if it failed.

        The thread reports each slice to the event loop without waiting for it (the loop's
        ``landed`` runs in a task here, in order) and waits only when ``LANDING_AHEAD``
        slices are written but not yet landed: where ``landed`` waits for the bandwidth
        limit or the job's turn, the thread waits with it."""
        token = trio.lowlevel.current_trio_token()
        reports, arrivals = trio.open_memory_channel[int](math.inf)
        gate = _Gate(LANDING_AHEAD)
        written = [0]
        landed_bytes = 0

        def pull() -> None:
            # In the worker thread: nothing here waits for the event loop but ``gate.take``.
            body = head
            while written[0] < length:
                if not gate.take():
                    raise OSError("the transfer was stopped")
                want = min(self._slice, length - written[0])
                got = conn.receive(body, want)
                body = b""
                if got:
                    write(start + written[0], conn.buffer[:got])
                    written[0] += got
                    token.run_sync_soon(reports.send_nowait, got)
                if got < want:
                    return

        async def land() -> None:
            nonlocal landed_bytes
            async for n in arrivals:
                await landed(n)
                landed_bytes += n
                gate.give()

        # Every report the thread sent was delivered before its return was (run_sync_soon is
        # first in, first out): the channel ends after the last of them.
        failure = await self._thread_beside(conn, gate, pull, land, lambda _: reports.close())
        return landed_bytes, failure

def _check(response: h11.Response, body: bytes, start: int, length: int, what: str) -> None:
    """A 2xx answer is exactly the range asked for, or the error it is."""
    status = response.status_code
    declared = _header(response, b"content-length")
    if status == 200 and start > 0:
        raise DataeraiError("internal", f"{what}: the server ignored the byte range")
    problem = None
    if status not in (200, 206):
        problem = f"HTTP {status} to a range request"
    elif _header(response, b"transfer-encoding") is not None or declared is None:
        problem = "no Content-Length"
    elif (_header(response, b"content-encoding") or b"identity").lower() != b"identity":
        problem = "a content coding nobody asked for"
    elif int(declared) != length:
        if status == 200:
            raise DataeraiError("internal", f"{what}: the server ignored the byte range")
        problem = f"Content-Length {int(declared)} for a range of {length} bytes"
    elif status == 206 and (declared_range := _header(response, b"content-range")) is not None:
        # RFC 9110 asks a 206 for its Content-Range, but servers that leave it out exist and the
        # httpx path took them: a range of the right length is taken (the whole-file SHA-256
        # still proves its bytes), one that names other bytes is not.
        found = _CONTENT_RANGE.fullmatch(declared_range)
        if found is None or (int(found[1]), int(found[2])) != (start, start + length - 1):
            problem = f"Content-Range {(_header(response, b'content-range') or b'').decode('latin-1')!r} " \
                      f"for bytes {start}-{start + length - 1}"
    if problem is None and len(body) > length:
        problem = f"{len(body) - length} bytes more than Content-Length"
    if problem is not None:
        raise TransientError(f"{what}: the server's answer is not the range asked for: {problem}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:1].lower() + text[1:]
