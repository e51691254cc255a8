"""The whole-file SHA-256 of a stored S3 object, read back as parallel range GETs.

S3 keeps only per-part checksums, so the server proves the whole-file digest of a
completed multipart upload by reading it back (``s3.py``). Through boto3 that was one
``get_object`` streamed in one thread: the hashing waited on the store and the store on
the hashing, and botocore's body made new ``bytes`` for every block
(docs/benchmarks.md, "The completion's read-back"). Here:

- An object larger than one range is read as ``RANGE_BYTES`` ranges, ``RANGES_IN_FLIGHT``
  at once, each on its own kept-alive HTTP/1.1 connection (``http.client``) in a worker
  thread, ``readinto`` a buffer from a pool shared by every read-back of the storage
  (``RangeBuffers``: at most ``POOL_BUFFERS`` buffers, allocated once and reused). One
  task hashes the ranges strictly in order, each in one worker-thread call (SHA-256
  releases the GIL), so receiving and hashing overlap. A read-back holds at most
  ``WINDOW`` buffers (ranges received but not yet hashed), so memory is bounded whatever
  the object's size and however many completions run at once.
- An object of at most one range is one GET in one worker thread, hashed as it arrives
  through one ``READ_BYTES`` buffer: no pool, no tasks.

The GETs are presigned by the boto3 client (any addressing, its credentials), renewed
while a long read-back goes on. Each names the ETag the caller's HEAD saw (``If-Match``),
so ranges of two different objects under the key can never be hashed together. TLS is
verified exactly as the client's own requests are: the CA bundle botocore resolved
(``AWS_CA_BUNDLE``, ``ca_bundle`` in the config, else certifi's) and the host name.
Where this module cannot do what the client would (a proxy, a client certificate,
verification turned off, an endpoint that is not http(s)), :meth:`ObjectReader.for_client`
returns None and ``s3.py`` reads through boto3 as before.

Every failure is a :class:`ReadbackError` (a ``StorageError``) carrying the store's error
code where it answered one (``NoSuchKey``, ``PreconditionFailed``…): an error answer, a
connection that fails or ends early, and an answer that is not exactly the bytes asked
for (status, ``Content-Length``, ``Content-Range``, ``ETag``, a content coding) are all
errors; nothing short or different is ever hashed as if it were the object.
Cancellation is prompt: the sockets are shut down, which ends any blocked read.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from .base import StorageError

MiB: Final = 1 << 20
#: Bytes per range GET (and per hashing call). Measured against 4 and 16 MiB: docs/benchmarks.md.
RANGE_BYTES: Final = 8 * MiB
#: Range GETs at once per read-back (connections to the store, worker threads).
RANGES_IN_FLIGHT: Final = 4
#: Ranges a read-back holds at most (received or receiving, not yet hashed): one more than
#: in flight, so the next ranges arrive while one is being hashed.
WINDOW: Final = RANGES_IN_FLIGHT + 1
#: Range buffers per storage, shared by concurrent read-backs (2 at full speed): the
#: read-backs' memory whatever their number.
POOL_BUFFERS: Final = 2 * WINDOW
#: The buffer (and hashing slice) of a read-back of one range.
READ_BYTES: Final = 1 * MiB
#: Presigned GETs are valid this long and renewed when half of that is gone.
URL_TTL_S: Final = 900
#: An error answer's body is read up to this much (S3's XML errors are far smaller).
MAX_ERROR_BODY: Final = 64 * 1024

_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class ReadbackError(StorageError):
    """The object could not be read back exactly; ``code`` is the store's error code, if it
    answered one (else empty)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class RangeBuffers:
    """At most ``count`` buffers of ``size`` bytes, made when first needed and reused (a new
    bytearray would fault in its pages again on every read-back)."""

    def __init__(self, count: int = POOL_BUFFERS, size: int = RANGE_BYTES) -> None:
        self.size = size
        self._send, self._receive = trio.open_memory_channel[bytearray](count)
        self._unmade = count

    async def take(self) -> bytearray:
        if self._unmade and not self._receive.statistics().current_buffer_used:
            self._unmade -= 1
            return bytearray(self.size)
        return await self._receive.receive()

    def give(self, buffer: bytearray) -> None:
        self._send.send_nowait(buffer)


class _Connection:
    """One kept-alive HTTP/1.1 connection, used by one worker thread at a time; ``abort``
    may be called from the event loop while that thread blocks in it."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._http: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._aborted = False

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
        conn: http.client.HTTPConnection
        if reader.scheme == "https":
            conn = http.client.HTTPSConnection(reader.host, reader.port, timeout=reader.connect_timeout,
                                               context=reader.context)
        else:
            conn = http.client.HTTPConnection(reader.host, reader.port, timeout=reader.connect_timeout)
        with self._lock:
            if self._aborted:
                raise OSError("the read-back was stopped")
            self._http = conn
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(reader.read_timeout)
        with self._lock:
            if self._aborted:
                raise OSError("the read-back was stopped")
        return conn

    def get(self, target: str, start: int, length: int, total: int, etag: str) -> http.client.HTTPResponse:
        """Send the GET of ``length`` bytes from ``start`` of an object of ``total`` bytes and
        check its head; the response, positioned at the first byte."""
        headers = {"If-Match": etag, "Accept-Encoding": "identity"}
        if length < total:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        conn, reused = self._http, True
        for _ in range(2):
            if conn is None:
                conn, reused = self._connect(), False
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the store had closed: once more on a new one.
                conn.close()
                if not reused or self._aborted:
                    raise
                conn = None
        _check(response, start, length, total, etag)
        return response

    def read(self, target: str, start: int, length: int, total: int, etag: str, into: memoryview) -> None:
        """The range ``start``..``start + length`` whole into ``into[:length]``."""
        response = self.get(target, start, length, total, etag)
        got = 0
        while got < length:
            n = response.readinto(into[got:length])
            if not n:
                raise ReadbackError(f"the store ended the answer after {got} of {length} bytes from {start}")
            got += n
        response.close()  # its end was read: the connection serves the next range

    def hash(self, target: str, total: int, etag: str, hasher: Any, buffer: memoryview) -> None:
        """The whole object (one GET), hashed slice by slice as it arrives."""
        response = self.get(target, 0, total, total, etag)
        got = 0
        while got < total:
            n = response.readinto(buffer[: min(len(buffer), total - got)])
            if not n:
                raise ReadbackError(f"the store ended the answer after {got} of {total} bytes")
            hasher.update(buffer[:n])
            got += n
        response.close()


def _check(response: http.client.HTTPResponse, start: int, length: int, total: int, etag: str) -> None:
    """The answer's head says it is exactly ``length`` bytes from ``start`` of the object whose
    ETag is ``etag``, or it is the error it is."""
    status = response.status
    if status >= 300:
        body = response.read(MAX_ERROR_BODY)
        found = _CODE.search(body)
        code = found[1].decode("utf-8", "replace") if found else str(status)
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


class ObjectReader:
    """Reads objects of one endpoint back and hashes them; create with :meth:`for_client`."""

    def __init__(self, endpoint: str, context: ssl.SSLContext | None, *, connect_timeout: float,
                 read_timeout: float, buffers: RangeBuffers | None = None) -> None:
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.hostname or split.username:
            raise ValueError(f"not an http(s) endpoint: {endpoint!r}")
        self.scheme = split.scheme
        self.host = split.hostname
        self.port = split.port or (443 if split.scheme == "https" else 80)
        self.context = context if split.scheme == "https" else None
        if self.scheme == "https" and context is None:
            raise ValueError("an https endpoint needs a TLS context")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.buffers = buffers or RangeBuffers()

    @classmethod
    def for_client(cls, client: Any) -> ObjectReader | None:
        """A reader that reaches the store as ``client`` does, or None where it cannot do what
        the client would (then boto3 reads)."""
        try:
            endpoint = str(client.meta.endpoint_url)
            session = client._endpoint.http_session
            verify = session._verify
            proxied = session._proxy_config.proxy_url_for(endpoint)
            client_cert = session._cert_file
            config = client.meta.config
            timeouts = float(config.connect_timeout), float(config.read_timeout)
        except (AttributeError, TypeError, ValueError):
            return None
        if proxied or client_cert or not endpoint.startswith(("http://", "https://")):
            return None
        context = None
        if endpoint.startswith("https://"):
            if not verify:
                return None  # verification was turned off for the client; not here
            from botocore.httpsession import get_cert_path

            context = ssl.create_default_context(cafile=get_cert_path(verify))
        return cls(endpoint, context, connect_timeout=timeouts[0], read_timeout=timeouts[1])

    async def sha256(self, presign: Callable[[], str], size: int, etag: str, limiter: trio.CapacityLimiter) -> str:
        """The SHA-256 (hex) of the ``size`` bytes of the object ``presign()`` gives a GET URL of,
        while its ETag is ``etag``; worker threads are taken from ``limiter``."""
        url = _RenewedURL(presign)
        conns: list[_Connection] = []
        failure: list[ReadbackError] = []
        hasher = hashlib.sha256()
        try:
            async with trio.open_nursery() as nursery:

                def fail(exc: ReadbackError) -> None:
                    if not failure:
                        failure.append(exc)
                    nursery.cancel_scope.cancel()

                async def abort_on_cancel() -> None:
                    try:
                        await trio.sleep_forever()
                    finally:
                        for conn in conns:
                            conn.abort()

                nursery.start_soon(abort_on_cancel)
                try:
                    if size <= self.buffers.size:
                        conns.append(_Connection(self))
                        await self._whole(conns[0], url, size, etag, hasher, limiter)
                    else:
                        await self._ranges(nursery, conns, url, size, etag, hasher, limiter, fail)
                except ReadbackError as exc:
                    fail(exc)
                nursery.cancel_scope.cancel()
        finally:
            for conn in conns:
                conn.close()
        if failure:
            raise failure[0]
        return hasher.hexdigest()

    async def _whole(self, conn: _Connection, url: _RenewedURL, size: int, etag: str, hasher: Any,
                     limiter: trio.CapacityLimiter) -> None:
        buffer = memoryview(bytearray(min(READ_BYTES, max(size, 1))))
        await _in_thread(conn.hash, url.target(), size, etag, hasher, buffer, limiter=limiter)

    async def _ranges(self, nursery: trio.Nursery, conns: list[_Connection], url: _RenewedURL, size: int,
                      etag: str, hasher: Any, limiter: trio.CapacityLimiter,
                      fail: Callable[[ReadbackError], None]) -> None:
        span = self.buffers.size
        ranges = iter(enumerate(range(0, size, span)))
        count = -(-size // span)
        window = trio.Semaphore(WINDOW)
        received: dict[int, tuple[bytearray, int]] = {}
        arrived = trio.Event()

        async def receive() -> None:
            conn = _Connection(self)
            conns.append(conn)
            while True:
                # A buffer before a range: ranges are taken in order, so the one the hasher
                # waits for always holds a buffer, and read-backs sharing the pool all move on.
                await window.acquire()
                taken = await self.buffers.take()
                buffer: bytearray | None = taken
                try:
                    index, start = next(ranges, (-1, -1))
                    if index < 0:
                        window.release()
                        return
                    length = min(span, size - start)
                    try:
                        await _in_thread(conn.read, url.target(), start, length, size, etag, memoryview(taken),
                                         limiter=limiter)
                    except ReadbackError as exc:
                        fail(exc)
                        return
                    received[index] = (taken, length)
                    buffer = None  # the hasher's now
                    arrived.set()
                finally:
                    if buffer is not None:
                        self.buffers.give(buffer)

        try:
            for _ in range(min(RANGES_IN_FLIGHT, count)):
                nursery.start_soon(receive)
            for index in range(count):
                while index not in received:
                    await arrived.wait()
                    arrived = trio.Event()
                buffer, length = received.pop(index)
                try:
                    await trio.to_thread.run_sync(hasher.update, memoryview(buffer)[:length], limiter=limiter)
                finally:
                    self.buffers.give(buffer)
                window.release()
        finally:
            # Ranges received but never hashed (after a failure or a cancellation).
            for buffer, _ in received.values():
                self.buffers.give(buffer)
            received.clear()


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


async def _in_thread(fn: Callable[..., None], *args: Any, limiter: trio.CapacityLimiter) -> None:
    """``fn(*args)`` in a worker thread; connection failures become :class:`ReadbackError`."""
    try:
        await trio.to_thread.run_sync(fn, *args, limiter=limiter)
    except ReadbackError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ReadbackError(f"reading the object back failed: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
