"""``storage/readback.py`` against a store that misbehaves on purpose: a small HTTP/1.1 server on
a real loopback socket answering each range GET as the test says (SeaweedFS answers correctly;
its read-backs are in ``test_storage_s3.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from dataerai_server.storage import StorageError
from dataerai_server.storage.readback import ObjectReader, ReadbackError
from dataerai_server.storage.s3 import make_client

ETAG = '"0123456789abcdef0123456789abcdef-3"'
DATA = bytes(range(256)) * 20  # 5,120 bytes: five ranges of 1,024 below, two in flight
#: ``answer(start, end)`` -> the raw response to the range GET of bytes start..end (inclusive).
Answer = Callable[[int, int], bytes]


class HangUp(bytes):
    """An answer after which the store closes the connection."""


def ok(start: int, end: int, *, status: str = "206 Partial Content", length: int | None = None,
       content_range: str | None = None, etag: str = ETAG, body: bytes | None = None) -> bytes:
    body = DATA[start : end + 1] if body is None else body
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}", f"ETag: {etag}"]
    if status.startswith("206"):
        head.append(f"Content-Range: {content_range or f'bytes {start}-{end}/{len(DATA)}'}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Store:
    """Answers range GETs with ``answer``; records each request's Range."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.ranges: list[tuple[int, int]] = []
        self.headers: list[str] = []
        self.answered = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                return  # the client refused the certificate
        with conn:
            while True:
                while b"\r\n\r\n" not in pending:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                text = head.decode()
                self.headers.append(text)
                found = re.search(r"^Range: bytes=(\d+)-(\d+)$", text, re.M | re.I)
                start, end = (int(found[1]), int(found[2])) if found else (0, len(DATA) - 1)
                self.ranges.append((start, end))
                answer = self.answer(start, end)
                try:
                    conn.sendall(answer)
                except OSError:
                    return
                self.answered.set()
                if isinstance(answer, HangUp):
                    return

    def stop(self) -> None:
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def store_with() -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(answer: Answer, tls: ssl.SSLContext | None = None) -> Store:
        stores.append(Store(answer, tls))
        return stores[-1]

    yield make
    for store in stores:
        store.stop()


async def read_back(store: Store, size: int = len(DATA), *, range_bytes: int = 1024,
                    reader: ObjectReader | None = None) -> str:
    if reader is None:
        reader = ObjectReader(f"http://127.0.0.1:{store.port}", None, connect_timeout=5, read_timeout=30,
                              range_bytes=range_bytes, in_flight=2)
    return await reader.sha256(lambda: f"{reader.scheme}://127.0.0.1:{store.port}/bucket/key?X-Amz-Signature=s",
                               size, ETAG, trio.CapacityLimiter(4))


async def test_ranges_are_asked_for_and_hashed_in_order(store_with: Callable[..., Store]) -> None:
    store = store_with(ok)
    assert await read_back(store) == hashlib.sha256(DATA).hexdigest()
    # Two connections: the store sees each range once, in whichever order they reach it.
    assert sorted(store.ranges) == [(s, min(s + 1023, len(DATA) - 1)) for s in range(0, len(DATA), 1024)]
    assert all(f"If-Match: {ETAG}" in head for head in store.headers)


async def test_an_object_of_one_range_is_one_plain_get(store_with: Callable[..., Store]) -> None:
    store = store_with(lambda start, end: ok(start, end, status="200 OK"))
    assert await read_back(store, range_bytes=len(DATA)) == hashlib.sha256(DATA).hexdigest()
    assert len(store.headers) == 1 and "Range:" not in store.headers[0]


@pytest.mark.parametrize(("answer", "problem"), [
    (lambda s, e: ok(s, e, content_range=f"bytes {s + 1}-{e + 1}/{len(DATA)}") if s else ok(s, e), "Content-Range"),
    (lambda s, e: ok(s, e, content_range=f"bytes {s}-{e}/{len(DATA) + 1}"), "Content-Range"),
    (lambda s, e: ok(s, e, length=e - s, body=DATA[s:e]), "Content-Length"),
    (lambda s, e: ok(0, len(DATA) - 1, status="200 OK"), "HTTP 200"),
    (lambda s, e: ok(s, e, etag='"another"') if s >= 2048 else ok(s, e), "ETag"),
], ids=["other-bytes", "other-size", "short-range", "whole-object", "other-etag"])
async def test_an_answer_that_is_not_the_range_is_an_error(
    store_with: Callable[..., Store], answer: Answer, problem: str
) -> None:
    with pytest.raises(ReadbackError, match=problem) as caught:
        await read_back(store_with(answer))
    assert isinstance(caught.value, StorageError) and caught.value.code == ""


async def test_a_body_cut_short_is_an_error(store_with: Callable[..., Store]) -> None:
    # The third range's head promises 1,024 bytes; 100 come and the store hangs up.
    store = store_with(lambda s, e: HangUp(ok(s, e)[:-924]) if s == 2048 else ok(s, e))
    with pytest.raises(ReadbackError, match="ended the answer after 100 of 1024 bytes from 2048"):
        await read_back(store)


async def test_a_store_that_hangs_up_is_an_error(store_with: Callable[..., Store]) -> None:
    # The third range goes on a kept-alive connection: asked again once on a new one, then an error.
    store = store_with(lambda s, e: HangUp() if s == 2048 else ok(s, e))
    with pytest.raises(ReadbackError, match="failed"):
        await read_back(store)
    assert store.ranges.count((2048, 3071)) == 2


async def test_an_error_answer_keeps_the_stores_code(store_with: Callable[..., Store]) -> None:
    xml = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"

    def answer(start: int, end: int) -> bytes:
        if start < 1024:
            return ok(start, end)
        return b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(xml), xml)

    with pytest.raises(ReadbackError) as caught:
        await read_back(store_with(answer))
    assert caught.value.code == "SlowDown" and "503" in str(caught.value)


async def test_a_stopped_store_is_an_error(store_with: Callable[..., Store]) -> None:
    store = store_with(ok)
    store.stop()
    with pytest.raises(ReadbackError, match="failed"):
        await read_back(store)


async def test_cancelling_ends_a_blocked_read_at_once(store_with: Callable[..., Store]) -> None:
    # The head of the first range and half its body, then nothing (the read timeout is 30 s).
    store = store_with(lambda s, e: ok(s, e)[:-512])
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_back, store)
            await trio.to_thread.run_sync(store.answered.wait)
            scope.cancel()
    assert scope.cancelled_caught


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_is_verified_as_the_boto3_client_verifies(
    store_with: Callable[..., Store], certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    store = store_with(ok, server_side)
    for name, value in {"AWS_ENDPOINT_URL": f"https://127.0.0.1:{store.port}", "AWS_ACCESS_KEY_ID": "k",
                        "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    # The client trusts certifi's authorities only, so this reader does too: refused.
    untrusting = ObjectReader.for_client(make_client())
    assert untrusting is not None
    with pytest.raises(ReadbackError, match="certificate not trusted"):
        await read_back(store, reader=untrusting)
    # The store's own CA given to boto3 (AWS_CA_BUNDLE) is what the reader trusts too.
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    trusting = ObjectReader.for_client(make_client())
    assert trusting is not None
    trusting.range_bytes, trusting.in_flight = 1024, 2
    assert await read_back(store, reader=trusting) == hashlib.sha256(DATA).hexdigest()
