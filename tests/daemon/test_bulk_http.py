"""The download engine's range GETs and the upload engine's part PUTs without httpx
(``dataeraid.engine.bulk_http``), against real loopback HTTP/1.1 servers: tiny threaded ones
in this file whose answers each test scripts (a whole range, a short body, a wrong
Content-Range, a 503, a body that stalls; a stored part, BadDigest, an early refusal, a
server that stops reading), plain and over TLS with a self-signed certificate."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import httpx
import pytest
import trio
from fake_repository import FakeRepository
from loopback import LoopbackServer
from stand_ins import begun, job_context

from dataeraid.engine import bulk_http, download
from dataeraid.engine.bulk_http import BulkHTTP, Outlet
from dataeraid.errors import DataeraiError, TargetExpired, TransientError
from dataeraid.fileset import FileSet, StreamFile
from dataeraid.remote import Remote, ssl_context

SLICE = 64 * 1024
RANGE = 256 * 1024
#: A cap on waits for the server thread: reached only when the behaviour under test is broken.
SAFETY_NET_SECONDS = 30.0

DATA = hashlib.sha256(b"bulk").digest() * (3 * RANGE // 32) + b"tail of the content"


@dataclass
class Asked:
    """One request as the server read it."""

    connection: int
    start: int
    end: int
    headers: dict[str, str]


#: ``answer(asked, data)`` -> the bytes to send, and whether to close the connection after.
Answer = Callable[[Asked, bytes], tuple[bytes, bool]]


def exact(asked: Asked, data: bytes) -> tuple[bytes, bool]:
    body = data[asked.start:asked.end + 1]
    head = (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {asked.start}-{asked.end}/{len(data)}\r\n\r\n")
    return head.encode() + body, False


class _Loopback:
    """A loopback HTTP/1.1 server's protocol (``tools/loopback.py`` its plumbing): a thread per
    connection (TLS if ``tls``), its requests read one after another, each answered by ``_answer``."""

    tls: ssl.SSLContext | None

    def _listen(self) -> None:
        # ``_serve`` looked up per connection: a test may replace it once the server is up.
        self._server = LoopbackServer(lambda sock, number: self._serve(sock, number), tls=self.tls)
        self.port = self._server.port

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return self._server.accepted

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            reader = sock.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                payload, close = self._answer(number, method, target, headers, reader)
                sock.sendall(payload)
                if close:
                    return
        except OSError:  # ssl.SSLError among them
            return

    def _answer(self, number: int, method: str, target: str, headers: dict[str, str],
                reader: BinaryIO) -> tuple[bytes, bool]:
        raise NotImplementedError

    def close(self) -> None:
        self._server.close()


@dataclass
class RangeServer(_Loopback):
    """A loopback HTTP/1.1 server of ``data`` that keeps connections alive; each request is
    answered by ``answers`` in turn (the last one for the rest)."""

    data: bytes
    answers: list[Answer] = field(default_factory=lambda: [exact])
    tls: ssl.SSLContext | None = None
    asked: list[Asked] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._turns = threading.Lock()
        self._listen()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/content/cnt_1?sig=abc"

    def _answer(self, number: int, method: str, target: str, headers: dict[str, str],
                reader: BinaryIO) -> tuple[bytes, bool]:
        first, _, last = headers["range"].removeprefix("bytes=").partition("-")
        asked = Asked(number, int(first), int(last), headers)
        with self._turns:  # two connections' requests must not both take one answer's turn
            self.asked.append(asked)
            turn = len(self.asked)
        return self.answers[min(turn, len(self.answers)) - 1](asked, self.data)


@pytest.fixture
def serve() -> Iterator[Callable[..., RangeServer]]:
    servers: list[RangeServer] = []

    def start(*answers: Answer, tls: ssl.SSLContext | None = None) -> RangeServer:
        server = RangeServer(DATA, list(answers) or [exact], tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def bulk(context: ssl.SSLContext | None = None) -> BulkHTTP:
    return BulkHTTP(context or ssl_context(), connect_timeout_s=10.0, read_timeout_s=SAFETY_NET_SECONDS,
                    slice_bytes=SLICE)


class Sink:
    """What ``read_into`` hands over: the bytes written at their offsets, and each slice landed."""

    def __init__(self, size: int = len(DATA)) -> None:
        self.file = bytearray(size)
        self.writes: list[tuple[int, int]] = []
        self.landed: list[int] = []

    def write(self, offset: int, view: memoryview) -> None:
        self.file[offset:offset + len(view)] = view
        self.writes.append((offset, len(view)))

    async def land(self, n: int) -> None:
        self.landed.append(n)


async def test_a_range_arrives_whole_in_slices_with_each_slice_landed(serve: Any) -> None:
    server = serve()
    sink = Sink()
    client = bulk()
    await client.read_into(server.url, {"x-signed": "yes"}, RANGE, RANGE, sink.write, sink.land, "reading range 1")
    assert sink.file[RANGE:2 * RANGE] == DATA[RANGE:2 * RANGE]
    assert sink.landed == [0] + [SLICE] * (RANGE // SLICE)  # the head first, once found to be the range
    assert [offset for offset, _ in sink.writes] == list(range(RANGE, 2 * RANGE, SLICE))
    assert server.asked[0].headers["x-signed"] == "yes"  # the target's signed headers go along
    assert server.asked[0].headers["range"] == f"bytes={RANGE}-{2 * RANGE - 1}"
    client.close()


async def test_ranges_one_after_another_share_one_kept_alive_connection(serve: Any) -> None:
    server = serve()
    sink = Sink()
    client = bulk()
    for start in range(0, len(DATA), RANGE):
        length = min(RANGE, len(DATA) - start)
        await client.read_into(server.url, {}, start, length, sink.write, sink.land, "reading")
    assert bytes(sink.file) == DATA
    assert server.connections == 1
    assert [a.connection for a in server.asked] == [1, 1, 1, 1]
    client.close()


async def test_a_connection_the_server_closed_while_idle_is_not_used_again(serve: Any) -> None:
    def exact_then_close(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        return exact(asked, data)[0], True

    server = serve(exact_then_close)
    sink = Sink()
    client = bulk()
    await client.read_into(server.url, {}, 0, RANGE, sink.write, sink.land, "reading")
    # The server closed it after answering; the next range must notice, not fail.
    await client.read_into(server.url, {}, RANGE, RANGE, sink.write, sink.land, "reading")
    assert sink.file[:2 * RANGE] == DATA[:2 * RANGE]
    assert server.connections == 2
    client.close()


async def test_a_body_cut_short_is_a_transient_error_after_the_bytes_it_did_bring(serve: Any) -> None:
    def half(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        whole, _ = exact(asked, data)
        return whole[:len(whole) - (asked.end + 1 - asked.start) // 2], True

    server = serve(half)
    sink = Sink()
    with pytest.raises(TransientError, match=f"after {RANGE // 2} of {RANGE} bytes"):
        await bulk().read_into(server.url, {}, 0, RANGE, sink.write, sink.land, "reading range 0")
    assert sum(sink.landed) == RANGE // 2  # what did arrive is written and counted, so a retry goes on from there
    assert sink.file[:RANGE // 2] == DATA[:RANGE // 2]


@pytest.mark.parametrize(("head", "problem"), [
    ("HTTP/1.1 206 Partial Content\r\nContent-Length: {n}\r\nContent-Range: bytes {s1}-{e1}/{total}\r\n\r\n",
     "Content-Range"),
    ("HTTP/1.1 206 Partial Content\r\nContent-Length: {n2}\r\nContent-Range: bytes {s}-{e}/{total}\r\n\r\n",
     "Content-Length"),
    ("HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nContent-Range: bytes {s}-{e}/{total}\r\n\r\n",
     "no Content-Length"),
    ("HTTP/1.1 204 No Content\r\n\r\n", "HTTP 204"),
])
async def test_an_answer_that_is_not_exactly_the_range_asked_for_is_refused_before_any_byte_is_written(
        serve: Any, head: str, problem: str) -> None:
    def wrong(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        n = asked.end + 1 - asked.start
        text = head.format(n=n, n2=n + 1, s=asked.start, e=asked.end, s1=asked.start + 1, e1=asked.end + 1,
                           total=len(data))
        return text.encode() + data[asked.start:asked.end + 2], True

    server = serve(wrong)
    sink = Sink()
    with pytest.raises(TransientError, match=problem):
        await bulk().read_into(server.url, {}, RANGE, RANGE, sink.write, sink.land, "reading range 1")
    assert sink.writes == []


async def test_a_server_that_ignores_the_range_fails_as_it_does_through_httpx(serve: Any) -> None:
    def whole(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        return f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data, True

    server = serve(whole)
    with pytest.raises(DataeraiError, match="ignored the byte range") as raised:
        await bulk().read_into(server.url, {}, RANGE, RANGE, Sink().write, Sink().land, "reading range 1")
    assert raised.value.code == "internal"


async def test_error_answers_map_as_httpx_answers_do(serve: Any) -> None:
    def expired(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        body = b'{"error": {"code": "permission_denied", "message": "expired", "reason": "url_expired"}}'
        return b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: " \
            + str(len(body)).encode() + b"\r\n\r\n" + body, False

    server = serve(expired)
    from dataeraid.errors import TargetExpired
    with pytest.raises(TargetExpired, match="expired"):
        await bulk().read_into(server.url, {}, 0, RANGE, Sink().write, Sink().land, "reading range 0")


def unavailable(asked: Asked, data: bytes) -> tuple[bytes, bool]:
    return b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 4\r\n\r\nbusy", False


#: What a download of all of DATA ends with: its digest, every byte counted once.
WHOLE = (hashlib.sha256(DATA).hexdigest(), len(DATA))


def _target(url: str) -> dict[str, Any]:
    return {"url": url, "content_id": "cnt_1", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}


async def _engine_download(tmp_path: Path, remote: Any, target: dict[str, Any],
                           phases: list[dict[str, Any]] | None = None) -> tuple[str, int]:
    """The download engine's ranges of ``target`` through ``remote``: the stream's digest, and the
    bytes counted; its ``download.phase`` events go to ``phases``."""
    fileset = FileSet(str(tmp_path), [StreamFile("f.bin", 0, len(DATA))], "part")
    count = -(-len(DATA) // RANGE)
    ctx = begun(job_context(remote, {"parts_per_job": 2, "io_block_size": SLICE}, job={"kind": "download"}),
                fileset, count)
    timeline = None
    if phases is not None:
        timeline = download.Timeline(SimpleNamespace(debug=lambda event, **fields: phases.append(fields)))
    try:
        stream = await download._fetch_ranges(ctx, fileset, target, "ast_1",  # type: ignore[arg-type]  # a stand-in context
                                              len(DATA), RANGE, list(range(count)), timeline)
    finally:
        fileset.close()
    return stream.whole.hexdigest(), ctx.accounting.progress.bytes_done


async def test_the_engine_retries_a_503_and_a_cut_body_and_lands_every_byte_once(serve: Any, tmp_path: Path) -> None:
    def cut(asked: Asked, data: bytes) -> tuple[bytes, bool]:
        return exact(asked, data)[0][:-1000], True

    server = serve(unavailable, cut, exact)
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, bulk())  # type: ignore[arg-type]  # ranges need no credentials
        assert await _engine_download(tmp_path, remote, _target(server.url)) == WHOLE
    assert (tmp_path / "f.bin.part").read_bytes() == DATA
    assert all(a.headers["user-agent"].startswith("dataeraid/") for a in server.asked)  # not through httpx
    # The cut range went on from the byte where it stopped, not from its start. Two ranges are in
    # flight, so the resume may be asked before or after the 503's retry: any request that does
    # not start on a range boundary is a resume.
    resumed = [a for a in server.asked if a.start % RANGE]
    assert len(resumed) == 1 and resumed[0].end - resumed[0].start + 1 == 1000


async def test_the_timeline_has_each_ranges_answer_head_between_its_request_and_first_write(
        serve: Any, tmp_path: Path) -> None:
    server = serve()
    phases: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, bulk())  # type: ignore[arg-type]  # ranges need no credentials
        assert await _engine_download(tmp_path, remote, _target(server.url), phases) == WHOLE
    ranges = [p for p in phases if p["phase"] == "range"]
    assert len(ranges) == -(-len(DATA) // RANGE)
    for r in ranges:
        assert r["request"] <= r["head"] <= r["first_write"], r


async def test_with_a_proxy_in_the_environment_ranges_go_through_httpx(serve: Any, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve()
    client = bulk()
    assert client.usable(server.url)
    assert not client.usable("ftp://127.0.0.1/content") and not client.usable("http://user:pw@127.0.0.1/c")
    # A proxy for https only: httpx goes straight to this http URL, but the bulk path stands aside.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not client.usable(server.url)
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, client)  # type: ignore[arg-type]
        assert await _engine_download(tmp_path, remote, _target(server.url)) == WHOLE
    assert server.asked and all(a.headers["user-agent"].startswith("python-httpx/") for a in server.asked)


async def test_the_engine_takes_bulk_ranges_from_a_repository_that_offers_them(tmp_path: Path) -> None:
    repository = FakeRepository(bulk_reads=True, cut_at={RANGE + 5000}, read_block=SLICE)
    target = repository.add_content(DATA)
    assert await _engine_download(tmp_path, repository, target) == WHOLE
    assert (RANGE + 5000, RANGE - 5000) in repository.ranges


async def test_tls_is_verified_with_the_shared_context(serve: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = serve(tls=server_side)
    # Not trusted by the shared context as it comes: refused, and retryable as any failed connection.
    with pytest.raises(TransientError, match="certificate"):
        await bulk().read_into(server.url, {}, 0, RANGE, Sink().write, Sink().land, "reading range 0")
    trusted = ssl_context()
    trusted.load_verify_locations(cert)
    sink = Sink()
    client = bulk(trusted)
    await client.read_into(server.url, {}, 0, RANGE, sink.write, sink.land, "reading range 0")
    await client.read_into(server.url, {}, RANGE, RANGE, sink.write, sink.land, "reading range 1")
    assert sink.file[:2 * RANGE] == DATA[:2 * RANGE]
    assert [a.connection for a in server.asked] == [2, 2]  # kept alive over TLS too
    client.close()


async def test_a_cancelled_range_stops_at_once_and_writes_nothing_after(serve: Any) -> None:
    release = threading.Event()
    server = serve()

    def serve_half_then_stall(sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        while reader.readline() not in (b"\r\n", b""):
            pass
        whole, _ = exact(Asked(number, 0, RANGE - 1, {}), DATA)
        sock.sendall(whole[:len(whole) - RANGE // 2])
        release.wait(SAFETY_NET_SECONDS)
        with contextlib.suppress(OSError):
            sock.sendall(whole[len(whole) - RANGE // 2:])
        sock.close()

    server._serve = serve_half_then_stall
    sink = Sink()
    stopped = False
    half_landed = trio.Event()

    def write(offset: int, view: memoryview) -> None:
        assert not stopped, "a write after the range was cancelled"
        sink.write(offset, view)

    async def land(n: int) -> None:
        await sink.land(n)
        if sum(sink.landed) >= RANGE // 2:
            half_landed.set()

    client = bulk()
    with trio.move_on_after(SAFETY_NET_SECONDS) as safety_net:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_into, server.url, {}, 0, RANGE, write, land, "reading range 0")
            # Once the first half landed, the worker blocks in recv_into for the rest, which never comes.
            await half_landed.wait()
            nursery.cancel_scope.cancel()
    stopped = True
    assert not safety_net.cancelled_caught, "the cancelled range did not stop"
    release.set()
    assert sum(sink.landed) == RANGE // 2
    assert client._idle == {}  # the aborted connection is not kept



async def test_one_worker_thread_receives_a_range_and_stays_within_the_landing_window(serve: Any) -> None:
    # ``landed`` here lets each slice go only once the thread went as far ahead as it may:
    # a thread that ran further (a limit not holding) shows in ``leads``.
    server = serve()
    sink = Sink()
    threads: set[int] = set()
    token = trio.lowlevel.current_trio_token()
    wrote = trio.Event()
    done: list[int] = []

    # Per write, how many slices were written and not yet landed before it.
    leads: list[int] = []

    def write(offset: int, view: memoryview) -> None:
        leads.append(len(sink.writes) - len(done))
        threads.add(threading.get_ident())
        sink.write(offset, view)
        token.run_sync_soon(wrote.set)

    async def land(n: int) -> None:
        nonlocal wrote
        if not n:
            return  # the head
        slices = -(-len(DATA) // SLICE)
        while len(sink.writes) < min(slices, len(done) + bulk_http.LANDING_AHEAD):
            await wrote.wait()
            wrote = trio.Event()
        await sink.land(n)
        done.append(n)

    client = bulk()
    await client.read_into(server.url, {}, 0, len(DATA), write, land, "reading")
    assert bytes(sink.file) == DATA
    assert sum(sink.landed) == len(DATA)
    assert max(leads) == bulk_http.LANDING_AHEAD - 1  # as far ahead as it may go, never further
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert next(iter(client._idle.values()))[0]._on_abort is None  # the kept connection holds no stopped gate
    client.close()


async def test_a_range_cancelled_while_its_thread_waits_for_landing_stops_and_writes_nothing_after(
        serve: Any) -> None:
    server = serve()
    sink = Sink()
    stopped = False
    token = trio.lowlevel.current_trio_token()
    window_full = trio.Event()

    def write(offset: int, view: memoryview) -> None:
        assert not stopped, "a write after the range was cancelled"
        sink.write(offset, view)
        if len(sink.writes) == bulk_http.LANDING_AHEAD:
            token.run_sync_soon(window_full.set)

    async def land(n: int) -> None:
        if n:
            await trio.sleep_forever()  # a bandwidth limit that never grants

    client = bulk()
    with trio.move_on_after(SAFETY_NET_SECONDS) as safety_net:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_into, server.url, {}, 0, len(DATA), write, land, "reading")
            await window_full.wait()
            nursery.cancel_scope.cancel()
    stopped = True
    assert not safety_net.cancelled_caught, "the cancelled range did not stop"
    assert len(sink.writes) == bulk_http.LANDING_AHEAD
    assert client._idle == {}


async def test_what_landed_raises_stops_the_thread_and_is_raised_as_it_is(serve: Any) -> None:
    server = serve()
    sink = Sink()

    async def land(n: int) -> None:
        if n:
            raise DataeraiError("internal", "the progress could not be counted")

    client = bulk()
    with pytest.raises(DataeraiError, match="could not be counted"):
        await client.read_into(server.url, {}, 0, len(DATA), sink.write, land, "reading")
    assert len(sink.writes) <= bulk_http.LANDING_AHEAD
    assert client._idle == {}


# --- part bodies: PUTs from a file --------------------------------------------------------------------------

PART = 3 * SLICE + 12345
#: What a PUT server does with a request: ``(head, body) -> (answer bytes, close after)``.
PutAnswer = Callable[["Put"], tuple[bytes, bool]]


@dataclass
class Put:
    """One PUT as the server read it."""

    connection: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""


def stored(put: Put) -> tuple[bytes, bool]:
    """An S3 store's answer: no body, the part's digest in a header."""
    import base64
    digest = base64.b64encode(hashlib.sha256(put.body).digest()).decode()
    return f"HTTP/1.1 200 OK\r\nx-amz-checksum-sha256: {digest}\r\nContent-Length: 0\r\n\r\n".encode(), False


def bad_digest(put: Put) -> tuple[bytes, bool]:
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
           b"<Message>The sha256 you specified did not match what we received.</Message></Error>")
    head = f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\nContent-Length: {len(xml)}\r\n\r\n"
    return head.encode() + xml, False


@dataclass
class PutServer(_Loopback):
    """A loopback HTTP/1.1 server that reads PUT bodies (unless ``read_body`` says not) and
    answers each with ``answers`` in turn (the last one for the rest)."""

    answers: list[PutAnswer]
    tls: ssl.SSLContext | None = None
    read_body: bool = True
    puts: list[Put] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listen()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/uploads/upl_1/parts/1?sig=secret-sig"

    def _answer(self, number: int, method: str, target: str, headers: dict[str, str],
                reader: BinaryIO) -> tuple[bytes, bool]:
        put = Put(number, method, target, headers)
        if self.read_body:
            put.body = reader.read(int(headers["content-length"]))
        self.puts.append(put)
        payload, close = self.answers[min(len(self.puts), len(self.answers)) - 1](put)
        return payload, close or not self.read_body


@pytest.fixture
def put_server() -> Iterator[Callable[..., PutServer]]:
    servers: list[PutServer] = []

    def start(*answers: PutAnswer, tls: ssl.SSLContext | None = None, read_body: bool = True) -> PutServer:
        server = PutServer(list(answers) or [stored], tls, read_body)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Source:
    """A part's body from a file, and what was charged before each slice."""

    def __init__(self, path: Path, data: bytes = DATA) -> None:
        path.write_bytes(data)
        self.fd = os.open(path, os.O_RDONLY)
        self.charged: list[int] = []
        self.sent_calls = 0

    def body(self, at: int, length: int, out: Outlet) -> None:
        assert out.sendfile(self.fd, at, length) == length

    async def charge(self, n: int) -> None:
        self.charged.append(n)

    def sent(self) -> None:
        self.sent_calls += 1

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    made = Source(tmp_path / "part.bin")
    yield made
    made.close()


def send_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_http, "SEND_SLICE_BYTES", SLICE)


async def test_a_slice_goes_only_once_charged_and_the_charges_run_at_most_a_window_ahead(
        put_server: Any, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    send_slices(monkeypatch)
    server = put_server()
    charged, went = [0], [0]
    charged_at_each_slice: list[tuple[int, int]] = []  # (bytes charged, the slice's end)
    ahead_at_each_charge: list[int] = []  # bytes charged but not yet handed to the socket
    slow, first_slice = trio.Event(), trio.Event()

    def body(at: int, length: int, out: Outlet) -> None:
        charged_at_each_slice.append((charged[0], at + length))
        trio.from_thread.run_sync(first_slice.set)
        source.body(at, length, out)
        went[0] = at + length

    async def charge(n: int) -> None:
        if charged[0] == SLICE:
            await slow.wait()  # a limit holding the second slice back: the thread waits with it
        charged[0] += n
        ahead_at_each_charge.append(charged[0] - went[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bulk().send_from, "PUT", server.url, {}, PART, body, charge, "sending part 1")
        await first_slice.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(charged_at_each_slice) == 1  # the second slice waits for its charge
        slow.set()
    assert all(charged_bytes >= end for charged_bytes, end in charged_at_each_slice)
    assert max(ahead_at_each_charge) <= bulk_http.LANDING_AHEAD * SLICE
    assert server.puts[0].body == DATA[:PART]


async def test_a_part_goes_from_the_file_in_charged_slices_with_its_signed_headers(
        put_server: Any, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    send_slices(monkeypatch)
    server = put_server()
    client = bulk()
    signed = {"x-amz-checksum-sha256": "c2lnbmVk", "Content-Length": str(PART)}
    answer = await client.send_from("PUT", server.url, signed, PART, source.body, source.charge, "sending part 1",
                                    source.sent)
    assert answer.status_code == 200 and answer.headers["x-amz-checksum-sha256"]
    (put,) = server.puts
    assert put.method == "PUT" and put.target == "/uploads/upl_1/parts/1?sig=secret-sig"
    assert put.body == DATA[:PART]
    assert put.headers["x-amz-checksum-sha256"] == "c2lnbmVk" and put.headers["content-length"] == str(PART)
    assert put.headers["user-agent"].startswith("dataeraid/") and "transfer-encoding" not in put.headers
    assert source.charged == [SLICE, SLICE, SLICE, 12345] and source.sent_calls == 1
    # The next part reuses the connection; an empty one is a head and its answer.
    await client.send_from("PUT", server.url, {}, 0, source.body, source.charge, "sending part 2")
    assert [p.connection for p in server.puts] == [1, 1] and server.puts[1].body == b""
    client.close()


async def test_the_remote_acknowledges_a_bulk_part_as_it_does_an_httpx_one(put_server: Any, source: Source) -> None:
    server = put_server()
    target = {"method": "PUT", "url": server.url, "headers": {"Content-Length": str(PART)}}
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, bulk())  # type: ignore[arg-type]  # signed URLs need no credentials
        ack = await remote.put_part_from(target, PART, source.body, source.charge, "sending part 1")
        assert ack == {"sha256": hashlib.sha256(DATA[:PART]).hexdigest(), "size": PART}

        async def blocks() -> Any:
            yield DATA[:PART]

        assert await remote.put_part(target, blocks(), "sending part 1") == ack
    assert [p.headers["user-agent"].split("/")[0] for p in server.puts] == ["dataeraid", "python-httpx"]


async def test_with_a_proxy_in_the_environment_parts_go_through_httpx(
        put_server: Any, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    server = put_server()
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    target = {"method": "PUT", "url": server.url, "headers": {"Content-Length": str(PART)}}
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, bulk())  # type: ignore[arg-type]
        assert await remote.put_part_from(target, PART, source.body, source.charge, "sending part 1") is None
    assert server.puts == [] and source.charged == []


async def test_the_stores_bad_digest_is_a_checksum_mismatch_as_through_httpx(
        put_server: Any, source: Source) -> None:
    server = put_server(bad_digest)
    target = {"method": "PUT", "url": server.url, "headers": {"Content-Length": str(PART)}}
    async with httpx.AsyncClient() as http:
        remote = Remote(None, http, bulk())  # type: ignore[arg-type]
        with pytest.raises(DataeraiError) as bulk_error:
            await remote.put_part_from(target, PART, source.body, source.charge, "sending part 1")

        async def blocks() -> Any:
            yield DATA[:PART]

        with pytest.raises(DataeraiError) as httpx_error:
            await remote.put_part(target, blocks(), "sending part 1")
    assert bulk_error.value.code == httpx_error.value.code == "checksum_mismatch"
    assert str(bulk_error.value) == str(httpx_error.value)
    assert "secret-sig" not in str(bulk_error.value)


@pytest.mark.parametrize(("burst", "expected"), [
    (None, bulk_http.UNPACED_SEND_SLICE_BYTES),  # no limit: the largest slices
    (10 << 20, bulk_http.SEND_SLICE_BYTES),  # a fast limit: the paced slices' ceiling
    (300_000, 300_000),  # a limit's quarter second
    (1000, bulk_http.MIN_SEND_SLICE_BYTES),  # a very slow limit: not slices too small to be worth a charge
])
def test_a_slice_is_as_large_as_the_limit_lets_it_be(burst: int | None, expected: int) -> None:
    assert bulk_http.send_slice_bytes(burst) == expected


async def test_slices_follow_the_jobs_limit_from_the_slice_after_it_changes(
        put_server: Any, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_http, "UNPACED_SEND_SLICE_BYTES", 2 * SLICE)
    monkeypatch.setattr(bulk_http, "MIN_SEND_SLICE_BYTES", SLICE // 4)
    server = put_server()
    limit: list[int | None] = [None]

    async def charge(n: int) -> None:
        source.charged.append(n)
        limit[0] = SLICE // 2  # a limit set while the first slice is charged

    await bulk().send_from("PUT", server.url, {}, PART, source.body, charge, "sending part 1",
                           burst=lambda: limit[0])
    assert source.charged[0] == 2 * SLICE  # unlimited when it was asked for
    assert set(source.charged[1:-1]) == {SLICE // 2}  # paced from the next slice on
    assert sum(source.charged) == PART
    assert server.puts[0].body == DATA[:PART]


async def test_an_answer_before_the_body_ends_is_what_the_send_raises(
        put_server: Any, tmp_path: Path) -> None:
    # An expired URL is refused after the head; the server stops reading and closes.
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
           b"<Message>Request has expired</Message></Error>")

    def expired(put: Put) -> tuple[bytes, bool]:
        return f"HTTP/1.1 403 Forbidden\r\nContent-Length: {len(xml)}\r\n\r\n".encode() + xml, True

    server = put_server(expired, read_body=False)
    big = Source(tmp_path / "big.bin", os.urandom(32 << 20))  # far more than the socket buffers hold
    try:
        with pytest.raises(TargetExpired) as caught:
            await bulk().send_from("PUT", server.url, {}, 32 << 20, big.body, big.charge, "sending part 1")
    finally:
        big.close()
    assert "secret-sig" not in str(caught.value)


async def test_tls_part_bodies_go_through_the_buffer(put_server: Any, source: Source,
                                                      certificate: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    send_slices(monkeypatch)
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    server = put_server(tls=server_side)
    trusted = ssl_context()
    trusted.load_verify_locations(cert)
    client = bulk(trusted)
    # The connection's buffer (SLICE) is smaller than what a slice of the body asks for.
    monkeypatch.setattr(bulk_http, "SEND_SLICE_BYTES", 2 * SLICE)
    await client.send_from("PUT", server.url, {}, PART, source.body, source.charge, "sending part 1")
    await client.send_from("PUT", server.url, {}, PART, source.body, source.charge, "sending part 2")
    assert [p.body == DATA[:PART] for p in server.puts] == [True, True]
    assert [p.connection for p in server.puts] == [1, 1]
    client.close()


async def test_a_cancelled_part_stops_at_once_and_keeps_no_connection(put_server: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def never(put: Put) -> tuple[bytes, bool]:
        raise AssertionError("the body was read whole")

    server = put_server(never, read_body=False)

    def read_head_then_stall(sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        while reader.readline() not in (b"\r\n", b""):
            pass
        release.wait(SAFETY_NET_SECONDS)  # the body fills the socket buffers, and the sender blocks
        sock.close()

    server._serve = read_head_then_stall
    size = 64 << 20  # far more than the socket buffers hold
    monkeypatch.setattr(bulk_http, "SEND_SLICE_BYTES", size)
    big = Source(tmp_path / "big.bin", os.urandom(size))
    # Only the abort can end the blocked send in time: the client's own timeout is far later.
    client = BulkHTTP(ssl_context(), connect_timeout_s=10.0, read_timeout_s=10 * SAFETY_NET_SECONDS)
    sending = trio.Event()

    def body(at: int, length: int, out: Outlet) -> None:
        trio.from_thread.run_sync(sending.set)
        out.sendfile(big.fd, at, length)

    try:
        with trio.move_on_after(SAFETY_NET_SECONDS) as safety_net:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_from, "PUT", server.url, {}, size, body, big.charge, "sending part 1")
                await sending.wait()
                nursery.cancel_scope.cancel()
        assert not safety_net.cancelled_caught, "the cancelled part did not stop"
    finally:
        release.set()
        big.close()
    assert big.charged == [size]
    assert client._idle == {}  # the aborted connection is not kept
