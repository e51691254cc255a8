"""A request's head is bounded (heads.py): past the bound a real server answers 431 with the
API's error body and closes the connection, before the head has ended; below it, requests
are served as before. The search for a head's end across reads, as a property."""

from __future__ import annotations

import json
import socket
from typing import Any

from dataerai_server.config import MAX_REQUEST_HEAD_BYTES
from dataerai_server.heads import head_end
from hypothesis import given
from hypothesis import strategies as st


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
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


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
            answer = b""
            while not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")


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
