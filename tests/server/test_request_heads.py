"""A request's head is bounded (heads.py): past the size bound a real server answers 431 with
the API's error body and closes the connection, before the head has ended; below it,
requests are served as before. The search for a head's end across reads, as a property. A
connection that sends no whole head within the keep-alive timeout of its opening or of its
last request's end is closed (a second's timeout, in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import uvicorn
from dataerai_server.config import MAX_REQUEST_HEAD_BYTES
from dataerai_server.heads import BoundedHeadProtocol, head_end
from hypothesis import given
from hypothesis import strategies as st
from server_harness import json_answer
from uvicorn.server import ServerState


def _connect(server: Any) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(30)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _health(sock: socket.socket, extra: bytes = b"") -> bytes:
    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n")
    return json_answer(sock)


def test_a_head_over_the_bound_is_refused_before_it_ends(start_server: Any) -> None:
    server = start_server()
    with _connect(server) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\nX-Long: ")
        sent = 0
        try:
            while sent < 8 * MAX_REQUEST_HEAD_BYTES:  # a header that never ends
                sock.sendall(b"a" * 4096)
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after the answer, which is still there to read
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "frame_too_large" and error["limit_bytes"] == MAX_REQUEST_HEAD_BYTES
    assert "request.head_too_large" in server.log_file.read_text()
    # The server goes on: a head near the bound, on a new connection, keeps it open.
    with _connect(server) as sock:
        near = b"X-Near: " + b"n" * (MAX_REQUEST_HEAD_BYTES - 200) + b"\r\n"
        assert _health(sock, near).startswith(b"HTTP/1.1 200 ")
        assert _health(sock).startswith(b"HTTP/1.1 200 ")


def test_heads_sent_a_byte_at_a_time_are_served(start_server: Any) -> None:
    server = start_server()
    with _connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(2):  # the second head is counted from the first request's end
            for byte in b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n":
                sock.sendall(bytes([byte]))
            assert json_answer(sock).startswith(b"HTTP/1.1 200 ")


@given(st.binary(max_size=40).filter(lambda b: b"\r\n\r\n" not in b + b"\r\n\r"), st.binary(max_size=40),
       st.data())
def test_head_end_finds_the_first_blank_line_across_any_split(before: bytes, after: bytes, data: st.DataObject) -> None:
    stream = before + b"\r\n\r\n" + after
    end = len(before) + 4
    cut = data.draw(st.integers(0, len(stream)))
    tail, rest = stream[:cut], stream[cut:]
    if cut >= end:
        return  # the head ended in an earlier read: the protocol stops looking there
    assert head_end(tail, rest) == end - cut
    if end - cut > 4:  # a read that stops short of the blank line has no end in it
        assert head_end(tail, rest[: end - cut - 4]) is None


# --- the head's deadline, on a short keep-alive timeout in this process -----------------


async def _answer_empty(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _closed_while_trickling(port: int, trickle: bytes) -> bool:
    """Connect, send ``trickle`` a byte every 50 ms (well inside the keep-alive timeout, whose
    clock any byte stops in Uvicorn), and say whether the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in trickle * 1000:  # far longer than the deadline: the loop ends on the close
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return True
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                    return True
        return False
    finally:
        writer.close()


def test_a_connection_must_send_a_whole_head_within_the_keep_alive_timeout() -> None:
    async def main() -> None:
        config = uvicorn.Config(_answer_empty, http=BoundedHeadProtocol, lifespan="off", log_config=None,
                                timeout_keep_alive=1)
        config.load()
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(
            lambda: BoundedHeadProtocol(config=config, server_state=state, app_state={}), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            # A connection that never sends a byte is closed (Uvicorn alone never would).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), 60) == b""
            writer.close()
            # A head sent a byte now and then is cut off.
            started = time.monotonic()
            assert await _closed_while_trickling(port, b"GET / HTTP/1.1\r\nX-Slow: ")
            assert time.monotonic() - started >= 1.0
            # A request answered before its body has all arrived, then silence: the deadline
            # starts once the body is in (Uvicorn's idle clock stopped at the body's bytes).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n12345")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).startswith(b"HTTP/1.1 204 ")
            writer.write(b"67890")
            assert await asyncio.wait_for(reader.read(), 60) == b""
            writer.close()
            # A whole head in time is answered, and the next one gets its own full timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).startswith(b"HTTP/1.1 204 ")
            writer.close()

    asyncio.run(main())
