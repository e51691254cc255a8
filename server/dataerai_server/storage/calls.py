"""Small S3 calls (no body sent, a small answer) over kept-alive connections of our own.

A new upload session makes one ``CreateMultipartUpload``, and through boto3 that call cost
the server about 0.9 ms of CPU (request serialisation, endpoint rules, event hooks,
urllib3), a fifth of the session's cost (docs/server.md, "Seventh pass"). Here the same
request is presigned (``presign.py``) and sent with ``http.client`` on a connection kept
from an earlier call, in the worker thread the caller runs it in.

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
from typing import Final
from xml.sax.saxutils import unescape

from .base import StoreError
from .readback import MAX_ERROR_BODY, ObjectReader, error_code

_UPLOAD_ID: Final = re.compile(rb"<UploadId>([^<]{1,1024})</UploadId>")


class StoreCalls:
    """Sends presigned small requests to the endpoint of ``reader`` and returns their answers."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def create_multipart_upload(self, url: str) -> str:
        """Send the presigned ``CreateMultipartUpload`` at ``url``; the new upload's id."""
        status, body = self._send("POST", url, {"x-amz-checksum-algorithm": "SHA256"})
        found = _UPLOAD_ID.search(body) if status == 200 else None
        if found is None:
            raise _refused("CreateMultipartUpload", status, body)
        return unescape(found.group(1).decode())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        target = url[url.index("/", url.index("//") + 2):]
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is not None:
                try:
                    return self._exchange(conn, method, target, headers)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    pass  # closed by the store while it was idle: once more on a new connection
            return self._exchange(self._connect(), method, target, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise StoreError(f"S3 {method} to the store failed: {exc}") from exc

    def _exchange(self, conn: http.client.HTTPConnection, method: str, target: str,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            conn.request(method, target, headers={**headers, "Content-Length": "0"})
            response = conn.getresponse()
            body = response.read(MAX_ERROR_BODY + 1)
            done = response.isclosed() and len(body) <= MAX_ERROR_BODY
        except BaseException:
            conn.close()
            raise
        if done and not response.will_close:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()
        return response.status, body

    def _connect(self) -> http.client.HTTPConnection:
        conn = self._reader.new_connection()
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._reader.read_timeout)
        return conn


def _refused(operation: str, status: int, body: bytes) -> StoreError:
    code = error_code(body) or ""
    return StoreError(f"S3 {operation} failed: HTTP {status} {code}".rstrip(), code)
