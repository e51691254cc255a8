"""Small S3 calls (a small body or none, a small answer) over kept-alive connections of our own.

A new upload session makes one ``CreateMultipartUpload``, and through boto3 that call cost
the server about 0.9 ms of CPU (request serialisation, endpoint rules, event hooks,
urllib3), a fifth of the session's cost (docs/server.md, "Seventh pass"). Here the same
request is presigned (``presign.py``) and sent with ``http.client`` on a connection kept
from an earlier call, in the worker thread the caller runs it in. A completion's calls go
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

import http.client
import re
import threading
from typing import Any, Final
from xml.etree import ElementTree
from xml.sax.saxutils import escape, unescape

from .base import StoreError
from .readback import MAX_ERROR_BODY, ObjectReader, error_code

_UPLOAD_ID: Final = re.compile(rb"<UploadId>([^<]{1,1024})</UploadId>")
_ERROR: Final = re.compile(rb"<Error>")
_S3_XMLNS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
#: A page of ``ListParts`` holds up to 1,000 parts of about 250 bytes each.
MAX_LISTING: Final = 4 * 1024 * 1024


class StoreCalls:
    """Sends presigned small requests to the endpoint of ``reader`` and returns their answers."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def create_multipart_upload(self, url: str) -> str:
        """Send the presigned ``CreateMultipartUpload`` at ``url``; the new upload's id."""
        status, _, body = self._send("POST", url, {"x-amz-checksum-algorithm": "SHA256"})
        found = _UPLOAD_ID.search(body) if status == 200 else None
        if found is None:
            raise _refused("CreateMultipartUpload", status, body)
        return unescape(found.group(1).decode())

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

    def complete_multipart_upload(self, url: str, parts: list[dict[str, Any]]) -> None:
        """Send the presigned ``CompleteMultipartUpload`` at ``url`` with ``parts`` (each with
        ``PartNumber``, ``ETag`` and perhaps ``ChecksumSHA256``, as boto3 takes them)."""
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

    def head_object(self, url: str) -> dict[str, Any]:
        """Send the presigned ``HeadObject`` at ``url``; ``ContentLength``, ``ETag`` and perhaps
        ``ChecksumSHA256``."""
        status, headers, _ = self._send("HEAD", url, {})
        if status != 200:
            # A HEAD's answer has no body to name the error in.
            raise StoreError(f"S3 HeadObject failed: HTTP {status}", "NotFound" if status == 404 else str(status))
        found: dict[str, Any] = {"ContentLength": int(headers.get("Content-Length", "0")),
                                 "ETag": headers.get("ETag", "")}
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
              limit: int = MAX_ERROR_BODY) -> tuple[int, http.client.HTTPMessage, bytes]:
        target = url[url.index("/", url.index("//") + 2):]
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is not None:
                try:
                    return self._exchange(conn, method, target, headers, body, limit)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    pass  # closed by the store while it was idle: once more on a new connection
            return self._exchange(self._connect(), method, target, headers, body, limit)
        except (OSError, http.client.HTTPException) as exc:
            raise StoreError(f"S3 {method} to the store failed: {exc}") from exc

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str],
                  body: bytes, limit: int) -> tuple[int, http.client.HTTPMessage, bytes]:
        try:
            conn.request(method, target, body=body, headers={**headers, "Content-Length": str(len(body))})
            response = conn.getresponse()
            answer = response.read(limit + 1)
            done = response.isclosed() and len(answer) <= limit
        except BaseException:
            conn.close()
            raise
        if done and not response.will_close:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()
        if len(answer) > limit:
            raise StoreError(f"S3 {method} answered more than {limit} bytes")
        return response.status, response.headers, answer

    def _connect(self) -> http.client.HTTPConnection:
        conn = self._reader.new_connection()
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._reader.read_timeout)
        return conn


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


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _refused(operation: str, status: int, body: bytes) -> StoreError:
    code = error_code(body) or ""
    return StoreError(f"S3 {operation} failed: HTTP {status} {code}".rstrip(), code)
