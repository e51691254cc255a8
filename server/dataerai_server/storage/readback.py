"""The whole-file SHA-256 of a stored S3 object, read back as range GETs in flight at once.

S3 keeps only per-part checksums, so the server proves the whole-file digest of a
completed multipart upload by reading it back (``s3.py``). Through boto3 that was one
``get_object`` streamed in one thread, so the store served it from one request at a
time (docs/benchmarks.md, "The completion's read-back"). Here the object is read as
``RANGE_BYTES`` ranges, ``RANGES_IN_FLIGHT`` of them requested at once, each on its own
kept-alive HTTP/1.1 connection (``http.client``), and one worker thread reads them in
order: the range at the head is read ``readinto`` one preallocated ``READ_BYTES`` buffer
and each slice hashed at once, while the store already sends the next ranges into
their connections' socket buffers. When a range is done its connection asks for the
range ``RANGES_IN_FLIGHT`` further on.

Why the kernel's socket buffers hold what arrived ahead, not buffers of our own: a slice
hashed right after it arrived is still in the CPU's cache, and hashing whole ranges
received ahead into a pool of buffers cost the server about 0.3 CPU s/GB more (a third
more) on this machine, which on two shared cores also cost wall time. The memory of a
read-back is one ``READ_BYTES`` buffer whatever the object's size; what the store
sends ahead is bounded by TCP flow control per connection. An object of one range is
one plain GET on one connection.

The GETs are presigned by the boto3 client (its credentials, path-style), renewed
while a long read-back goes on. Each names the ETag the caller's HEAD saw (``If-Match``),
so ranges of two different objects under the key can never be hashed together. The store
is reached as the client reaches it, from the :class:`ConnectionSettings` its maker
resolved (``s3.make_client``: the endpoint, the CA bundle, the proxy, a client
certificate, the timeouts); TLS is verified against that CA bundle and the host name.
Where this module cannot do what the client would (a proxy, a client certificate,
verification turned off, an endpoint that is not http(s), buckets addressed by host name
rather than path, a CA bundle it cannot load),
:meth:`ObjectReader.for_connection` says why (``ValueError``) and ``s3.py`` reads through
boto3, with a warning.

Every failure is a :class:`ReadbackError` (a ``StorageError``) carrying the store's error
code where it answered one (``NoSuchKey``, ``PreconditionFailed``…): an error answer, a
connection that fails or ends early, and an answer that is not exactly the bytes asked
for (status, ``Content-Length``, ``Content-Range``, ``ETag``, a content coding) are all
errors; nothing short or different is ever hashed as if it were the object.
Cancellation is prompt: the sockets are shut down, which ends a blocked read at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import anyio

from ..threads import WorkerThreads
from .base import StoreError

MiB: Final = 1 << 20
#: Bytes per range GET. SeaweedFS spends milliseconds of CPU on each request: 1 MiB ranges cost
#: it 4.8 CPU s/GB, 8 MiB ones 1.4-1.6 and 16 MiB ones 1.2-1.5 (docs/benchmarks.md).
RANGE_BYTES: Final = 16 * MiB
#: Range GETs requested at once (connections to the store).
RANGES_IN_FLIGHT: Final = 4
#: The one buffer of a read-back, and the slice hashed at a time (well inside a core's cache).
READ_BYTES: Final = 1 * MiB
#: Presigned GETs are valid this long and renewed when half of that is gone.
URL_TTL_S: Final = 900
#: An error answer's body is read up to this much (S3's XML errors are far smaller).
MAX_ERROR_BODY: Final = 64 * 1024

_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class ReadbackError(StoreError):
    """The object could not be read back exactly; ``code`` is the store's error code, if it
    answered one (else empty)."""


def error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an S3 error answer's body, if it has one."""
    found = _CODE.search(body)
    return found[1].decode("utf-8", "replace") if found else None


@dataclass(frozen=True)
class ConnectionSettings:
    """How a client reaches its store, as the client's maker configured and resolved it: what
    the reader needs to reach the store the same way. Plain values, no client library."""

    #: The store's ``http(s)://`` URL (what requests go to).
    endpoint_url: str
    #: Whether buckets are addressed by path on the endpoint, so that presigned URLs name the
    #: endpoint's host (not with virtual-hosted addressing: ``BUCKET.s3.amazonaws.com``).
    path_style: bool
    #: Whether the store's certificate and host name are checked (https only).
    verify: bool
    #: The PEM file of the CA certificates they are checked against ("" where not verified).
    ca_certs: str
    #: The proxy requests to the endpoint go through (None: straight to the store).
    proxy: str | None
    #: Whether the client presents a certificate of its own.
    client_cert: bool
    connect_timeout: float
    read_timeout: float


class ObjectReader:
    """Reads objects of one endpoint back and hashes them; create with :meth:`for_connection`."""

    def __init__(self, endpoint: str, context: ssl.SSLContext | None, *, connect_timeout: float,
                 read_timeout: float, range_bytes: int = RANGE_BYTES, in_flight: int = RANGES_IN_FLIGHT) -> None:
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.hostname or split.username:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        if split.scheme == "https" and context is None:
            raise ValueError("an https endpoint needs a TLS context")
        self.scheme = split.scheme
        self.host = split.hostname
        self.port = split.port or (443 if split.scheme == "https" else 80)
        self.context = context if split.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.range_bytes = range_bytes
        self.in_flight = in_flight

    @classmethod
    def for_connection(cls, connection: ConnectionSettings) -> ObjectReader:
        """A reader that reaches the store as the client of ``connection`` does.

        Raises ``ValueError`` saying why where it cannot do what that client would: a proxy, a
        client certificate, verification turned off, an endpoint that is not http(s), buckets
        addressed by host name, a CA bundle that does not load (the caller then reads another
        way)."""
        endpoint = connection.endpoint_url
        if connection.proxy:
            raise ValueError(f"the client's requests go through the proxy {_without_userinfo(connection.proxy)}")
        if connection.client_cert:
            raise ValueError("the client presents a certificate of its own")
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        if not connection.path_style:
            # The ranges go to the endpoint's host; a URL signed for another host would not do.
            raise ValueError("the client addresses buckets by host name (virtual-hosted style), not by path")
        context = None
        if endpoint.startswith("https://"):
            if not connection.verify:
                raise ValueError("the client does not verify the store's certificate")
            try:  # the bundle only, as urllib3 loads it for botocore (no system store beside it)
                context = ssl.create_default_context(cafile=os.path.expanduser(connection.ca_certs))
            except OSError as exc:  # ssl.SSLError too
                raise ValueError(f"the CA bundle {connection.ca_certs!r} does not load: {exc}") from exc
        return cls(endpoint, context, connect_timeout=connection.connect_timeout,
                   read_timeout=connection.read_timeout)

    def new_connection(self) -> http.client.HTTPConnection:
        """A connection to the endpoint, not opened yet (TLS as configured, the connect timeout)."""
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)

    async def sha256(self, presign: Callable[[], str], size: int, etag: str, threads: WorkerThreads) -> str:
        """The SHA-256 (hex) of the ``size`` bytes of the object ``presign()`` gives a GET URL of,
        while its ETag is ``etag``; in one of ``threads``."""
        count = max(1, -(-size // self.range_bytes))
        conns = [_Connection(self) for _ in range(min(self.in_flight, count))]
        stopped = False
        digest = ""
        failure: ReadbackError | None = None
        try:
            async with anyio.create_task_group() as tasks:

                async def abort_on_cancel() -> None:
                    try:
                        await anyio.sleep_forever()
                    finally:
                        if not stopped:
                            for conn in conns:
                                conn.abort()

                tasks.start_soon(abort_on_cancel)
                try:
                    digest = await threads.run(self._read, conns, _RenewedURL(presign), size, etag)
                except ReadbackError as exc:  # raised below, not wrapped in the task group's group
                    failure = exc
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    failure = ReadbackError(f"reading the object back failed: {_reason(exc)}")
                    failure.__cause__ = exc
                finally:
                    stopped = True
                    tasks.cancel_scope.cancel()
        finally:
            for conn in conns:
                conn.close()
        if failure is not None:
            raise failure
        return digest

    def _read(self, conns: list[_Connection], url: _RenewedURL, size: int, etag: str) -> str:
        """In a worker thread: ask for the first ranges at once, then read them in order."""
        hasher = hashlib.sha256()
        buffer = memoryview(bytearray(min(READ_BYTES, max(size, 1))))
        span = self.range_bytes if size > self.range_bytes else max(size, 1)
        starts = range(0, max(size, 1), span)
        for conn, start in zip(conns, starts, strict=False):  # the first len(conns) ranges
            conn.ask(url.target(), start, min(span, size - start), size, etag)
        for index, start in enumerate(starts):
            conn = conns[index % len(conns)]
            length = min(span, size - start)
            response = conn.answer(url.target(), start, length, size, etag)
            got = 0
            receive = conn.body_reader(response, length)
            while got < length:
                n = receive(buffer[: min(len(buffer), length - got)])
                if not n:
                    raise ReadbackError(f"the store ended the answer after {got} of {length} bytes from {start}")
                hasher.update(buffer[:n])
                got += n
            response.close()  # its end was read: the connection serves the next range
            following = index + len(conns)
            if following < len(starts):
                ahead = starts[following]
                conn.ask(url.target(), ahead, min(span, size - ahead), size, etag)
        return hasher.hexdigest()


class _Connection:
    """One kept-alive HTTP/1.1 connection with at most one request outstanding; ``abort`` may
    be called from the event loop while the worker thread blocks in it."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._http: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._aborted = False
        #: Whether the outstanding request went on a connection that had served one before.
        self._reused = False

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._http.sock if self._http is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown: an SSLSocket's would tear TLS down under the reader.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _connect(self) -> http.client.HTTPConnection:
        reader = self._reader
        conn = reader.new_connection()
        with self._lock:
            if self._aborted:
                raise OSError("the read-back was stopped")
            self._http = conn
        conn.connect()
        assert conn.sock is not None
        if isinstance(conn.sock, ssl.SSLSocket):
            conn.sock.settimeout(reader.read_timeout)
        else:
            # Blocking, with the kernel's timeouts: a MSG_WAITALL read then takes one call per
            # slice (a socket with a Python timeout polls and takes what is there, ~64 KiB).
            conn.sock.settimeout(None)
            timeout = struct.pack("ll", int(reader.read_timeout), int(reader.read_timeout % 1 * 1e6))
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        with self._lock:
            if self._aborted:  # aborted while connecting: the shutdown may have missed the socket
                raise OSError("the read-back was stopped")
        return conn

    def ask(self, target: str, start: int, length: int, total: int, etag: str) -> None:
        """Send the GET of ``length`` bytes from ``start`` of an object of ``total`` bytes."""
        headers = {"If-Match": etag, "Accept-Encoding": "identity"}
        if length < total:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        self._reused = self._http is not None and self._http.sock is not None
        conn = self._http if self._reused and self._http is not None else self._connect()
        try:
            conn.request("GET", target, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            if not self._reused or self._aborted:
                raise
            # A kept-alive connection the store had closed: on a new one.
            conn.close()
            self._reused = False
            self._connect().request("GET", target, headers=headers)

    def answer(self, target: str, start: int, length: int, total: int, etag: str) -> http.client.HTTPResponse:
        """The answer to the request :meth:`ask` sent (with the same arguments), its head
        checked, positioned at its first byte."""
        assert self._http is not None
        try:
            response = self._http.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            if not self._reused or self._aborted:
                raise
            # The store had closed the kept-alive connection before reading the request.
            self._http.close()
            self._http = None
            self.ask(target, start, length, total, etag)
            assert self._http is not None
            response = self._http.getresponse()
        _check(response, start, length, total, etag)
        return response

    def body_reader(self, response: http.client.HTTPResponse, length: int) -> Callable[[memoryview], int]:
        """``receive(view)``: the next bytes of ``response``'s body (of ``length``) into ``view``,
        how many (0 where the connection ended)."""
        assert self._http is not None
        sock = self._http.sock
        if isinstance(sock, ssl.SSLSocket) or not isinstance(sock, socket.socket) or length == 0:
            return response.readinto
        # Straight from the socket, past http.client's reader: first what it buffered with the
        # head (``peek`` makes one read if nothing was, ``read1`` then takes exactly those bytes,
        # leaving it empty), then whole slices (MSG_WAITALL: one call each, filled unless the
        # connection ends or the timeout passes).
        fp: Any = response.fp
        pending = fp.peek(1)
        early = memoryview(fp.read1(len(pending)))
        if len(early) > length:
            raise ReadbackError(f"the store sent {len(early) - length} bytes more than Content-Length")

        def receive(view: memoryview) -> int:
            nonlocal early
            if early:
                n = min(len(early), len(view))
                view[:n] = early[:n]
                early = early[n:]
                return n
            return sock.recv_into(view, len(view), socket.MSG_WAITALL)

        return receive


def _check(response: http.client.HTTPResponse, start: int, length: int, total: int, etag: str) -> None:
    """The answer's head says it is exactly ``length`` bytes from ``start`` of the object whose
    ETag is ``etag``, or it is the error it is."""
    status = response.status
    if status >= 300:
        body = response.read(MAX_ERROR_BODY)
        code = error_code(body) or str(status)
        raise ReadbackError(f"the store answered {status} {response.reason} ({code})", code)
    problem = None
    declared = response.getheader("Content-Length")
    declared_range = response.getheader("Content-Range")
    answered_etag = response.getheader("ETag")
    ranged = length < total
    if status != (206 if ranged else 200):
        problem = f"HTTP {status}"
    elif response.getheader("Transfer-Encoding") is not None or declared is None or not declared.isdigit():
        problem = "no Content-Length"
    elif (response.getheader("Content-Encoding") or "identity").lower() != "identity":
        problem = "a content coding nobody asked for"
    elif int(declared) != length:
        problem = f"Content-Length {declared}"
    elif ranged and (declared_range is None or (found_range := _CONTENT_RANGE.fullmatch(declared_range)) is None
                     or tuple(map(int, found_range.groups())) != (start, start + length - 1, total)):
        problem = f"Content-Range {declared_range!r}"
    elif answered_etag is not None and answered_etag != etag:
        problem = f"ETag {answered_etag}, not {etag}"
    if problem is not None:
        response.close()
        raise ReadbackError(f"the store's answer to bytes {start}-{start + length - 1} of {total} is not "
                            f"those bytes: {problem}")


class _RenewedURL:
    """The presigned GET's request target, signed again when half its life is gone."""

    def __init__(self, presign: Callable[[], str]) -> None:
        self._presign = presign
        self._target = ""
        self._signed = -float("inf")

    def target(self) -> str:
        now = time.monotonic()
        if now - self._signed > URL_TTL_S / 2:
            split = urlsplit(self._presign())
            self._target = f"{split.path}?{split.query}" if split.query else split.path
            self._signed = now
        return self._target


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, (TimeoutError, BlockingIOError)):  # BlockingIOError: SO_RCVTIMEO passed
        return "timed out"
    return str(exc) or type(exc).__name__


def _without_userinfo(url: str) -> str:
    """``url`` without the credentials it may carry (for a message)."""
    split = urlsplit(url if "//" in url else f"//{url}")
    if split.username is None and split.password is None:
        return url
    return url.replace(split.netloc, split.netloc.rpartition("@")[2], 1)
