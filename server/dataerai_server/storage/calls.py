"""Small S3 calls (a small body or none, a small answer) over kept-alive connections of our own.

A new upload session makes one ``CreateMultipartUpload``, and through boto3 that call cost
the server about 0.9 ms of CPU (request serialisation, endpoint rules, event hooks,
urllib3), a fifth of the session's cost (docs/server.md, "Seventh pass"). Here the same
request is presigned (``presign.py``) and sent on a connection kept from an earlier call,
its answer read with httptools' parser, in the worker thread the caller runs it in. A completion's calls go
the same way (``ListParts``, ``CompleteMultipartUpload``, ``HeadObject``, the record's
``PutObject``, the ``AbortMultipartUpload`` that releases what is left): through boto3
they made a small file's completion on S3 cost several times one on directory storage
(docs/server.md, "Eighth pass").

The store is reached exactly as the read-back reaches it (``readback.ObjectReader``: the
endpoint, the TLS context checked against the client's CA bundle and host name, the
timeouts), so this is used only where that reader could be made; elsewhere ``s3.py`` calls
boto3. Idle connections are kept in a stack, at most one per worker thread that uses them.
A kept-alive connection the store closed meanwhile fails at once when reused; the call is
then made once more on a new connection, as botocore retries it.
"""

from __future__ import annotations

import html
import re
import socket
import threading
from typing import Any, Final
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import httptools

from .base import StoreError
from .readback import MAX_ERROR_BODY, ObjectReader, error_code

#: The one field each answer is read for; its text is escaped as the store's XML encoder
#: escapes it (Go's writes a quote as ``&#34;``, which ``saxutils.unescape`` would leave).
_UPLOAD_ID: Final = re.compile(rb"<UploadId>([^<]{1,1024})</UploadId>")
_ETAG: Final = re.compile(rb"<ETag>([^<]{1,1024})</ETag>")
_ERROR: Final = re.compile(rb"<Error>")
_S3_XMLNS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
#: A page of ``ListParts`` holds up to 1,000 parts of about 250 bytes each.
MAX_LISTING: Final = 4 * 1024 * 1024
#: What one ``recv`` asks for: a small answer whole.
RECEIVE_BYTES: Final = 64 * 1024


class StoreCalls:
    """Sends presigned small requests to the endpoint of ``reader`` and returns their answers."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def create_multipart_upload(self, url: str) -> str:
        """Send the presigned ``CreateMultipartUpload`` at ``url``; the new upload's id."""
        status, _, body = self._send("POST", url, {"x-amz-checksum-algorithm": "SHA256"})
        found = _text(_UPLOAD_ID, body) if status == 200 else None
        if found is None:
            raise _refused("CreateMultipartUpload", status, body)
        return found

    def list_parts(self, url: str) -> dict[str, Any]:
        """Send the presigned ``ListParts`` at ``url``; the page as boto3 shapes it (``Parts``
        with ``PartNumber``, ``Size``, ``ETag`` and ``LastModified``, ``IsTruncated``,
        ``NextPartNumberMarker``)."""
        status, _, body = self._send("GET", url, {}, limit=MAX_LISTING)
        if status != 200:
            raise _refused("ListParts", status, body)
        try:
            return _listing(body)
        except (ElementTree.ParseError, KeyError, ValueError) as exc:
            raise StoreError(f"S3 ListParts answered a listing that cannot be read: {exc}") from exc

    def complete_multipart_upload(self, url: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Send the presigned ``CompleteMultipartUpload`` at ``url`` with ``parts`` (each with
        ``PartNumber``, ``ETag`` and perhaps ``ChecksumSHA256``, as boto3 takes them); the new
        object's ``ETag`` where the answer gives it, as boto3 shapes it."""
        entries = "".join(
            f"<Part><PartNumber>{int(p['PartNumber'])}</PartNumber><ETag>{escape(p['ETag'])}</ETag>"
            + (f"<ChecksumSHA256>{escape(p['ChecksumSHA256'])}</ChecksumSHA256>" if "ChecksumSHA256" in p else "")
            + "</Part>"
            for p in parts
        )
        body = f'<CompleteMultipartUpload xmlns="{_S3_XMLNS}">{entries}</CompleteMultipartUpload>'.encode()
        status, _, answer = self._send("POST", url, {}, body)
        # S3 may answer 200 and put its error in the body (the work took long).
        if status != 200 or _ERROR.search(answer[:256]):
            raise _refused("CompleteMultipartUpload", status, answer)
        etag = _text(_ETAG, answer)
        return {"ETag": etag} if etag else {}

    def head_object(self, url: str) -> dict[str, Any]:
        """Send the presigned ``HeadObject`` at ``url``; ``ContentLength``, ``ETag`` and perhaps
        ``ChecksumSHA256``."""
        status, headers, _ = self._send("HEAD", url, {})
        if status != 200:
            # A HEAD's answer has no body to name the error in.
            raise StoreError(f"S3 HeadObject failed: HTTP {status}", "NotFound" if status == 404 else str(status))
        found: dict[str, Any] = {"ContentLength": int(headers.get("content-length", "0")),
                                 "ETag": headers.get("etag", "")}
        if "x-amz-checksum-sha256" in headers:  # a store that says it unasked, as boto3 would read it
            found["ChecksumSHA256"] = headers["x-amz-checksum-sha256"]
        return found

    def put_object(self, url: str, body: bytes, content_type: str) -> None:
        """Send the presigned ``PutObject`` at ``url`` with ``body`` (small)."""
        status, _, answer = self._send("PUT", url, {"Content-Type": content_type}, body)
        if status != 200:
            raise _refused("PutObject", status, answer)

    def abort_multipart_upload(self, url: str) -> None:
        """Send the presigned ``AbortMultipartUpload`` at ``url``."""
        status, _, answer = self._send("DELETE", url, {})
        if status not in (200, 204):
            raise _refused("AbortMultipartUpload", status, answer)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes = b"",
              limit: int = MAX_ERROR_BODY) -> tuple[int, dict[str, str], bytes]:
        after_scheme = url.index("//") + 2
        path_at = url.index("/", after_scheme)
        # The Host the URL was signed for, exactly as it was signed.
        request = _request(method, url[after_scheme:path_at], url[path_at:], headers, body)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is not None:
                try:
                    return self._exchange(conn, method, request, limit)
                except _ClosedWhileIdle:
                    pass  # closed by the store while it was idle: once more on a new connection
            return self._exchange(self._connect(), method, request, limit)
        except (OSError, httptools.HttpParserError, _ClosedWhileIdle) as exc:
            raise StoreError(f"S3 {method} to the store failed: {exc}") from exc

    def _exchange(self, conn: _Connection, method: str, request: bytes,
                  limit: int) -> tuple[int, dict[str, str], bytes]:
        try:
            status, headers, answer, keep = conn.exchange(request, head=method == "HEAD", limit=limit)
        except BaseException:
            conn.close()
            raise
        if keep:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()
        if len(answer) > limit:
            raise StoreError(f"S3 {method} answered more than {limit} bytes")
        return status, headers, answer

    def _connect(self) -> _Connection:
        http = self._reader.new_connection()
        http.connect()  # the connect timeout, and TLS as the reader checks it
        assert http.sock is not None
        http.sock.settimeout(self._reader.read_timeout)
        return _Connection(http.sock)


def _request(method: str, host: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _ends_with_connection(headers: dict[str, str]) -> bool:
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()


class _ClosedWhileIdle(Exception):
    """The store closed a kept-alive connection before it answered anything."""


class _Answer:
    """What httptools' parser reads of one answer (its callbacks)."""

    __slots__ = ("body", "done", "headers", "headers_done", "keep_alive", "parser", "size")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.keep_alive = False  # read as each part ends: the parser forgets it once the answer is done
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()


class _Connection:
    """One connection to the store: requests written whole, answers read with httptools'
    parser (``http.client``'s reading, through the ``email`` package, cost about 50 µs of
    CPU a call more)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def exchange(self, request: bytes, *, head: bool, limit: int) -> tuple[int, dict[str, str], bytes, bool]:
        """Send ``request``; the answer's status, headers (names in lower case) and body (at
        most ``limit`` + 1 bytes of it), and whether the connection may be used again."""
        try:
            self._sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClosedWhileIdle(f"the store closed the connection: {exc}") from exc
        answer = _Answer()
        parser = answer.parser
        received = False
        while not (answer.done or (head and answer.headers_done)) and answer.size <= limit:
            try:
                data = self._sock.recv(RECEIVE_BYTES)
            except ConnectionResetError as exc:
                if received:
                    raise
                raise _ClosedWhileIdle(f"the store closed the connection: {exc}") from exc
            if not data:
                if not received:
                    raise _ClosedWhileIdle("the store closed the connection")
                if answer.headers_done and _ends_with_connection(answer.headers):
                    break  # an answer without a length ends where the connection does
                raise ConnectionResetError("the store closed the connection in the middle of an answer")
            received = True
            parser.feed_data(data)
        # A HEAD's answer ends with its headers, whatever length they give for the object.
        complete = answer.done or head
        keep = complete and answer.size <= limit and answer.keep_alive
        return parser.get_status_code(), answer.headers, b"".join(answer.body)[: limit + 1], keep

    def close(self) -> None:
        self._sock.close()


def _listing(body: bytes) -> dict[str, Any]:
    """A ``ListPartsResult`` document, shaped as boto3's ``list_parts`` answer."""
    page: dict[str, Any] = {"Parts": [], "IsTruncated": False}
    for child in ElementTree.fromstring(body):
        name = _local(child.tag)
        if name == "Part":
            fields = {_local(field.tag): field.text or "" for field in child}
            page["Parts"].append({"PartNumber": int(fields["PartNumber"]), "Size": int(fields["Size"]),
                                  "ETag": fields["ETag"], "LastModified": fields.get("LastModified", "")})
        elif name == "IsTruncated":
            page["IsTruncated"] = (child.text or "").strip() == "true"
        elif name == "NextPartNumberMarker":
            page["NextPartNumberMarker"] = int(child.text or "0")
    return page


def _text(field: re.Pattern[bytes], answer: bytes) -> str | None:
    """The text of the first element ``field`` finds in ``answer``, unescaped (character
    references too), or None."""
    found = field.search(answer)
    return html.unescape(found.group(1).decode()) if found is not None else None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _refused(operation: str, status: int, body: bytes) -> StoreError:
    code = error_code(body) or ""
    return StoreError(f"S3 {operation} failed: HTTP {status} {code}".rstrip(), code)
