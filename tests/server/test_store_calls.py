"""Small S3 calls on our own kept-alive connections (``storage/calls.py``), against a loopback
HTTP server that keeps or drops its connections as a store may; the calls against SeaweedFS
are in ``test_storage_s3.py``."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from dataerai_server.storage.base import StoreError
from dataerai_server.storage.calls import StoreCalls
from dataerai_server.storage.readback import MAX_ERROR_BODY, ObjectReader

CREATED = (b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
           b"<UploadId>%s</UploadId></InitiateMultipartUploadResult>")


class _Store:
    """Answers each request with ``answers``' next (status, body), or bytes sent as they are, on
    as many connections as come; closes a connection after each answer when ``drop`` (without
    saying so, as an idle timeout does) or when the answer says ``Connection: close``."""

    def __init__(self, answers: list[tuple[int, bytes] | bytes], *, drop: bool) -> None:
        self.answers = answers
        self.drop = drop
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                buffered = b""
                while True:
                    while b"\r\n\r\n" not in buffered:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buffered += chunk
                    if b"\r\n\r\n" not in buffered:
                        break
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                    while len(buffered) < length:
                        buffered += conn.recv(65536)
                    self.requests.append(head)
                    self.bodies.append(buffered[:length])
                    buffered = buffered[length:]
                    answer = self.answers.pop(0)
                    if isinstance(answer, bytes):  # an answer as it goes on the wire
                        conn.sendall(answer)
                    else:
                        status, body = answer
                        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                    if self.drop or (isinstance(answer, bytes) and b"Connection: close" in answer):
                        break


@contextmanager
def _store(answers: list[tuple[int, bytes] | bytes], *, drop: bool) -> Iterator[tuple[_Store, StoreCalls]]:
    store = _Store(answers, drop=drop)
    thread = threading.Thread(target=store.serve, daemon=True)
    thread.start()
    port = store.listener.getsockname()[1]
    calls = StoreCalls(ObjectReader(f"http://127.0.0.1:{port}", None, connect_timeout=10, read_timeout=10))
    try:
        yield store, calls
    finally:
        calls.close()
        # Shut down, not only closed: that wakes the thread blocked in accept() at once.
        store.listener.shutdown(socket.SHUT_RDWR)
        store.listener.close()
        thread.join(30)
        assert not thread.is_alive()


def test_calls_share_one_kept_alive_connection() -> None:
    # The second id escaped as Go's XML encoder escapes (a quote as a character reference).
    answers: list[tuple[int, bytes] | bytes] = [(200, CREATED % b"one"), (200, CREATED % b"two&amp;&#34;three&#34;")]
    with _store(answers, drop=False) as (store, calls):
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=&X-Amz-Signature=1") == "one"
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=&X-Amz-Signature=2") == 'two&"three"'
    assert store.connections == 1
    assert [head.split(b"\r\n")[0] for head in store.requests] == [
        b"POST /b/k?uploads=&X-Amz-Signature=1 HTTP/1.1", b"POST /b/k?uploads=&X-Amz-Signature=2 HTTP/1.1"]
    assert all(b"\r\nx-amz-checksum-algorithm: SHA256" in head for head in store.requests)


def test_a_connection_the_store_closed_while_idle_is_replaced() -> None:
    with _store([(200, CREATED % b"one"), (200, CREATED % b"two")], drop=True) as (store, calls):
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "one"
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "two"
    # The second call found its kept connection closed, and was sent once, on a new one.
    assert store.connections == 2 and len(store.requests) == 2


def test_a_refusal_keeps_the_stores_code() -> None:
    refusal = b"<Error><Code>NoSuchBucket</Code><Message>no</Message></Error>"
    with _store([(404, refusal), (200, b"<NotWhatWasAsked/>")], drop=False) as (_, calls):
        with pytest.raises(StoreError) as refused:
            calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=")
        assert refused.value.code == "NoSuchBucket" and "HTTP 404" in str(refused.value)
        with pytest.raises(StoreError) as odd:  # a 200 without an upload id is no upload
            calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=")
        assert odd.value.code == ""


def test_a_store_that_is_not_there_is_a_storage_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    calls = StoreCalls(ObjectReader(f"http://127.0.0.1:{port}", None, connect_timeout=10, read_timeout=10))
    with pytest.raises(StoreError, match="failed"):
        calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=")


LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><PartNumberMarker>0</PartNumberMarker>"
           b"<NextPartNumberMarker>2</NextPartNumberMarker><MaxParts>2</MaxParts><IsTruncated>true</IsTruncated>"
           b"<Part><PartNumber>1</PartNumber><LastModified>2026-12-05T02:00:00.000Z</LastModified>"
           b"<ETag>&quot;a1&quot;</ETag><Size>16777216</Size></Part>"
           b"<Part><PartNumber>2</PartNumber><LastModified>2026-12-05T02:00:01.000Z</LastModified>"
           b"<ETag>&quot;b2&quot;</ETag><Size>5</Size></Part></ListPartsResult>")


def test_a_listing_is_read_as_boto3_shapes_it() -> None:
    with _store([(200, LISTING), (200, b"<ListPartsResult><Part><PartNumber>x</PartNumber></Part>")],
                drop=False) as (_, calls):
        assert calls.list_parts("http://127.0.0.1/b/k?uploadId=u") == {
            "Parts": [
                {"PartNumber": 1, "Size": 16777216, "ETag": '"a1"', "LastModified": "2026-12-05T02:00:00.000Z"},
                {"PartNumber": 2, "Size": 5, "ETag": '"b2"', "LastModified": "2026-12-05T02:00:01.000Z"},
            ],
            "IsTruncated": True,
            "NextPartNumberMarker": 2,
        }
        with pytest.raises(StoreError, match="cannot be read"):
            calls.list_parts("http://127.0.0.1/b/k?uploadId=u")


def test_a_completion_refused_in_a_200_answer_keeps_the_stores_code() -> None:
    """S3 may answer ``CompleteMultipartUpload`` 200 and say in the body that it failed."""
    done = b"<CompleteMultipartUploadResult><ETag>&#34;c-2&#34;</ETag></CompleteMultipartUploadResult>"  # as Go escapes
    refused = b"<Error><Code>BadDigest</Code><Message>no</Message></Error>"
    parts = [{"PartNumber": 1, "ETag": '"a1"', "ChecksumSHA256": "q83vEjRWeJA="}, {"PartNumber": 2, "ETag": '"b&2"'}]
    with _store([(200, done), (200, refused)], drop=False) as (store, calls):
        # The new object's ETag, as boto3 gives it (the read-back asks for that object).
        assert calls.complete_multipart_upload("http://127.0.0.1/b/k?uploadId=u", parts) == {"ETag": '"c-2"'}
        with pytest.raises(StoreError) as failed:
            calls.complete_multipart_upload("http://127.0.0.1/b/k?uploadId=u", parts)
    assert failed.value.code == "BadDigest"
    assert store.bodies[0] == (
        b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag><ChecksumSHA256>q83vEjRWeJA=</ChecksumSHA256></Part>"
        b"<Part><PartNumber>2</PartNumber><ETag>\"b&amp;2\"</ETag></Part></CompleteMultipartUpload>")


def test_a_heads_answer_ends_with_its_headers_and_keeps_the_connection() -> None:
    """The length a HEAD's answer gives is the object's: no body follows it."""
    head = (b"HTTP/1.1 200 OK\r\nContent-Length: 16777216\r\nETag: \"e1\"\r\n"
            b"X-Amz-Checksum-Sha256: q83vEjRWeJA=\r\n\r\n")
    with _store([head, (404, b"")], drop=False) as (store, calls):
        assert calls.head_object("http://127.0.0.1/b/k?X-Amz-Signature=1") == {
            "ContentLength": 16777216, "ETag": '"e1"', "ChecksumSHA256": "q83vEjRWeJA="}
        with pytest.raises(StoreError) as missing:
            calls.head_object("http://127.0.0.1/b/k?X-Amz-Signature=2")
        assert missing.value.code == "NotFound"
    assert store.connections == 1
    assert store.requests[0].split(b"\r\n")[:2] == [b"HEAD /b/k?X-Amz-Signature=1 HTTP/1.1", b"Host: 127.0.0.1"]


def test_chunked_and_unmeasured_answers_are_read_whole() -> None:
    """A chunked answer keeps the connection; one without a length ends where its connection does."""
    whole = CREATED % b"one"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (whole[:26], whole[26:]))
               + b"0\r\n\r\n")
    unmeasured = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + CREATED % b"two"
    with _store([chunked, unmeasured, (200, CREATED % b"three")], drop=False) as (store, calls):
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "one"
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "two"
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "three"
    assert store.connections == 2  # the second answer closed the first connection


def test_an_answer_too_large_is_refused_and_its_connection_dropped() -> None:
    with _store([(500, b"x" * (MAX_ERROR_BODY + 10)), (200, CREATED % b"one")], drop=False) as (store, calls):
        with pytest.raises(StoreError, match="more than"):
            calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=")
        assert calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=") == "one"
    assert store.connections == 2


def test_an_answer_cut_short_is_a_storage_error_not_a_retry() -> None:
    """Once part of an answer came, the request may have been done: it is not sent again."""
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\n<Initiate"
    with _store([cut], drop=False) as (store, calls), pytest.raises(StoreError, match="failed"):
        calls.create_multipart_upload("http://127.0.0.1/b/k?uploads=")
    assert len(store.requests) == 1
